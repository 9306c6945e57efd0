"""Trainer callbacks that look after the pretraining run itself (not measurements):

* :class:`DivergenceStop`: stops a run whose gradients (hence loss or gradient norm) are not
  finite, before the bad update is applied, naming the step, layer and weight.

:func:`divergence_error` is the one message of a diverged run (also raised by the sink
:class:`~hf_init.lm.sinks.NonFiniteRecords`).
"""

from __future__ import annotations

import re

import torch
from transformers import TrainerCallback

from hf_init.core.cli import RunStopped
from hf_init.lm.families import FAMILIES

LOSS = "the loss (the lm_head logits and their cross-entropy)"
# a block parameter of any family: transformer.h.<i>. (GPT-2), model.layers.<i>. (Llama)
_BLOCK_PARAM = re.compile(
    rf"(?:^|\.)(?:{'|'.join(f.blocks_attr for f in FAMILIES.values())})\.(\d+)\.(.+)$"
)
# the weight parameters the family table lists inside a block (attn.c_attn.weight, mlp.down_proj...)
_BLOCK_WEIGHTS = {
    f"{w.path}.weight"
    for f in FAMILIES.values()
    for w in (*f.block_weights, *f.other_block_weights)
}


def describe_parameter(name: str) -> str:
    """``transformer.h.3.attn.c_attn.weight`` -> ``layer 3 attn.c_attn.weight``; other parameter
    names as they are."""
    m = _BLOCK_PARAM.search(name)
    return f"layer {m.group(1)} {m.group(2)}" if m else name


class Diverged(RunStopped):
    """A run stopped because its training diverged at optimizer step ``step``."""

    def __init__(self, message: str, step: int):
        super().__init__(message, code=1)
        self.step = step


def divergence_error(step: int, what: str) -> Diverged:
    """The error that stops a run diverged at ``step`` (``what`` says where), for the caller to
    raise: one line, exit code 1."""
    return Diverged(
        f"error: training diverged at step {step}: {what}; stopped before that update, so the "
        f"weights, records and checkpoints up to step {step - 1} are kept (lower --learning_rate, "
        f"set --max_grad_norm, or change the init scheme)",
        step,
    )


def watched_sublayers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """``(label, module)`` in forward order of each block's attention and MLP and of the final
    norm of a causal LM of any family (wrapped or not): where :class:`DivergenceStop` looks for
    the first non-finite output. A label names the sub-layer's weights, e.g. ``layer 3 attn
    (attn.c_attn / attn.c_proj weights)``. ValueError for a model with no blocks of its family."""
    from hf_init.lm.recorders import model_blocks, unwrap_model

    family, blocks = model_blocks(model)
    sublayers: dict[str, list[str]] = {}  # attn / self_attn, mlp -> their weights' paths
    for w in family.block_weights:
        sublayers.setdefault(w.path.split(".")[0], []).append(w.path)
    parts = [
        (f"layer {i} {name} ({' / '.join(paths)} weights)", getattr(block, name))
        for i, block in enumerate(blocks)
        for name, paths in sublayers.items()
    ]
    bare = unwrap_model(model)
    norm = getattr(getattr(bare, family.body, None), family.final_norm, None)
    if norm is not None:
        tied = getattr(getattr(bare, "config", None), "tie_word_embeddings", False)
        also = " (tied to the token embedding)" if tied else ""
        parts.append((f"final norm {family.final_norm} / lm_head{also}", norm))
    return parts


class DivergenceStop(TrainerCallback):
    """Before every optimizer step (after clipping), on every rank: are all gradients finite? If
    not, raise :func:`divergence_error` naming the step and where it first appeared: the first
    sub-layer (a block's attention or MLP, the final norm) of the forward pass whose output was
    not finite (forward hooks keep that flag without a device sync), else the block weight nearest
    the output whose gradient is not. One device sync per step; under FSDP2 each rank checks its
    shards and one all-reduce combines them."""

    def __init__(self):
        self._outputs: dict[str, torch.Tensor] = {}
        self._hooks = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from hf_init.lm.recorders import unwrap_model

        if model is None or self._hooks:
            return
        try:
            parts = watched_sublayers(model)
        except ValueError:
            return
        for label, module in parts:
            self._hooks.append(module.register_forward_hook(self._finite_flag_hook(label)))
        self._hooks.append(unwrap_model(model).register_forward_hook(self._finite_flag_hook(LOSS)))

    def _finite_flag_hook(self, label):
        """A forward hook keeping, as a device tensor (no sync), whether the module's output (the
        model's loss for ``LOSS``) was finite."""

        def hook(module, inputs, output):
            out = getattr(output, "loss", None) if label == LOSS else output
            out = out[0] if isinstance(out, tuple) else out
            if torch.is_tensor(out):
                self._outputs[label] = torch.isfinite(out.detach()).all()

        return hook

    def on_train_end(self, args, state, control, **kwargs):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        if not named:
            return
        local = [g.to_local() if hasattr(g, "to_local") else g for _, g in named]
        finite = torch.stack([torch.isfinite(g).all() for g in local])
        ok = finite.all()
        sharded = any(hasattr(g, "to_local") for _, g in named)
        if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = ok.to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            ok = flag.bool()
        if bool(ok):
            return
        bad = [n for (n, _), f in zip(named, finite.tolist()) if not f]
        step = state.global_step + 1
        if not bad:  # another rank's shard
            raise divergence_error(step, "a non-finite gradient on another rank")
        forward = [label for label, f in self._outputs.items() if not bool(f)]
        if forward:
            raise divergence_error(
                step,
                f"the forward pass first became non-finite at the output of {forward[0]}, so "
                f"the loss and {len(bad)} of {len(named)} weights' gradients are non-finite",
            )
        # the forward pass was finite: the backward pass overflowed, starting nearest the output
        # (the last block weight of the family's table: a Llama registers its norms after its MLP)
        blocks = [n for n in bad if (m := _BLOCK_PARAM.search(n)) and m[2] in _BLOCK_WEIGHTS]
        first = (blocks or bad)[-1]
        raise divergence_error(
            step,
            f"non-finite gradient of {describe_parameter(first)} (the block weight nearest the "
            f"output: the backward pass overflowed there first), with a finite forward pass "
            f"({len(bad)} of {len(named)} weights' gradients non-finite)",
        )
