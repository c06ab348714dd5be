"""Continual pretraining: stages, replay, EWC, LwF, evaluation matrix."""
