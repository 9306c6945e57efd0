"""Attention logit std and entropy of a Llama model, per layer and head, on a probe batch.

The Llama counterpart of :func:`hf_init.lm.attention_probe.attention_statistics`: the same
statistics (:func:`~hf_init.lm.attention_probe.logit_statistics`) and the same result shape, from
the queries and keys the model's eager attention multiplies: after RoPE (the cos/sin each layer
receives), and under grouped-query attention with key head ``h // (n_head / n_kv_head)`` read by
query head ``h``, as ``repeat_kv`` shares them.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from hf_init.lm.attention_probe import logit_statistics
from hf_init.lm.families import LLAMA
from hf_init.lm.recorders import unwrap_model


@torch.no_grad()
def llama_attention_statistics(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Per layer and head: [logit_std, mean entropy] of a Llama's attention on ``input_ids`` (one
    forward pass of the body, no gradient, in eval mode; the training mode is restored). float64
    tensor of shape (n_layer, n_head, 2)."""
    bare = unwrap_model(model)
    blocks = list(LLAMA.blocks(bare))
    captured: dict[int, tuple] = {}

    def keep(i):
        # LlamaDecoderLayer passes everything by keyword: the attention's input and its RoPE
        return lambda module, args, kwargs: captured.__setitem__(
            i, (kwargs["hidden_states"], kwargs["position_embeddings"])
        )

    hooks = [
        block.self_attn.register_forward_pre_hook(keep(i), with_kwargs=True)
        for i, block in enumerate(blocks)
    ]
    was_training = bare.training
    try:
        bare.eval()
        device = next(bare.parameters()).device
        body = getattr(bare, LLAMA.body, bare)  # the LM head's logits are not needed
        body(input_ids=input_ids.to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        bare.train(was_training)
    out = []
    for i, block in enumerate(blocks):
        attn = block.self_attn
        x, (cos, sin) = captured[i]
        heads = (*x.shape[:2], -1, attn.head_dim)  # (batch, T, heads, head_dim)
        q = attn.q_proj(x).view(heads).transpose(1, 2)
        k = attn.k_proj(x).view(heads).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(attn.num_key_value_groups, dim=1)
        std, entropy = logit_statistics(q, k, attn.scaling)
        out.append(torch.stack([std, entropy], dim=-1))
    return torch.stack(out).cpu()  # one read to the host
