"""Typed wrappers and fake (meta) implementations of every torch.ops.domino op, one module per
kernel family."""
from .attention import append_kv, tree_attention, tree_info
from .rollout import DominoHeadWeights, build_gru_table, domino_rollout, domino_tree_rollout, pack_w2
from .sampling import sample
from .verify import chain_parents, verify

__all__ = ["sample", "tree_attention", "append_kv", "tree_info", "verify", "chain_parents",
           "DominoHeadWeights", "domino_rollout", "domino_tree_rollout", "build_gru_table", "pack_w2"]
