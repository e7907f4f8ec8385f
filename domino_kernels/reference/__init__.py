"""Pure-PyTorch/NumPy reference of every torch.ops.domino op: the executable specification.

The references favour clarity over speed (they sort, loop and re-run whole computations where a
kernel would not). Where an op draws random numbers, its reference reproduces the package's RNG
contract bit for bit (``philox.py``, ``numerics.py``), so kernel and reference can be compared
token for token under the same seeds.
"""
from .numerics import det_exp, det_log
from .philox import philox4x32_10, uniforms
from .rollout import rollout, rollout_quadratic, tree_rollout
from .sampling import sample
from .verify import verify
from . import attention

__all__ = ["det_exp", "det_log", "philox4x32_10", "uniforms", "sample", "attention", "verify",
           "rollout", "rollout_quadratic", "tree_rollout"]
