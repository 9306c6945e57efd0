"""Where each model family keeps its weights, in the one vocabulary every module uses.

A family is one entry of :data:`FAMILIES`, keyed by its ``config.model_type``:

- ``gpt2``: roles ``wte`` ``wpe`` (token and position embeddings), per block ``q k v`` (query,
  key, value), ``attn_proj`` (attention output), ``mlp_fc`` ``mlp_proj`` (the MLP's two weights),
  and ``lm_head``. ``attn.c_attn`` is one fused ``Conv1D`` of storage shape (in=d, out=3d) whose
  output columns are [q | k | v] (``GPT2Attention`` splits its output with ``.split(d, dim=2)``);
  cross-attention keeps q in ``q_attn`` and [k | v] in ``c_attn``.
- ``llama``: roles ``embed`` (token embedding; RoPE has no position table), per block ``q k v o``
  (``self_attn.*_proj``; k and v have ``n_kv_head`` heads under grouped-query attention),
  ``gate up down`` (the SwiGLU MLP), and ``lm_head`` (untied by default, as ``LlamaConfig``).
  Every weight is its own ``nn.Linear`` (out, in).

The init override (``modeling``), the recorders, the measurements at init, the theory, plots
and analysis read the weights through this table; nothing else names them. The module-level
names (``BLOCK_WEIGHTS``, ``BLOCK_ROLES``, ``RESIDUAL_ROLES``...) are GPT-2's entry.

Pure Python (no torch import): :mod:`hf_init.theory.recursions` stays importable with numpy alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Weight:
    """One weight matrix: its module ``path`` (inside a block for block weights, inside the
    causal-LM model otherwise), the roles laid out part after part along its output axis (one
    role: the whole matrix), and its storage ``layout`` (``schemes.fans`` reads fans from it)."""

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


@dataclass(frozen=True)
class Dims:
    """The sizes of a decoder in one vocabulary for every family (GPT-2's flag names):
    ``n_kv_head`` key/value heads (= ``n_head`` without grouped-query attention), ``head_dim``
    the width of one head, ``n_inner`` the MLP width, ``n_positions`` the context length."""

    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int
    head_dim: int
    n_inner: int
    vocab_size: int
    n_positions: int
    tie_word_embeddings: bool


@dataclass(frozen=True)
class Family:
    """One model family: its stock causal-LM class, where its blocks live (``body.blocks``), the
    weights of a block and outside the blocks, and which roles are embeddings (lookup tables) and
    which write into the residual stream (the roles depth-scaled schemes scale)."""

    model_type: str
    stock_architecture: str
    body: str  # attribute of the causal LM holding the body (the body itself lacks it)
    blocks_attr: str  # attribute of the body holding the list of blocks
    block_weights: tuple[Weight, ...]  # in the order the recorders record them
    model_weights: tuple[Weight, ...]  # paths inside the causal LM
    embedding_roles: tuple[str, ...]  # the token embedding first
    residual_roles: tuple[str, ...]
    final_norm: str  # attribute of the body holding the norm before the LM head
    other_block_weights: tuple[Weight, ...] = ()  # optional block weights (GPT-2 cross-attention)

    @property
    def block_roles(self) -> tuple[str, ...]:
        """The roles of a block, in the order of ``block_weights``' parts."""
        return tuple(role for w in self.block_weights for role in w.parts)

    @property
    def roles(self) -> tuple[str, ...]:
        return (*self.embedding_roles, *self.block_roles, "lm_head")

    @property
    def by_role(self) -> dict[str, Weight]:
        """The weights outside the blocks, by role."""
        return {w.parts[0]: w for w in self.model_weights}

    def weight_of_name(self, name: str) -> tuple[Weight, int | None] | None:
        """``(entry, block index or None)`` for the module called ``name`` in a model of this
        family (stock or ours, LM or body, wrapped or not); ``None`` for a module that holds no
        listed weight."""
        m = re.search(rf"(?:^|\.){self.blocks_attr}\.(\d+)\.(.+)$", name)
        if m:
            w = next(
                (w for w in (*self.block_weights, *self.other_block_weights) if w.path == m[2]),
                None,
            )
            return (w, int(m[1])) if w else None
        leaf = name.rsplit(".", 1)[-1]
        w = next((w for w in self.model_weights if w.path.rsplit(".", 1)[-1] == leaf), None)
        return (w, None) if w else None

    def blocks(self, model):
        """The list of blocks of an (unwrapped) causal LM or body of this family."""
        body = getattr(model, self.body, model)
        blocks = getattr(body, self.blocks_attr, None)
        if blocks is None:
            raise ValueError(
                f"{type(model).__name__} has no {self.model_type} blocks "
                f"({self.body}.{self.blocks_attr})"
            )
        return blocks

    def dims(self, config) -> Dims:
        """The sizes of a model of this family from its config (``GPT2Config``/``LlamaConfig``)."""
        return _DIMS[self.model_type](config)

    def role_fans(self, dims: Dims) -> dict[str, tuple[int, int]]:
        """Logical (fan_in, fan_out) of every role (embeddings read as one-hot -> d maps)."""
        return _FANS[self.model_type](dims)


GPT2 = Family(
    model_type="gpt2",
    stock_architecture="GPT2LMHeadModel",
    body="transformer",
    blocks_attr="h",
    block_weights=(
        Weight("attn.c_attn", QKV),
        Weight("attn.c_proj", ("attn_proj",)),
        Weight("mlp.c_fc", ("mlp_fc",)),
        Weight("mlp.c_proj", ("mlp_proj",)),
    ),
    # GPT2Model lacks the "transformer." prefix (leaves are matched by their last name)
    model_weights=(
        Weight("transformer.wte", ("wte",), "embedding"),
        Weight("transformer.wpe", ("wpe",), "embedding"),
        Weight("lm_head", ("lm_head",), "linear"),
    ),
    embedding_roles=("wte", "wpe"),
    residual_roles=("attn_proj", "mlp_proj"),  # GPT-2 scales them
    final_norm="ln_f",
    # blocks of an encoder-decoder GPT-2 (add_cross_attention): same roles, same fans
    other_block_weights=(
        Weight("crossattention.q_attn", ("q",)),
        Weight("crossattention.c_attn", ("k", "v")),
        Weight("crossattention.c_proj", ("attn_proj",)),
    ),
)

LLAMA = Family(
    model_type="llama",
    stock_architecture="LlamaForCausalLM",
    body="model",
    blocks_attr="layers",
    block_weights=(
        Weight("self_attn.q_proj", ("q",), "linear"),
        Weight("self_attn.k_proj", ("k",), "linear"),
        Weight("self_attn.v_proj", ("v",), "linear"),
        Weight("self_attn.o_proj", ("o",), "linear"),
        Weight("mlp.gate_proj", ("gate",), "linear"),
        Weight("mlp.up_proj", ("up",), "linear"),
        Weight("mlp.down_proj", ("down",), "linear"),
    ),
    model_weights=(
        Weight("model.embed_tokens", ("embed",), "embedding"),
        Weight("lm_head", ("lm_head",), "linear"),
    ),
    embedding_roles=("embed",),
    residual_roles=("o", "down"),
    final_norm="norm",
)

FAMILIES = {f.model_type: f for f in (GPT2, LLAMA)}


def get_family(model_type: str) -> Family:
    """The family called ``model_type``; ValueError naming the valid model types otherwise."""
    try:
        return FAMILIES[model_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model_type {model_type!r}; valid model types: {', '.join(FAMILIES)}"
        ) from None


def family_of(config) -> Family:
    """The family of a config: its ``model_type``, ``gpt2`` when it has none (parsed arguments,
    no config)."""
    return get_family(getattr(config, "model_type", None) or GPT2.model_type)


def llama_mlp_width(n_embd: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: 2/3 of 4 d (the three matrices then hold the parameters of a 4 d
    two-matrix MLP), rounded up to a multiple of ``multiple_of`` (Meta's reference code: 256)."""
    return multiple_of * math.ceil(int(8 * n_embd / 3) / multiple_of)


def _gpt2_dims(c) -> Dims:
    return Dims(
        n_layer=c.n_layer,
        n_embd=c.n_embd,
        n_head=c.n_head,
        n_kv_head=c.n_head,
        head_dim=c.n_embd // c.n_head,
        n_inner=c.n_inner or 4 * c.n_embd,
        vocab_size=c.vocab_size,
        n_positions=c.n_positions,
        tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
    )


def _llama_dims(c) -> Dims:
    return Dims(
        n_layer=c.num_hidden_layers,
        n_embd=c.hidden_size,
        n_head=c.num_attention_heads,
        n_kv_head=c.num_key_value_heads or c.num_attention_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        n_inner=c.intermediate_size,
        vocab_size=c.vocab_size,
        n_positions=c.max_position_embeddings,
        tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
    )


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


def _llama_fans(dims: Dims) -> dict[str, tuple[int, int]]:
    d, inner = dims.n_embd, dims.n_inner
    heads, kv = dims.n_head * dims.head_dim, dims.n_kv_head * dims.head_dim
    return {
        "embed": (dims.vocab_size, d),
        "q": (d, heads),
        "k": (d, kv),
        "v": (d, kv),
        "o": (heads, d),
        "gate": (d, inner),
        "up": (d, inner),
        "down": (inner, d),
        "lm_head": (d, dims.vocab_size),
    }


_DIMS = {"gpt2": _gpt2_dims, "llama": _llama_dims}
_FANS = {
    "gpt2": lambda dims: role_fans(dims.n_embd, dims.n_inner, dims.vocab_size, dims.n_positions),
    "llama": _llama_fans,
}

# GPT-2's entry under the names the GPT-2 code reads
BLOCK_WEIGHTS = GPT2.block_weights
CROSS_ATTENTION_WEIGHTS = GPT2.other_block_weights
MODEL_WEIGHTS = GPT2.model_weights
BY_ROLE = GPT2.by_role
BLOCK_ROLES = GPT2.block_roles  # q, k, v, attn_proj, mlp_fc, mlp_proj
EMBEDDING_ROLES = GPT2.embedding_roles
RESIDUAL_ROLES = GPT2.residual_roles
ROLES = GPT2.roles
weight_of_name = GPT2.weight_of_name
