"""Continual pretraining: the stage runner, LR meta-schedules, replay (and EWC, LwF, the
evaluation matrix). See ``tools/continual_run.py`` and spec continual.md."""
