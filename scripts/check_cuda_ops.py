"""Check that a compiled domino_kernels library registers a CUDA kernel for every domino op.

    python scripts/check_cuda_ops.py path/to/_C.cpython-*.so

Loads the library directly (torch.ops.load_library runs its TORCH_LIBRARY registrations), so it
works on a machine without a GPU and without installing the package. Exits non-zero, naming the
ops, if any op lacks a CUDA kernel.
"""
import sys

import torch


def main(path: str) -> int:
    torch.ops.load_library(path)
    ops = sorted({s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("domino::")})
    if not ops:
        print(f"{path}: no domino ops registered")
        return 1
    missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
    for op in ops:
        print(f"  {op:<32} CUDA={'yes' if op not in missing else 'MISSING'}")
    if missing:
        print(f"ops without a CUDA kernel: {', '.join(missing)}")
        return 1
    print(f"all {len(ops)} domino ops have a CUDA kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
