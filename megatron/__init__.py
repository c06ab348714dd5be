"""Our Megatron-DeepSpeed-style training framework.

megatron-core installs ``megatron/core`` as a namespace package. A plain ``__init__.py`` here would
hide it, so we extend ``__path__`` to every ``megatron/`` directory on ``sys.path``: both
``import megatron.core`` (the library) and ``import megatron.config`` (ours) resolve.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
