"""domino_kernels: kernels for Domino speculative decoding, reached as ``torch.ops.domino.*``.

Importing the package checks that the installed torch is the one the compiled extension was built
against, loads the extension (which registers the ops with torch), then registers a fake (meta)
implementation of every op for torch.compile, and exposes typed Python wrappers
(``domino_kernels.sample`` ...). ``domino_kernels.reference`` holds the pure-PyTorch reference of
every op: the executable specification the kernels are tested against.
"""
import torch  # noqa: F401  (must be imported before the extension)

from . import _torch_check
from ._version import __version__

_torch_check.check()
try:
    from . import _C  # noqa: F401  (loads the library: runs TORCH_LIBRARY registrations)
except ImportError as err:
    raise _torch_check.explain_load_error(err) from err
from . import ops  # noqa: E402
from .ops import *  # noqa: F401,F403,E402

__all__ = list(ops.__all__)


def cuda_kernels_compiled() -> bool:
    """True when this build registered CUDA kernels (not whether a GPU is present)."""
    return bool(_C.WITH_CUDA)
