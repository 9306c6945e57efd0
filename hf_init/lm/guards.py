"""The guards of a pretraining run: what stops it (not what measures it).

* :class:`DivergenceStop`: stops a run whose gradient norm is not finite, before the bad update
  is applied, naming the step, layer and weight; it reads the norm the Trainer computed anyway
  (through :class:`~hf_init.lm.spikes.StepValues`), so a healthy step costs it one scalar read.

:func:`divergence_error` is the one message of a diverged run (also raised by the guard
:class:`~hf_init.lm.sinks.NonFiniteRecords`); :func:`stop_on_every_rank` makes a stop decided on
the main process stop every rank.
"""

from __future__ import annotations

import math
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


def stop_on_every_rank(stop: RunStopped | None) -> RunStopped | None:
    """The main process's ``stop`` (None: go on) on every rank, for every rank to raise: a stop
    raised by the main process alone (a check of the records it writes) would leave the others
    waiting in their next collective until the timeout. Every rank calls it; when distributed,
    one broadcast from rank 0."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return stop
    box = [None if stop is None else (str(stop), stop.code, getattr(stop, "step", None))]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None or stop is not None:
        return stop
    message, code, step = box[0]
    return RunStopped(message, code) if step is None else Diverged(message, step)


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
    """Before every optimizer step, on every rank: is the gradient norm finite? A non-finite
    gradient entry makes it non-finite, so one scalar answers; it is the norm the Trainer computed
    for clipping (``values``: the Trainer's :class:`~hf_init.lm.spikes.StepValues`; transformers
    5 computes it also with ``max_grad_norm`` 0, without clipping), else one pass of the stop's
    own. That norm is global (data-parallel gradients are reduced, FSDP2 reduces the norm
    itself), so every rank stops at the same step. Only then is it diagnosed
    (:meth:`diagnosis`): which sub-layer of the forward pass (:func:`watched_sublayers`) first
    became non-finite, else which weight's gradient, in the line of :func:`divergence_error`.
    The healthy path reads that one scalar and, per forward pass, keeps a reference to its inputs
    and the random state (for the diagnosis to run it again)."""

    def __init__(self, values=None):
        self.values = values
        self._forward: tuple | None = None  # the last forward pass: (args, kwargs, rng states)
        self._hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from hf_init.lm.recorders import unwrap_model

        if model is None or self._hook is not None:
            return
        try:
            watched_sublayers(model)
        except ValueError:
            return
        self._hook = unwrap_model(model).register_forward_pre_hook(
            self._keep_inputs, with_kwargs=True
        )

    def _keep_inputs(self, module, args, kwargs):
        self._forward = (args, kwargs, random_states())

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._forward = None, None

    @torch.no_grad()
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        kept = getattr(self.values, "grad_norm", None)
        norm = kept[1] if kept is not None and kept[0] == state.global_step else None
        if norm is None:  # not this step's (or no values): its own
            norm = own_grad_norm(model)
            if norm is None:  # no gradient
                return
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if not math.isfinite(norm):
            raise self.diagnosis(state.global_step + 1, model, norm)

    def diagnosis(self, step: int, model, norm: float) -> RunStopped:
        """The stop of update ``step`` (gradient norm ``norm`` not finite): where the forward
        pass first became non-finite (:meth:`first_non_finite_output`), else the block weight
        nearest the output whose gradient is not finite (the backward pass overflowed there
        first). Under FSDP2 each rank names what its own shards hold."""
        named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        local = [g.to_local() if hasattr(g, "to_local") else g for _, g in named]
        finite = torch.stack([torch.isfinite(g).all() for g in local]).tolist()
        bad = [n for (n, _), f in zip(named, finite) if not f]
        forward = self.first_non_finite_output(model)  # every rank: FSDP2 gathers in it
        if not bad:
            if any(hasattr(g, "to_local") for _, g in named):
                return divergence_error(step, "a non-finite gradient on another rank")
            return divergence_error(
                step, f"gradient norm {norm} with every gradient entry finite (it overflowed)"
            )
        if forward:
            return divergence_error(
                step,
                f"the forward pass first became non-finite at the output of {forward}, so "
                f"the loss and {len(bad)} of {len(named)} weights' gradients are non-finite",
            )
        # the forward pass was finite: the backward pass overflowed, starting nearest the output
        # (the last block weight of the family's table: a Llama registers its norms after its MLP)
        blocks = [n for n in bad if (m := _BLOCK_PARAM.search(n)) and m[2] in _BLOCK_WEIGHTS]
        first = (blocks or bad)[-1]
        return divergence_error(
            step,
            f"non-finite gradient of {describe_parameter(first)} (the block weight nearest the "
            f"output: the backward pass overflowed there first), with a finite forward pass "
            f"({len(bad)} of {len(named)} weights' gradients non-finite)",
        )

    def first_non_finite_output(self, model) -> str | None:
        """The forward pass of the step run again (same inputs, weights and random state, no
        gradient) with hooks on the :func:`watched_sublayers` and the loss: the first of them
        whose output is not finite, in forward order (None: all finite, or no forward pass was
        kept)."""
        from hf_init.lm.recorders import unwrap_model

        if self._forward is None:
            return None
        bare = unwrap_model(model)
        parts = [*watched_sublayers(model), (LOSS, bare)]
        finite: dict[str, bool] = {}

        def flag(label):
            def hook(module, inputs, output):
                out = getattr(output, "loss", None) if label == LOSS else output
                out = out[0] if isinstance(out, tuple) else out
                if torch.is_tensor(out):
                    finite.setdefault(label, bool(torch.isfinite(out.detach()).all()))

            return hook

        hooks = [module.register_forward_hook(flag(label)) for label, module in parts]
        args, kwargs, states = self._forward
        try:
            with torch.random.fork_rng(devices=list(states.get("cuda", {}))):
                set_random_states(states)
                bare(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        return next((label for label, ok in finite.items() if not ok), None)


def random_states() -> dict:
    """The CPU and current CUDA device random states (what dropout draws from), so that a forward
    pass can be run again with the same dropout masks."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        states["cuda"] = {device: torch.cuda.get_rng_state(device)}
    return states


def set_random_states(states: dict) -> None:
    torch.set_rng_state(states["cpu"])
    for device, state in states.get("cuda", {}).items():
        torch.cuda.set_rng_state(state, device)


def own_grad_norm(model):
    """The 2-norm of all gradients (one pass; FSDP2 shards reduced over their ranks), when the
    Trainer's is not at hand; None without gradients."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None
