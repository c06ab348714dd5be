"""Checkpoints: DeepSpeed states plus run metadata, atomic ``latest`` pointers."""
