"""Attention behaviour during training: a probe on a fixed batch of held-out blocks.

:func:`attention_statistics` runs one forward pass (no gradient, eval mode) of the model on the
probe batch and reads each block's query and key projections at the output of its fused
``attn.c_attn`` (a forward hook; the columns are [q | k | v], :mod:`hf_init.lm.families`). Per
layer and head it computes, with the model's own attention scale (``1/sqrt(d_head)``, and
``1/(layer+1)`` more with ``scale_attn_by_inverse_layer_idx``):

- ``logit_std``: population std (ddof=0) of the attention logits ``q.k * scale`` over the probe
  batch's causal entries (every block, every query position t, every key position s <= t);
- ``entropy``: the entropy in nats, ``-sum_s p_s ln p_s``, of each query's attention distribution
  (softmax of its causal logits), averaged over every block and query position (position 0
  attends to itself only: entropy 0; a uniform distribution over t+1 keys has ln(t+1)).

A Llama's statistics come from :func:`~hf_init.lm.llama_attention.llama_attention_statistics`
(after RoPE, key/value heads shared as the model shares them), with the same shape and meaning.

Attention logits are the product the Q and K weight variances set: the logit std grows with
them, and the entropy falls as attention sharpens (or collapses onto one token).
:class:`AttentionProbeCallback` records them at the record steps of
:class:`~hf_init.lm.recorders.StepRecorder`, as records of role ``attn`` with a ``head`` key
(:mod:`hf_init.core.records`).
"""

from __future__ import annotations

import torch

from hf_init.core.records import make_record
from hf_init.lm.families import LLAMA
from hf_init.lm.recorders import StepRecorder, _is_sharded, model_blocks, unwrap_model

PROBE_BLOCKS = 1
PROBE_STEPS = 20
"""The default probe: one held-out block every 20 optimizer steps. Its forward pass is the
probe's cost (a tenth of a training step and more at the default shapes, with the statistics),
so it has its own interval, sparser than the records': one block every 20 steps keeps it within
1% of the run, also when the Q/K/V variances are recorded every step (docs/benchmarks.md,
"Attention probe"). A study that wants more tokens or steps asks for them
(init_study_pretrain.yaml)."""


def probe_batch(dataset, n_blocks: int = PROBE_BLOCKS) -> torch.Tensor:
    """The first ``n_blocks`` rows of a tokenized block dataset (``input_ids`` of equal length) as
    one LongTensor (n, T): fixed, so every record step sees the same tokens."""
    from itertools import islice

    try:
        rows = dataset[: min(n_blocks, len(dataset))]["input_ids"]
    except TypeError:  # a streamed (iterable) dataset: its first blocks
        rows = [row["input_ids"] for row in islice(dataset, n_blocks)]
    if len(rows) < 1:
        raise ValueError(
            "the attention probe needs at least one held-out block (the validation split is empty)"
        )
    return torch.as_tensor(rows, dtype=torch.long)


def attention_scaling(attn) -> float:
    """The factor GPT2Attention multiplies q.k by (its ``scaling``, recomputed from the config
    when absent)."""
    scaling = getattr(attn, "scaling", None)
    if scaling is not None:
        return float(scaling)
    scaling = attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        scaling /= float(attn.layer_idx + 1)
    return scaling


def query_key_heads(attn, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys, each (batch, heads, T, d_head), from the output (batch, T, 3d) of a
    ``GPT2Attention``'s fused ``c_attn`` (columns [q | k | v])."""
    d = attn.embed_dim
    b, t = qkv.shape[:2]
    q, k = (
        x.reshape(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
        for x in (qkv[..., :d], qkv[..., d : 2 * d])
    )
    return q, k


def causal_logits(
    q: torch.Tensor, k: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(all logits (B, H, T, T), causal mask (T, T)) of ``q.k * scaling`` in float64, from
    queries and keys of shape (batch, heads, T, d_head)."""
    logits = torch.matmul(q.double(), k.double().mT) * scaling  # mT: the last two dims swapped
    t = logits.shape[-1]
    return logits, torch.ones(t, t, dtype=torch.bool, device=logits.device).tril()


def logit_statistics(
    q: torch.Tensor, k: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit_std, mean entropy), each of shape (heads,), from queries and keys of shape
    (batch, heads, T, d_head), over the causal entries; computed in float64."""
    logits, causal = causal_logits(q, k, scaling)  # (B, H, T, T)
    entries = logits[..., causal]  # (B, H, n_causal)
    std = entries.transpose(0, 1).reshape(logits.shape[1], -1).std(dim=1, correction=0)
    masked = logits.masked_fill(~causal, float("-inf"))
    logp = torch.log_softmax(masked, dim=-1)
    plogp = torch.where(
        causal, logp.exp() * logp, torch.zeros((), dtype=logp.dtype, device=logp.device)
    )
    entropy = -plogp.sum(-1)  # (B, H, T)
    return std, entropy.mean(dim=(0, 2))


@torch.no_grad()
def attention_statistics(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Per layer and head: [logit_std, mean entropy] of the model's attention on ``input_ids``
    (one forward pass, no gradient, in eval mode; the training mode is restored). float64 tensor
    of shape (n_layer, n_head, 2). A Llama goes to its own statistics (RoPE, shared KV heads)."""
    bare = unwrap_model(model)
    family, blocks = model_blocks(bare)
    if family is LLAMA:
        from hf_init.lm.llama_attention import llama_attention_statistics  # it imports this module

        return llama_attention_statistics(bare, input_ids)
    blocks = list(blocks)
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        block.attn.c_attn.register_forward_hook(
            lambda module, args, output, i=i: captured.__setitem__(i, output.detach())
        )
        for i, block in enumerate(blocks)
    ]
    was_training = bare.training
    try:
        bare.eval()
        device = next(bare.parameters()).device
        body = getattr(bare, "transformer", bare)  # the LM head's logits are not needed
        body(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        bare.train(was_training)
    out = []
    for i, block in enumerate(blocks):
        q, k = query_key_heads(block.attn, captured[i])
        std, entropy = logit_statistics(q, k, attention_scaling(block.attn))
        out.append(torch.stack([std, entropy], dim=-1))
    return torch.stack(out).cpu()  # one read to the host


def attention_records(step: int, stats: torch.Tensor) -> list[dict]:
    """Records (role ``attn``, key ``head``) from :func:`attention_statistics`."""
    return [
        make_record(step, layer, "attn", {"logit_std": std, "entropy": ent}, head=head)
        for layer, heads in enumerate(stats.tolist())
        for head, (std, ent) in enumerate(heads)
    ]


class AttentionProbeCallback(StepRecorder):
    """Attention logit std and entropy per layer and head on a fixed probe batch
    (:func:`attention_statistics`), measured on the main process only; with sharded FSDP weights
    the probe turns itself off (its forward pass would need every rank)."""

    what = "attention probe"

    def __init__(self, probe_ids: torch.Tensor | None, sinks=(), every: int | None = None):
        super().__init__(sinks, every)
        self.probe_ids = probe_ids

    def measure(self, step, state, model=None, **kwargs):
        if self.probe_ids is None or model is None or not state.is_world_process_zero:
            return []
        if _is_sharded(model):
            print("attention probe skipped: not supported with sharded (FSDP) weights", flush=True)
            self.probe_ids = None
            return []
        return attention_records(step, attention_statistics(model, self.probe_ids))
