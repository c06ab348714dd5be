"""Learning-rate schedules: pure functions, a registry, and a thin stateful wrapper."""
