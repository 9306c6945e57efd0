"""Trainer callbacks that measure weight statistics during training and hand them to sinks.

:class:`QKVVarianceCallback` measures, for every transformer block of a GPT-2 model, the
population variance (plus mean and RMS) of each block weight of :mod:`hf_init.lm.families`
(q, k, v parts of ``c_attn``, ``attn_proj``, ``mlp_fc``, ``mlp_proj``) and of its gradient, at
step 0 (the initialization), every ``every`` optimizer steps and at the final step, and gives
the records (:mod:`hf_init.core.records`, one per (step, layer, role)) to the sinks it was handed
(:mod:`hf_init.lm.sinks`: a JSONL file, TensorBoard, ...).
"""

from __future__ import annotations

import math
from operator import attrgetter

import torch
from transformers import TrainerCallback

from hf_init.core.moments import sharded_block_moments
from hf_init.core.records import make_record
from hf_init.lm.families import BLOCK_ROLES, BLOCK_WEIGHTS
from hf_init.lm.run_folder import VARIANCE_FILE  # noqa: F401 (the recorder builders read it here)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP/FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, torch.nn.Module):
                model = inner
                break
        else:
            return model


def gpt2_blocks(model: torch.nn.Module):
    """The list of transformer blocks (``transformer.h``) of a GPT-2 LM, wrapped or not."""
    model = unwrap_model(model)
    body = getattr(model, "transformer", model)
    blocks = getattr(body, "h", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no GPT-2 blocks (transformer.h)")
    return blocks


def _is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in unwrap_model(model).parameters())


@torch.no_grad()
def block_statistics(model: torch.nn.Module, grads: bool = False) -> torch.Tensor:
    """Population moments of every block weight (or its ``.grad``) in every block.

    Returns float64 of shape (n_layer, len(BLOCK_ROLES), 3): per layer, per role in
    :data:`hf_init.lm.families.BLOCK_ROLES` (q, k, v, attn_proj, mlp_fc, mlp_proj), the mean,
    population variance (divide by N, over all entries of that weight part) and RMS,
    accumulated in float64 whatever the training dtype. A missing gradient gives NaN.

    The result stays on the weights' device (no host synchronisation: read it once per record).
    One pass of :func:`hf_init.core.moments.stacked_block_sums` per weight kind over all
    layers. Sharded (FSDP2 DTensor) weights are never gathered: each rank reduces its own
    shards and one all-reduce makes the totals, so every rank must call this.
    """
    blocks = list(gpt2_blocks(model))
    kinds = []
    for entry in BLOCK_WEIGHTS:  # the column blocks cut here are the parts Weight.split cuts
        weight = attrgetter(
            f"{entry.path}.weight"
        )  # get_submodule's checks cost more than the sums
        params = [weight(block) for block in blocks]
        kinds.append(([p.grad if grads else p for p in params], len(entry.parts)))
    return sharded_block_moments(kinds)


def variance_records(step: int, weights: torch.Tensor, grads: torch.Tensor | None) -> list[dict]:
    """The records of one step from :func:`block_statistics` of the weights and (or ``None``)
    of the gradients: one per (layer, role) with ``var``, ``mean``, ``rms``, ``grad_var``,
    ``grad_rms`` (null where not finite or not measured). Both are read to the host at once."""
    if grads is not None:
        w, g = torch.stack([weights, grads.to(weights.device)]).tolist()
    else:
        w, g = weights.tolist(), None
    records = []
    for layer, rows in enumerate(w):
        for i, role in enumerate(BLOCK_ROLES):
            mean, var, rms = rows[i]
            gvar, grms = (g[layer][i][1], g[layer][i][2]) if g is not None else (None, None)
            records.append(
                make_record(
                    step,
                    layer,
                    role,
                    {"var": var, "mean": mean, "rms": rms, "grad_var": gvar, "grad_rms": grms},
                )
            )
    return records


