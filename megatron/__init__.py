"""Our Megatron-DeepSpeed-style training framework.

megatron-core installs ``megatron/core`` as a namespace package. A plain ``__init__.py`` here would
hide it, so we extend ``__path__`` to the namespace ``megatron/`` directories on ``sys.path``: both
``import megatron.core`` (the library) and ``import megatron.config`` (ours) resolve. Another
checkout's ``megatron/`` (a regular package: one environment installed from one checkout, this one
first on ``PYTHONPATH``) is left out, so no module of ours is ever imported from it (docs/install.md).
"""

import os as _os
from pkgutil import extend_path

__path__ = [_p for _p in extend_path(__path__, __name__)
            if _p in __path__ or not _os.path.isfile(_os.path.join(_p, "__init__.py"))]

# The one place that silences known-harmless import warnings, for every entry point (trainer,
# tools, benches): megatron-core warns that the optional Transformer Engine/Apex kernels are
# absent; we use neither (our layers and optimizers are plain torch).
import warnings as _warnings  # noqa: E402

_warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed",
                         category=UserWarning)
