"""Experiments over many runs: sweeps, isoFLOP ladders, scaling-law fits (torch-free)."""
