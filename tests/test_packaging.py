"""The build records the torch it compiled against, and importing under another torch fails with
an error naming both versions (domino_kernels/_torch_check.py) instead of an undefined symbol."""
import os
import subprocess
import sys

import pytest
import torch

import domino_kernels
from domino_kernels import _C, _torch_check
from domino_kernels._torch_check import mismatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(domino_kernels.__file__)))


def test_build_record_matches_the_loaded_extension():
    built = _torch_check.built_against()
    assert built is not None, "setup.py did not write domino_kernels/_build_info.py"
    assert built["TORCH_VERSION"] == _C.TORCH_VERSION == torch.__version__
    assert built["WITH_CUDA"] == bool(_C.WITH_CUDA)


def test_version_is_defined_once():
    from domino_kernels._version import __version__

    assert domino_kernels.__version__ == __version__
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'dynamic = ["version"]' in f.read()


def test_importing_under_another_torch_names_both_versions():
    code = "import torch; torch.__version__ = '2.0.1+cpu'; import domino_kernels"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "2.0.1+cpu" in last and _C.TORCH_VERSION in last, res.stderr


@pytest.mark.parametrize("built,running,cuda,refused", [
    (("2.13.0+cpu", None, False), "2.13.0+cpu", None, False),
    (("2.13.0+cpu", None, False), "2.13.0", "13.0", False),      # a CPU build runs under the CUDA wheel
    (("2.13.0+cpu", None, False), "2.13.1+cpu", None, True),     # any other release: refused
    (("2.13.0+cpu", None, False), "2.14.0+cpu", None, True),
    (("2.14.1", "13.0", True), "2.14.1", "13.0", False),
    (("2.14.1", "13.0", True), "2.14.1", "13.1", False),         # same CUDA major
    (("2.14.1", "13.0", True), "2.14.1+cpu", None, True),        # CUDA kernels need a CUDA torch
    (("2.14.1+cu126", "12.6", True), "2.14.1+cu130", "13.0", True),
])
def test_mismatch_rules(built, running, cuda, refused):
    msg = mismatch(dict(zip(("TORCH_VERSION", "CUDA_VERSION", "WITH_CUDA"), built)), running, cuda)
    assert (msg is not None) == refused
    if refused:
        assert built[0] in msg and running in msg and "--no-build-isolation" in msg
