"""Build domino_kernels._C: CPU kernels always, CUDA kernels when asked for or available.

DOMINO_BUILD_CUDA=0|1|auto (default auto: a CUDA build of torch and nvcc at CUDA_HOME).
TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0a"; CUDA_HOME defaults to /usr/local/cuda when present.
Always install with `pip install --no-build-isolation -e .` so the extension is compiled against
the torch that will import it.
"""
import glob
import os
import sys

# Both must be set before torch.utils.cpp_extension is imported: it reads them at import time.
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    mode = os.environ.get("DOMINO_BUILD_CUDA", "auto").lower()
    nvcc = cpp_extension.CUDA_HOME and os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    if mode in ("0", "false", "no", "off"):
        return False
    if mode in ("1", "true", "yes", "on"):
        if torch.version.cuda is None:
            sys.exit("DOMINO_BUILD_CUDA=1 but the installed torch is a CPU build "
                     f"({torch.__version__}); install a CUDA build of torch, e.g. torch==2.14.1")
        if not nvcc:
            sys.exit("DOMINO_BUILD_CUDA=1 but nvcc was not found; set CUDA_HOME")
        return True
    return torch.version.cuda is not None and bool(nvcc)


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


with_cuda = want_cuda()
# No -std flag: torch's build adds the standard its headers need (C++20 since torch 2.14); the
# framework-free core is C++17 and compiles as either.
# -fno-trapping-math only lets gcc if-convert and vectorise branch-free float loops (the row
# filter); it changes no IEEE result, so CPU decisions stay bit-identical to CUDA's.
# -fopenmp: at::parallel_for is an inline OpenMP loop that runs serially unless the extension
# itself is compiled with OpenMP; linking libgomp.so.1 binds to the copy torch already loaded.
cxx_flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math", "-fvisibility=hidden",
             f'-DDOMINO_TORCH_VERSION="{torch.__version__}"']
nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
              "--threads", os.environ.get("NVCC_THREADS", "2")]
srcs = sources("python/*.cpp") + sources("csrc/cpu/*.cpp")
define_macros = []
if with_cuda:
    srcs += sources("csrc/cuda/*.cu")
    define_macros.append(("DOMINO_WITH_CUDA", "1"))
    cxx_flags += ["-DDOMINO_WITH_CUDA=1", f'-DDOMINO_CUDA_ARCH_LIST="{os.environ["TORCH_CUDA_ARCH_LIST"]}"']
    nvcc_flags.append("-DDOMINO_WITH_CUDA=1")

Extension = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
ext = Extension(
    name="domino_kernels._C",
    sources=srcs,
    include_dirs=[os.path.join(ROOT, "csrc", "include")],
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags} if with_cuda else {"cxx": cxx_flags},
    extra_link_args=["-fopenmp"],
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
