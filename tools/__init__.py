"""Command-line tools: ``python tools/X.py`` or their entry points (``[project.scripts]`` in pyproject.toml)."""
