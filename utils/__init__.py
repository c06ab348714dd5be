"""Small user-facing helpers (model sizes, token budgets); each module is also a CLI."""
