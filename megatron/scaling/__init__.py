"""Scaling recipes (muP, CompleteP): derived multipliers, optimizer groups, coordinate checks."""