class QKVVarianceCallback(TrainerCallback):
    """Records per-layer Q/K/V (and attn c_proj, MLP) weight and gradient statistics.

    When: step 0 (``on_train_begin``: the initialization, before any update), every ``every``
    optimizer steps (default: the Trainer's logging interval, ``state.logging_steps``; a
    fractional ``logging_steps`` is a share of the total steps) and at the final step
    (``state.max_steps``), each step once.

    What (:func:`variance_records`, handed to every sink on the main process): one record per
    (step, layer, role) for each role in ``q, k, v, attn_proj, mlp_fc, mlp_proj``: ``var`` =
    population variance over all entries of that weight part (divide by N, float64
    accumulation), ``mean``, ``rms``; ``grad_var`` and ``grad_rms`` = the same for its gradient.

    Which gradient: the records of step ``s`` hold the weights *after* update ``s`` and the
    gradient that update ``s`` applied, read in ``on_pre_optimizer_step`` (there
    ``state.global_step == s - 1``: the step about to complete). That gradient was computed
    at the weights of step ``s - 1`` and is the gradient of the *mean* loss of that step, not
    a sum over its ``gradient_accumulation_steps`` micro-batches: the Trainer scales each
    micro-batch loss before ``backward`` (GPT-2 takes loss kwargs, so each micro-batch's summed
    token loss is divided by ``num_items_in_batch``, the step's target-token count over all
    micro-batches and, with ``average_tokens_across_devices``, all ranks; a model without loss
    kwargs has its micro-batch mean divided by the number of micro-batches). Trap: with the
    model's ``loss_type`` unset (any ``*LMHeadModel`` class) the Trainer counts all T labels of
    a block instead of its T - 1 targets, so the gradient is (T-1)/T of the mean's;
    ``hf_init.lm.modeling.SchemeGPT2LMHeadModel`` sets ``loss_type = "ForCausalLM"``. It is then
    averaged across data-parallel ranks (the loss is multiplied back by the rank count when
    tokens are averaged across devices) and already clipped to ``max_grad_norm`` (clipping
    scales every gradient entry by one factor c, so variances by c^2). Step 0 has no update
    yet: its gradient fields are ``null``.

    Where: ``sinks`` (:mod:`hf_init.lm.sinks`), each given the records of a step as they are made
    and closed at the end of training.

    Works with the model the Trainer passes (unwrapped) and with DDP/compiled wrappers.
    Under FSDP2 (DTensor weights) every rank reduces its own shards (no gather) and joins one
    all-reduce per measurement; otherwise only the main process computes anything.
    """

    def __init__(self, sinks=(), every: int | None = None):
        if every is not None and every < 1:
            raise ValueError(f"variance recording interval must be >= 1 step, got {every}")
        self.sinks = list(sinks)
        self.every = every
        self._grads: tuple[int, torch.Tensor] | None = None
        self._last_step = -1
        self._sharded: bool | None = None  # FSDP2 DTensor weights: every rank joins the all-reduce

    # -- when ------------------------------------------------------------------------------
    def _interval(self, args, state) -> int:
        """``every``, else the logging interval in optimizer steps: ``state.logging_steps``, which
        the Trainer sets (``TrainerState.compute_steps``, before ``on_train_begin``) from
        ``args.logging_steps``, turning a fraction < 1 into ``ceil(fraction * max_steps)``."""
        if self.every is not None:
            return self.every
        steps = getattr(state, "logging_steps", None) or args.logging_steps
        if steps < 1:  # a state the Trainer did not prepare: convert the fraction the same way
            steps = math.ceil(steps * state.max_steps) if state.max_steps else 1
        return max(1, int(steps))

    def should_record(self, step: int, state) -> bool:
        return step == 0 or step % self._every == 0 or step == state.max_steps

    # -- events ----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._every = self._interval(args, state)
        if state.global_step > 0:  # resumed from a checkpoint: its steps are recorded already
            self._last_step = state.global_step
            return
        self._record(state, model, state.global_step, grads=None)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1  # the step this update completes
        if self.should_record(step, state) and self._computes(state, model):
            self._grads = (step, block_statistics(model, grads=True))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.should_record(step, state):
            grads = None
            if self._grads is not None and self._grads[0] == step:
                grads = self._grads[1]
            self._grads = None
            self._record(state, model, step, grads)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            for sink in self.sinks:
                sink.close()

    # -- what ------------------------------------------------------------------------------
    def _computes(self, state, model) -> bool:
        if self._sharded is None:
            self._sharded = model is not None and _is_sharded(model)
        return state.is_world_process_zero or self._sharded

    def _record(self, state, model, step: int, grads: torch.Tensor | None) -> None:
        if step <= self._last_step or model is None or not self._computes(state, model):
            return
        self._last_step = step
        weights = block_statistics(model)
        if not state.is_world_process_zero:
            return
        records = variance_records(step, weights, grads)
        for sink in self.sinks:
            sink.write(records)
