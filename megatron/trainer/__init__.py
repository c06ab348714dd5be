"""The training loop and what it calls: the DeepSpeed engine, training state, metrics, per-corpus
loss, stop signals.

(Not named ``training``: megatron-core >= 0.19 ships a ``megatron/training`` package.)
"""
