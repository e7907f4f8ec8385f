"""Build domino_kernels._C: CPU kernels always, CUDA kernels when asked for or available.

DOMINO_BUILD_CUDA=0|1|auto (default auto: a CUDA build of torch and nvcc at CUDA_HOME).
TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0a"; CUDA_HOME defaults to /usr/local/cuda when present.
DOMINO_LOCAL_VERSION=auto appends the build flavour to the wheel's version as a local version tag
(0.1.0+cu130torch2.14, 0.1.0+cputorch2.13); any other non-empty value is used as the tag itself.
Always install with `pip install --no-build-isolation ...` so the extension is compiled against
the torch that will import it; the build records that torch in domino_kernels/_build_info.py, which
the package checks before loading the extension.
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


def version() -> str:
    """domino_kernels/_version.py (read, not imported: the package needs the built extension),
    plus the optional local version tag."""
    scope: dict = {}
    with open(os.path.join(ROOT, "domino_kernels", "_version.py")) as f:
        exec(f.read(), scope)
    tag = os.environ.get("DOMINO_LOCAL_VERSION", "")
    if tag == "auto":
        flavour = f"cu{torch.version.cuda.replace('.', '')}" if with_cuda else "cpu"
        tag = flavour + "torch" + ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return scope["__version__"] + (f"+{tag}" if tag else "")


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



class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's build_ext, which also writes _build_info.py next to _C: the torch (and CUDA) the
    extension was compiled against, read by domino_kernels/_torch_check.py before _C is loaded."""

    def run(self):
        super().run()
        info = ("# Written by setup.py when domino_kernels._C was built: the torch it was compiled against.\n"
                f"TORCH_VERSION = {torch.__version__!r}\n"
                f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
                f"WITH_CUDA = {with_cuda!r}\n")
        # The build directory (what a wheel packs) and, for in-place and editable builds, the
        # source package, where setuptools copies _C to.
        inplace, dirs = self.inplace, set()
        try:
            for flag in {False, bool(inplace)}:
                self.inplace = flag  # get_ext_fullpath answers for the current mode
                dirs.add(os.path.dirname(self.get_ext_fullpath("domino_kernels._C")))
        finally:
            self.inplace = inplace
        for d in sorted(dirs):
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "_build_info.py"), "w") as f:
                f.write(info)


setup(
    version=version(),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
)
