"""``python -m domino_kernels.info``: what this build of domino_kernels contains."""
from __future__ import annotations

import sys

import torch


def op_names() -> list[str]:
    """Every op of the ``domino`` namespace registered with torch."""
    import domino_kernels  # noqa: F401  (registers the ops)

    names = set()
    for schema in torch._C._jit_get_all_schemas():
        if schema.name.startswith("domino::"):
            names.add(schema.name.split("::", 1)[1])
    return sorted(names)


def dispatch_keys(op: str) -> list[str]:
    keys = ["CPU", "CUDA", "Meta"]
    return [k for k in keys if torch._C._dispatch_has_kernel_for_dispatch_key(f"domino::{op}", k)]


def main() -> int:
    import domino_kernels
    from domino_kernels import _C

    print(f"domino_kernels {domino_kernels.__version__}")
    print(f"torch {torch.__version__} (CUDA runtime {torch.version.cuda}), python {sys.version.split()[0]}")
    print(f"built against torch {_C.TORCH_VERSION}")
    if _C.WITH_CUDA:
        print(f"CUDA kernels: compiled for TORCH_CUDA_ARCH_LIST={_C.CUDA_ARCH_LIST}")
    else:
        print("CUDA kernels: not compiled (CPU-only build)")
    print("CPU rollout kernel: " + ("packed W2, vdpbf16ps (AVX512_BF16)" if _C.CPU_PACKED_W2
                                    else "row kernel (no AVX512_BF16, or disabled)"))
    print(f"GPU available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    print("ops:")
    for op in op_names():
        print(f"  domino::{op:<28} {', '.join(dispatch_keys(op))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
