"""Where GPT-2 keeps each weight, in the one vocabulary every module uses.

Roles: ``wte`` ``wpe`` (token and position embeddings), per block ``q k v`` (query, key, value
projections), ``attn_proj`` (attention output projection), ``mlp_fc`` ``mlp_proj`` (the MLP's two
weights), and ``lm_head``. :data:`BLOCK_WEIGHTS` says which module of a ``GPT2Block`` holds each
block role and which columns: ``attn.c_attn`` is one fused ``Conv1D`` of storage shape
(in=d, out=3d) whose output columns are [q | k | v] (``GPT2Attention`` splits its output with
``.split(d, dim=2)``); cross-attention keeps q in ``q_attn`` and [k | v] in ``c_attn``. The init
override (``modeling``), the training callback, the measurements at init (``propagation``), the
theory, plots and analysis all read GPT-2's weights through this table; nothing else names them.

Pure Python (no torch import): :mod:`hf_init.theory.recursions` stays importable with numpy alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QKV = ("q", "k", "v")
EMBEDDING_ROLES = ("wte", "wpe")
RESIDUAL_ROLES = ("attn_proj", "mlp_proj")  # write into the residual stream (GPT-2 scales them)


@dataclass(frozen=True)
class Weight:
    """One weight matrix: its module ``path`` (inside a ``GPT2Block`` for block weights, inside
    the model otherwise), the roles laid out part after part along its output axis (one role:
    the whole matrix), and its storage ``layout`` (``schemes.fans`` reads fans from it)."""

    path: str
    parts: tuple[str, ...]
    layout: str = "conv1d"  # Conv1D (in, out); "embedding" (num, dim); "linear" nn.Linear (out, in)

    def split(self, weight):
        """``{role: view}`` of a weight tensor stored as this entry says: equal blocks of the
        output columns of a Conv1D (in, out) weight (views, no copy)."""
        if len(self.parts) == 1:
            return {self.parts[0]: weight}
        if self.layout != "conv1d" or weight.dim() != 2 or weight.shape[1] % len(self.parts):
            raise ValueError(
                f"{self.path}: expected a (d, {len(self.parts)}d) Conv1D weight, "
                f"got shape {tuple(weight.shape)}"
            )
        return dict(zip(self.parts, weight.chunk(len(self.parts), dim=1)))


# the weights of every GPT2Block, in the order the callback records them (roles: BLOCK_ROLES)
BLOCK_WEIGHTS = (
    Weight("attn.c_attn", QKV),
    Weight("attn.c_proj", ("attn_proj",)),
    Weight("mlp.c_fc", ("mlp_fc",)),
    Weight("mlp.c_proj", ("mlp_proj",)),
)
# blocks of an encoder-decoder GPT-2 (add_cross_attention): same roles, same fans
CROSS_ATTENTION_WEIGHTS = (
    Weight("crossattention.q_attn", ("q",)),
    Weight("crossattention.c_attn", ("k", "v")),
    Weight("crossattention.c_proj", ("attn_proj",)),
)
# outside the blocks (paths inside GPT2LMHeadModel; GPT2Model lacks the "transformer." prefix)
MODEL_WEIGHTS = (
    Weight("transformer.wte", ("wte",), "embedding"),
    Weight("transformer.wpe", ("wpe",), "embedding"),
    Weight("lm_head", ("lm_head",), "linear"),
)
BY_ROLE = {w.parts[0]: w for w in MODEL_WEIGHTS}
# q, k, v, attn_proj, mlp_fc, mlp_proj: the roles of a block, in the order of BLOCK_WEIGHTS' parts
BLOCK_ROLES = tuple(role for w in BLOCK_WEIGHTS for role in w.parts)
ROLES = (*EMBEDDING_ROLES, *BLOCK_ROLES, "lm_head")

_BLOCK_NAME = re.compile(r"(?:^|\.)h\.(\d+)\.(.+)$")
_BLOCK_BY_PATH = {w.path: w for w in (*BLOCK_WEIGHTS, *CROSS_ATTENTION_WEIGHTS)}
_MODEL_BY_LEAF = {w.path.rsplit(".", 1)[-1]: w for w in MODEL_WEIGHTS}


def weight_of_name(name: str) -> tuple[Weight, int | None] | None:
    """``(entry, block index or None)`` for the module called ``name`` in a GPT-2 model (stock
    or ours, LM or body, wrapped or not); ``None`` for a module that holds no listed weight."""
    m = _BLOCK_NAME.search(name)
    if m:
        w = _BLOCK_BY_PATH.get(m.group(2))
        return (w, int(m.group(1))) if w else None
    w = _MODEL_BY_LEAF.get(name.rsplit(".", 1)[-1])
    return (w, None) if w else None


def role_fans(
    n_embd: int, n_inner: int | None = None, vocab_size: int = 50257, n_positions: int = 1024
) -> dict[str, tuple[int, int]]:
    """Logical (fan_in, fan_out) of every role of a GPT-2 of these sizes (``n_inner``: the MLP
    width, 4 n_embd by default; embeddings read as one-hot -> d maps)."""
    d, inner = int(n_embd), int(n_inner or 4 * n_embd)
    return {
        "wte": (vocab_size, d),
        "wpe": (n_positions, d),
        "q": (d, d),
        "k": (d, d),
        "v": (d, d),
        "attn_proj": (d, d),
        "mlp_fc": (d, inner),
        "mlp_proj": (inner, d),
        "lm_head": (d, vocab_size),
    }
