"""Our Megatron-DeepSpeed-style training framework.

megatron-core installs ``megatron/core`` as a namespace package. A plain ``__init__.py`` here would
hide it, so we extend ``__path__`` to every ``megatron/`` directory on ``sys.path``: both
``import megatron.core`` (the library) and ``import megatron.config`` (ours) resolve.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

# The one place that silences known-harmless import warnings, for every entry point (trainer,
# tools, benches): megatron-core warns that the optional Transformer Engine/Apex kernels are
# absent; we use neither (our layers and optimizers are plain torch).
import warnings as _warnings  # noqa: E402

_warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed",
                         category=UserWarning)
