"""Trainer callbacks that record weight statistics during training.

:class:`QKVVarianceCallback` records, for every transformer block of a GPT-2 model, the
population variance (plus mean and RMS) of the query, key and value blocks of ``c_attn``, of
the attention output projection and of the two MLP weights, and the variance of their
gradients, at step 0 (the initialization), every ``every`` optimizer steps and at the final
step. Records go to ``variance.jsonl`` (one line per (step, layer)) and to TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from .stats import column_block_moments, full_tensor

# (record name, module path inside a GPT2Block, number of column blocks); c_attn splits into
# Q | K | V along the output columns of its (in, out) Conv1D weight (see stats.split_fused).
BLOCK_WEIGHTS = (
    (("q", "k", "v"), "attn.c_attn"),
    (("attn_proj",), "attn.c_proj"),
    (("mlp_fc",), "mlp.c_fc"),
    (("mlp_proj",), "mlp.c_proj"),
)
NAMES = tuple(name for names, _ in BLOCK_WEIGHTS for name in names)
QKV = ("q", "k", "v")
VARIANCE_FILE = "variance.jsonl"


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
    """Population moments of every recorded weight (or its ``.grad``) in every block.

    Returns float64 of shape (n_layer, len(NAMES), 3): per layer, per name in :data:`NAMES`
    (q, k, v, attn_proj, mlp_fc, mlp_proj), the mean, population variance (divide by N, over
    all entries of that block) and RMS, accumulated in float64 whatever the training dtype.
    A missing gradient gives NaN. Sharded (DTensor) weights are gathered first: then every
    rank must call this.
    """
    blocks = list(gpt2_blocks(model))
    parts = []
    for names, path in BLOCK_WEIGHTS:
        params = [block.get_submodule(path).weight for block in blocks]
        tensors = [p.grad if grads else p for p in params]
        if any(t is None for t in tensors):
            parts.append(torch.full((len(blocks), len(names), 3), math.nan, dtype=torch.float64))
        else:
            parts.append(column_block_moments([full_tensor(t) for t in tensors], len(names)).cpu())
    return torch.cat(parts, dim=1)


def tensorboard_tag(name: str, layer: int, n_layer: int, grad: bool = False) -> str:
    """``q_var/layer_03`` or ``q_grad_var/layer_03``: TensorBoard groups charts by the text
    before the first slash, so each projection (and its gradient) gets its own chart family."""
    width = max(2, len(str(n_layer - 1)))
    return f"{name}_{'grad_' if grad else ''}var/layer_{layer:0{width}d}"


def custom_scalars_layout(names=QKV) -> dict:
    """A TensorBoard custom-scalars layout: one chart per projection overlaying all layers,
    for the weights and for their gradients."""
    return {
        "Q/K/V weight variance, all layers": {
            f"{n.upper()} variance": ["Multiline", [rf"{n}_var/layer_\d+"]] for n in names
        },
        "Q/K/V gradient variance, all layers": {
            f"{n.upper()} gradient variance": ["Multiline", [rf"{n}_grad_var/layer_\d+"]] for n in names
        },
    }


class QKVVarianceCallback(TrainerCallback):
    """Records per-layer Q/K/V (and attn c_proj, MLP) weight and gradient statistics.

    When: step 0 (``on_train_begin``: the initialization, before any update), every ``every``
    optimizer steps (default: the Trainer's logging interval, ``state.logging_steps``; a
    fractional ``logging_steps`` is a share of the total steps) and at the final step
    (``state.max_steps``), each step once.

    What (one JSON line per (step, layer) in ``<output_dir>/variance.jsonl``, appended and
    flushed as it is made, main process only): ``step``, ``layer`` and, for each name in
    ``q, k, v, attn_proj, mlp_fc, mlp_proj``: ``<name>`` = population variance over all
    entries of that weight block (divide by N, float64 accumulation), ``<name>_mean``,
    ``<name>_rms``; ``grad_<name>`` and ``grad_<name>_rms`` = the same for its gradient.

    Which gradient: the line of step ``s`` holds the weights *after* update ``s`` and the
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
    ``hf_init.modeling.SchemeGPT2LMHeadModel`` sets ``loss_type = "ForCausalLM"``. It is then
    averaged across data-parallel ranks (the loss is multiplied back by the rank count when
    tokens are averaged across devices) and already clipped to ``max_grad_norm`` (clipping
    scales every gradient entry by one factor c, so variances by c^2). Step 0 has no update
    yet: its gradient fields are ``null``.

    TensorBoard: if ``tensorboard`` is given (the Trainer's ``TensorBoardCallback``, or any
    object with a ``tb_writer``, or a ``SummaryWriter``), the Q/K/V weight and gradient
    variances are written to that writer at their exact step (tags from
    :func:`tensorboard_tag`), with a custom-scalars layout that overlays all layers of Q, of
    K and of V. Add this callback after the TensorBoard one (``Trainer(callbacks=[...])``
    does), so the writer exists at step 0.

    Works with the model the Trainer passes (unwrapped) and with DDP/compiled wrappers.
    Under FSDP2 (DTensor weights) every rank gathers the full tensors; otherwise only the
    main process computes anything.
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, every: int | None = None,
                 tensorboard=None, filename: str = VARIANCE_FILE):
        if every is not None and every < 1:
            raise ValueError(f"variance recording interval must be >= 1 step, got {every}")
        self.output_dir = output_dir
        self.every = every
        self.tensorboard = tensorboard
        self.filename = filename
        self.path: Path | None = None
        self._file = None
        self._grads: tuple[int, torch.Tensor] | None = None
        self._last_step = -1
        self._layout_written = False
        self._sharded: bool | None = None  # FSDP2 DTensor weights: every rank joins the gathers
        self.records_written = 0

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
        if state.is_world_process_zero:
            out = Path(self.output_dir if self.output_dir is not None else args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            self.path = out / self.filename
            # a fresh file per training run: the output-folder check ran before training
            self._file = open(self.path, "w", encoding="utf-8")
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
        if self._file is not None:
            self._file.close()
            self._file = None

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
        w = weights.tolist()
        g = grads.tolist() if grads is not None else None
        lines = []
        for layer, rows in enumerate(w):
            rec = {"step": step, "layer": layer}
            for i, name in enumerate(NAMES):
                mean, var, rms = rows[i]
                rec[name], rec[f"{name}_mean"], rec[f"{name}_rms"] = var, mean, rms
            for i, name in enumerate(NAMES):
                gvar, grms = (g[layer][i][1], g[layer][i][2]) if g is not None else (None, None)
                rec[f"grad_{name}"], rec[f"grad_{name}_rms"] = _finite(gvar), _finite(grms)
            lines.append(json.dumps(rec))
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        self.records_written += len(lines)
        self._to_tensorboard(step, weights, grads)

    def _writer(self):
        tb = self.tensorboard
        if tb is None:
            return None
        return getattr(tb, "tb_writer", tb) if hasattr(tb, "tb_writer") else tb

    def _to_tensorboard(self, step: int, weights: torch.Tensor, grads: torch.Tensor | None) -> None:
        writer = self._writer()
        if writer is None:
            return
        if not self._layout_written:
            writer.add_custom_scalars(custom_scalars_layout())
            self._layout_written = True
        n_layer = weights.shape[0]
        scalars = {}
        for source, is_grad in ((weights, False), (grads, True)):
            if source is None:
                continue
            values = source[:, : len(QKV), 1].tolist()  # variances of q, k, v per layer
            for layer, row in enumerate(values):
                for name, value in zip(QKV, row):
                    if math.isfinite(value):
                        scalars[tensorboard_tag(name, layer, n_layer, is_grad)] = value
        _add_scalars_one_event(writer, scalars, step)


def _add_scalars_one_event(writer, scalars: dict[str, float], step: int) -> None:
    """Write many scalars at one step as a single event (one queue hand-off instead of one per
    tag; TensorBoard reads each value as its own scalar series). Falls back to add_scalar."""
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if get_file_writer is None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard.summary import scalar

    summary = Summary(value=[v for tag, value in scalars.items() for v in scalar(tag, value).value])
    get_file_writer().add_summary(summary, step)


def _finite(x):
    return x if x is not None and math.isfinite(x) else None
