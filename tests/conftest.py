import pytest
import torch

import domino_kernels  # noqa: F401  (registers torch.ops.domino)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pytest_report_header(config):
    from domino_kernels import _C

    return (f"domino_kernels: CUDA kernels compiled={bool(_C.WITH_CUDA)}, "
            f"GPU available={torch.cuda.is_available()}")
