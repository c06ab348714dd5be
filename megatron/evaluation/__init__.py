"""Downstream evaluation: EleutherAI's lm-evaluation-harness on exported checkpoints, local tasks."""
