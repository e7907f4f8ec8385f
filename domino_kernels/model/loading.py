"""Read safetensors checkpoints (single file or sharded with ``model.safetensors.index.json``) and
hand out tensors with their shapes checked. Safetensors only: pickled ``.bin``/``.pt`` files are
refused, never unpickled."""
from __future__ import annotations

import glob
import json
import os
from typing import Iterable, Optional

import torch

from .config import CheckpointError

INDEX = "model.safetensors.index.json"


def safetensors_files(directory: str) -> list[str]:
    """The shard files of a checkpoint directory, in load order."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory")
    index = os.path.join(directory, INDEX)
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.exists(os.path.join(directory, name)):
                raise CheckpointError(f"{index}: shard {name!r} is listed but missing")
        return [os.path.join(directory, n) for n in files]
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        pickled = [p for p in ("pytorch_model.bin", "model.pt", "model.bin")
                   if os.path.exists(os.path.join(directory, p))]
        hint = f" (found {pickled[0]}: pickled checkpoints are not loaded, convert to safetensors)" \
            if pickled else ""
        raise CheckpointError(f"{directory}: no *.safetensors file{hint}")
    return files


def read_state_dict(directory: str, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory (cast to ``dtype`` when given), on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in safetensors_files(directory):
        try:
            part = load_file(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors file ({e}); "
                                  f"is it truncated or corrupt?") from None
        for name, t in part.items():
            if name in state:
                raise CheckpointError(f"{path}: tensor {name!r} appears in two shards")
            if not (t.is_floating_point()):
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {t.dtype}, expected a float")
            state[name] = t.to(dtype) if dtype is not None else t
    return state


class TensorSource:
    """A state dict from which tensors are taken by name with their shape checked; what was never
    taken can be reported as unexpected."""

    def __init__(self, state: dict[str, torch.Tensor], where: str, strip_prefixes: Iterable[str] = ()):
        self.where = where
        self.state = {}
        for name, t in state.items():
            for p in strip_prefixes:
                if name.startswith(p):
                    name = name[len(p):]
                    break
            self.state[name] = t
        self.taken: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.state

    def take(self, name: str, shape: tuple, why: str = "") -> torch.Tensor:
        if name not in self.state:
            raise CheckpointError(f"{self.where}: missing tensor {name!r} (expected shape {list(shape)})")
        t = self.state[name]
        if tuple(t.shape) != tuple(shape):
            note = f" ({why})" if why else ""
            raise CheckpointError(f"{self.where}: tensor {name!r} has shape {list(t.shape)}, "
                                  f"expected {list(shape)}{note}")
        self.taken.add(name)
        return t

    def check_all_used(self, ignore: Iterable[str] = ()) -> None:
        left = sorted(n for n in self.state if n not in self.taken
                      and not any(n.endswith(s) for s in ignore))
        if left:
            more = f" and {len(left) - 5} more" if len(left) > 5 else ""
            raise CheckpointError(f"{self.where}: unexpected tensors {left[:5]}{more} "
                                  f"(the config does not describe them)")
