"""Builders of paged-KV attention test cases shared by the attention tests and benchmarks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

import domino_kernels as dk


@dataclass
class Case:
    q: torch.Tensor
    k_new: torch.Tensor
    v_new: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_table: torch.Tensor
    kv_lens: torch.Tensor
    q_cu_lens: torch.Tensor
    parents: Optional[List[torch.Tensor]] = None
    tree_mask: Optional[torch.Tensor] = None

    def args(self):
        return (self.q, self.k_cache, self.v_cache, self.block_table, self.kv_lens, self.q_cu_lens)

    def to(self, device):
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return Case(**moved)


def random_parents(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random tree over n nodes in topological order (parents[i] < i, root -1)."""
    parents = torch.full((n,), -1, dtype=torch.int64)
    for i in range(1, n):
        parents[i] = int(torch.randint(0, i, (1,), generator=gen))
    return parents


def make_case(prefix: List[int], new: List[int], hq: int, hkv: int, d: int, page_size: Optional[int],
              dtype=torch.float32, seed: int = 0, tree: bool = False, spare_pages: int = 3) -> Case:
    """Random paged cache holding each request's prefix; the new tokens' K/V are written by
    ``append_kv``. ``page_size=None`` means one big page per request (a contiguous cache).
    Pages are assigned in a random order so that logical and physical order differ."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(prefix)
    totals = [p + n for p, n in zip(prefix, new)]
    ps = page_size or max(max(totals), 1)
    per_req = [max(1, -(-t // ps)) for t in totals]
    max_pages = max(per_req) + 1  # one unused entry per row: the kernels must not need it
    num_pages = sum(per_req) + spare_pages
    perm = torch.randperm(num_pages, generator=gen).to(torch.int32)
    block_table = torch.full((batch, max_pages), -1, dtype=torch.int32)
    used = 0
    for b, n_pages in enumerate(per_req):
        block_table[b, :n_pages] = perm[used:used + n_pages]
        used += n_pages
    k_cache = torch.randn(num_pages, ps, hkv, d, generator=gen).to(dtype)
    v_cache = torch.randn(num_pages, ps, hkv, d, generator=gen).to(dtype)
    total_q = sum(new)
    q = torch.randn(total_q, hq, d, generator=gen).to(dtype)
    k_new = torch.randn(total_q, hkv, d, generator=gen).to(dtype)
    v_new = torch.randn(total_q, hkv, d, generator=gen).to(dtype)
    kv_lens = torch.tensor(prefix, dtype=torch.int32)
    q_cu_lens = torch.tensor([0] + list(torch.tensor(new).cumsum(0)), dtype=torch.int32)
    dk.append_kv(k_new, v_new, k_cache, v_cache, block_table, kv_lens, q_cu_lens)
    case = Case(q, k_new, v_new, k_cache, v_cache, block_table, kv_lens, q_cu_lens)
    if tree:
        case.parents = [random_parents(n, gen) for n in new]
        case.tree_mask = ragged_tree_mask(case.parents)
    return case


def ragged_tree_mask(parents: List[torch.Tensor]) -> torch.Tensor:
    """Rows of every request's ancestor mask, concatenated: [total_q, ceil(max_new / 32)]."""
    max_new = max([len(p) for p in parents] + [1])
    padded = torch.full((len(parents), max_new), -1, dtype=torch.int64)
    for b, p in enumerate(parents):
        padded[b, :len(p)] = p
    num_nodes = torch.tensor([len(p) for p in parents], dtype=torch.int64)
    mask, _, _ = dk.tree_info(padded, num_nodes)
    return torch.cat([mask[b, :len(p)] for b, p in enumerate(parents)], dim=0).contiguous()
