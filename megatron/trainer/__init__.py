"""The training loop and what it calls: engine, steps, state, metrics, callbacks.

(Not named ``training``: megatron-core >= 0.19 ships a ``megatron/training`` package.)
"""
