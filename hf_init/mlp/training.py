"""Training an :class:`~hf_init.mlp.model.Ensemble`: every member sees the same minibatches in
the same order, under one optimizer over the stacked tensors, with per-layer statistics recorded.

One optimizer over the stacked tensors is exactly M independent ones: SGD (with or without
momentum) and Adam update each entry from that entry's own gradient and state, and the loss is
the sum over members of each member's mean cross-entropy, so member m's gradient is its own
(``tests/mlp/test_mlp.py`` checks a member trained inside an ensemble against the same member
trained alone with ``torch.optim``).

A member whose loss or gradient becomes non-finite (or whose gradient entries sum past
float32's range) is *diverged*: frozen from that step on, its later metrics NaN, and dropped
from the batched compute at the next host read (every :data:`CHECK_EVERY` steps: no host sync
per step). The ensemble and the data live on one device (the model's: CPU, CUDA or MPS);
``dtype`` chooses the matmul precision (:data:`DTYPES`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from hf_init.core.moments import row_variances
from hf_init.mlp.model import TORCH_ACTIVATIONS, Ensemble, per_member_ce

OPTIMIZERS = ("sgd", "adam")
# the matmul precision (weights, optimizer and loss stay float32)
DTYPES = ("float32", "tf32", "bfloat16")
# the dtype the step's products take: tf32 is float32 with CUDA's tf32 flag set by train_ensemble
MM_DTYPE = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16}


def minibatch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """Index tensors of every minibatch: a fresh permutation of range(n) per epoch (torch
    generator seeded with ``seed``), cut into batches of ``batch_size`` (the last may be
    smaller)."""
    g = torch.Generator().manual_seed(int(seed))
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches


FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim's fused SGD and Adam kernels exist for float32


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum (``sgd``) or Adam (``adam``): both elementwise, see the module docstring.
    One update pass over the stacked tensors per step: torch's fused kernel on the CPU and CUDA,
    the multi-tensor (foreach) update elsewhere."""
    params = list(params)
    kind = (
        {"fused": True} if params and params[0].device.type in FUSED_DEVICES else {"foreach": True}
    )
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, **kind)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **kind)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


@dataclass
class TrainConfig:
    """How an ensemble is trained and recorded; checked when made (ValueError)."""

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    epochs: int = 30
    batch_size: int = 64
    data_seed: int = 0  # minibatch order, shared by every member
    record_every: int = 10  # steps between metric/variance records (0 and the last step always)
    probe_size: int = 256  # training examples (the first ones) forming the fixed probe batch
    dtype: str = "float32"  # matmul precision, one of DTYPES (tf32: CUDA only)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        for name in ("lr",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("epochs", "batch_size", "record_every", "probe_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:  # NaN fails too; 1 would never forget a gradient
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclass
class EnsembleRecord:
    """What :func:`train_ensemble` measured. M members, L = depth + 1 layers, T steps, R records.

    - ``step_loss`` (T, M): minibatch mean cross-entropy at each step, before its update (NaN
      once a member diverged).
    - ``record_steps`` (R,): step of each record (0 = at init, before any update; the last is T,
      after the final update). ``train_loss``/``train_acc``/``test_loss``/``test_acc`` (R, M):
      on the full train / test split at those steps (NaN once diverged).
    - per-layer variances (R, M, L), each a *population* variance (divide by N) over all
      (example, unit) entries of the fixed probe batch (the first ``probe_size`` training
      examples), computed in float64: ``preact_var`` of z_l, ``act_var`` of h_l = phi(z_l)
      (the logits at the output layer), ``grad_preact_var`` of dLoss/dz_l (backward signal)
      and ``grad_weight_var`` of dLoss/dW_l over the (out, in) entries, where Loss is the
      member's mean cross-entropy over the probe batch.
    - ``diverged_step`` (M,): first step whose loss or gradient was non-finite, -1 if none.
    """

    step_loss: np.ndarray
    record_steps: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    preact_var: np.ndarray
    act_var: np.ndarray
    grad_preact_var: np.ndarray
    grad_weight_var: np.ndarray
    diverged_step: np.ndarray
    seconds: float = 0.0


def _pop_var(t: torch.Tensor) -> torch.Tensor:
    """Population variance over every dim but the first (members), float64, two-pass
    (:func:`~hf_init.core.moments.row_variances`), on the host where the device has no float64
    (MPS): shape (M,)."""
    t = t.detach()
    return row_variances(t.cpu() if t.device.type == "mps" else t).cpu()


EVAL_ELEMENTS = 1 << 24  # activations (members x examples x units) per evaluation chunk: 64 MiB


@torch.no_grad()
def _evaluate(model: Ensemble, x: torch.Tensor, y: torch.Tensor):
    """Mean cross-entropy and accuracy of every member on (x, y), in chunks small enough that
    M x chunk x width activations stay within EVAL_ELEMENTS (MNIST: 60k examples)."""
    shape = model.shape
    chunk = max(1, EVAL_ELEMENTS // (model.n_members * max(shape.width, shape.n_in, shape.n_out)))
    losses = torch.zeros(model.n_members, dtype=torch.float64)
    correct = torch.zeros(model.n_members, dtype=torch.float64)
    for i in range(0, len(y), chunk):
        logits = model(x[i : i + chunk])
        yy = y[i : i + chunk]
        losses += (per_member_ce(logits, yy).double() * len(yy)).cpu()
        correct += (logits.argmax(-1) == yy).sum(1).cpu().double()
    return (losses / len(y)).numpy(), (correct / len(y)).numpy()


def _layer_stats(model: Ensemble, x: torch.Tensor, y: torch.Tensor):
    """Per member and layer on the probe batch (x, y): the variances of z_l, h_l, dLoss/dz_l and
    dLoss/dW_l (:class:`EnsembleRecord`), each an (M, L) array; NaN where a gradient is absent."""
    with torch.enable_grad():
        logits, pre, post = model(x, keep=True)
        loss = per_member_ce(logits, y)
        loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).sum()
        grads = torch.autograd.grad(loss, pre + list(model.weights), allow_unused=True)
    L = len(pre)
    # on the host, as _pop_var
    missing = torch.full((model.n_members,), float("nan"), dtype=torch.float64)
    return (
        torch.stack([_pop_var(z) for z in pre], 1).numpy(),
        torch.stack([_pop_var(h) for h in post], 1).numpy(),
        torch.stack([_pop_var(g) if g is not None else missing for g in grads[:L]], 1).numpy(),
        torch.stack([_pop_var(g) if g is not None else missing for g in grads[L:]], 1).numpy(),
    )


def train_ensemble(
    model: Ensemble, data, cfg: TrainConfig, progress: bool = True, desc: str = "train"
) -> EnsembleRecord:
    """Train every member of ``model`` on ``data`` (a :class:`~hf_init.mlp.data.TabularData`)
    with the same minibatches; see :class:`EnsembleRecord` for what is recorded."""
    t0 = time.perf_counter()
    # Members in the vanishing regime produce subnormal floats (< 1.2e-38), which x86 CPUs
    # process far slower; flushed to zero they change nothing measurable (such values are zero
    # at every recorded precision). torch has no getter for this flag; its default is off,
    # which is restored afterwards.
    device = model.weights[0].device
    if cfg.dtype == "tf32" and device.type != "cuda":
        raise ValueError(
            f"dtype tf32 needs a CUDA device, the ensemble is on {device}; use float32 or bfloat16"
        )
    cpu = device.type == "cpu"
    if cpu:
        torch.set_flush_denormal(True)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = cfg.dtype == "tf32"
    try:
        return _train(model, data, cfg, progress, desc, t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        if cpu:
            torch.set_flush_denormal(False)


CHECK_EVERY = 16  # steps between reads of the on-device divergence state (and at every record)


def _train(
    model: Ensemble, data, cfg: TrainConfig, progress: bool, desc: str, t0: float
) -> EnsembleRecord:
    """The training loop of :func:`train_ensemble`: a host read every :data:`CHECK_EVERY` steps
    and at every record step, a record at each record step, then the last ones."""
    from tqdm.auto import tqdm

    data = data.to(model.weights[0].device)
    batches = minibatch_order(len(data.y_train), cfg.batch_size, cfg.epochs, cfg.data_seed)
    T = len(batches)
    record_at = sorted(set(range(0, T + 1, cfg.record_every)) | {T})
    record_set = set(record_at)
    run = _TrainingState(model, data, cfg, batches)
    bar = tqdm(total=T, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in range(T):
        if step in record_set or step - run.seg_start == CHECK_EVERY:
            run.read_back(step)
            if step in record_set:
                run.record()
            if progress:
                bar.set_postfix(active=f"{run.live.numel()}/{model.n_members}")
        if run.live.numel():  # else every member diverged: nothing left to train
            run.step(step)
        bar.update(1)
    bar.close()
    run.read_back(T)
    run.record()
    if run.work is not model:
        _write_back(model, run.work, run.live)
    return run.result(np.asarray(record_at), time.perf_counter() - t0)


RECORDED = ("train_loss", "train_acc", "test_loss", "test_acc", "pre", "act", "gpre", "gw")


class _TrainingState:
    """The state of one :func:`_train` loop.

    ``work`` computes only the live members (``live``: their indices in ``model``, on the host);
    a member that diverges is written back to ``model`` frozen and dropped from ``work``. Between
    host reads divergence is tracked on the device: ``alive`` (members of ``work`` with no
    non-finite step yet), ``bad_step`` (its first such step) and ``seg_loss`` (the step losses
    since the last read, at ``seg_start``)."""

    def __init__(self, model: Ensemble, data, cfg: TrainConfig, batches: list[torch.Tensor]):
        M, device = model.n_members, model.weights[0].device
        self.model, self.data, self.cfg, self.device = model, data, cfg, device
        self.batches = batches
        # every minibatch's indices as one tensor on the device, sliced per step (no transfer)
        self.order = (
            torch.cat(batches).to(device)
            if batches
            else torch.zeros(0, dtype=torch.long, device=device)
        )
        self.ends = np.cumsum([len(b) for b in batches]).tolist()
        self.probe = data.x_train[: cfg.probe_size], data.y_train[: cfg.probe_size]
        self.mm_dtype = MM_DTYPE[cfg.dtype]
        self.live = torch.arange(M)
        self._use(model, make_optimizer(_parameters(model), cfg.optimizer, cfg.lr, cfg.momentum))
        self.diverged_step = np.full(M, -1, dtype=np.int64)
        self.step_loss = np.full((len(batches), M), np.nan)
        self.rec = {k: [] for k in RECORDED}
        self._fresh_state(M)
        self.seg_start = 0

    def _use(self, work: Ensemble, opt: torch.optim.Optimizer) -> None:
        """Train ``work`` with ``opt`` from now on (the step's reused tensors start afresh)."""
        self.work, self.opt, self.params = work, opt, _parameters(work)
        self.buffers: dict = {}  # the step's reused tensors (_StepBuffers) by batch size

    def _fresh_state(self, m_work: int) -> None:
        """The on-device divergence state of a segment of steps, for ``m_work`` members."""
        self.alive = torch.ones(m_work, dtype=torch.bool, device=self.device)
        self.bad_step = torch.full((m_work,), -1, device=self.device)
        self.seg_loss = torch.full((CHECK_EVERY, m_work), float("nan"), device=self.device)

    def step(self, step: int) -> None:
        """One optimizer step of the live members on minibatch ``step``."""
        end = self.ends[step]
        idx = self.order[end - len(self.batches[step]) : end]
        x, y = self.data.x_train.index_select(0, idx), self.data.y_train.index_select(0, idx)
        loss_row = self.seg_loss[step - self.seg_start]
        _step(
            self.work,
            self.params,
            self.opt,
            x,
            y,
            self.mm_dtype,
            self.alive,
            self.bad_step,
            loss_row,
            step,
            self.buffers,
        )

    def read_back(self, step: int) -> None:
        """Host read of the device state for steps seg_start..step-1: losses, new divergences,
        and the diverged members dropped from ``work`` (written back to ``model`` first)."""
        n = step - self.seg_start
        if n == 0 or self.live.numel() == 0:
            self.seg_start = step
            return
        ok = self.alive.cpu()
        live = self.live.numpy()
        self.step_loss[self.seg_start : step, live] = self.seg_loss[:n].double().cpu().numpy()
        if not ok.all():
            dead = (~ok).numpy()
            self.diverged_step[live[dead]] = self.bad_step.cpu().numpy()[dead]
            _write_back(self.model, self.work, self.live)
            self.live = self.live[ok]
            if self.live.numel():
                self._use(*_compact(self.work, self.opt, ok.to(self.device), self.cfg))
        self._fresh_state(self.live.numel())
        self.seg_start = step

    def record(self) -> None:
        """Full-split loss and accuracy and the probe batch's layer statistics of every member
        (NaN for the diverged ones)."""
        M, L = self.model.n_members, self.model.shape.n_layers
        alive_idx = self.live.numpy()
        data = self.data
        for split, (x, y) in (
            ("train", (data.x_train, data.y_train)),
            ("test", (data.x_test, data.y_test)),
        ):
            loss, acc = np.full(M, np.nan), np.full(M, np.nan)
            if alive_idx.size:
                loss[alive_idx], acc[alive_idx] = _evaluate(self.work, x, y)
            self.rec[f"{split}_loss"].append(loss)
            self.rec[f"{split}_acc"].append(acc)
        stats = _layer_stats(self.work, *self.probe) if alive_idx.size else [None] * 4
        for key, value in zip(("pre", "act", "gpre", "gw"), stats):
            full = np.full((M, L), np.nan)
            if value is not None:
                full[alive_idx] = value
            self.rec[key].append(full)

    def result(self, record_steps: np.ndarray, seconds: float) -> EnsembleRecord:
        rec = {k: np.stack(v) for k, v in self.rec.items()}
        return EnsembleRecord(
            step_loss=self.step_loss,
            record_steps=record_steps,
            train_loss=rec["train_loss"],
            train_acc=rec["train_acc"],
            test_loss=rec["test_loss"],
            test_acc=rec["test_acc"],
            preact_var=rec["pre"],
            act_var=rec["act"],
            grad_preact_var=rec["gpre"],
            grad_weight_var=rec["gw"],
            diverged_step=self.diverged_step,
            seconds=seconds,
        )


def _parameters(work: Ensemble) -> list[torch.nn.Parameter]:
    """The stacked parameters in the optimizer's order: every weight, then every bias."""
    return list(work.weights) + list(work.biases)


# d(loss)/dz from d(loss)/dh, in place in ``dh``: the kernels autograd runs for these activations
_ACTIVATION_BACKWARD = {
    "relu": lambda dh, z, h: torch.ops.aten.threshold_backward.grad_input(
        dh, h, 0.0, grad_input=dh
    ),
    "linear": lambda dh, z, h: dh,
    "tanh": lambda dh, z, h: torch.ops.aten.tanh_backward.grad_input(dh, h, grad_input=dh),
    "gelu": lambda dh, z, h: torch.ops.aten.gelu_backward.grad_input(
        dh, z, approximate="none", grad_input=dh
    ),
    "gelu_tanh": lambda dh, z, h: torch.ops.aten.gelu_backward.grad_input(
        dh, z, approximate="tanh", grad_input=dh
    ),
}


class _StepBuffers:
    """Every tensor a training step of ``work`` on batches of ``B`` writes, made once and reused
    (the parameters' ``.grad`` too, see :func:`_step`): on the CPU a fresh tensor of a megabyte
    or more is new memory from the operating system, whose page faults cost more than the
    elementwise work on it. Products and activations are in ``mm_dtype``: float32, or bfloat16
    as CPU/CUDA autocast makes them (inputs, products and activations bf16, the loss float32)."""

    def __init__(self, work: Ensemble, B: int, mm_dtype: torch.dtype):
        M, dims, device = work.n_members, work.shape.widths(), work.weights[0].device

        def empty(*size):
            return torch.empty(*size, dtype=mm_dtype, device=device)

        relu_like = work.shape.activation in ("relu", "linear")  # h needs no buffer of its own
        # z_l (feature-major); the logits at the output
        self.z = [empty(M, d, B) for d in dims[1:]]
        self.h = [z if relu_like else empty(*z.shape) for z in self.z[:-1]]
        self.dh = [empty(M, d, B) for d in dims[1:-1]]  # dLoss/dh_l, then dLoss/dz_l in place
        self.minus_one = torch.full((1, 1, 1), -1.0, device=device).expand(M, 1, B)


def _into(out: torch.Tensor, fn, *args) -> torch.Tensor:
    """``fn(*args)`` written into ``out``: directly (``out=``) when it has the inputs' dtype, else
    computed in theirs and cast (a bf16 product into a float32 gradient)."""
    if out.dtype == args[0].dtype:
        return fn(*args, out=out)
    return out.copy_(fn(*args))


def _step(
    work: Ensemble,
    params,
    opt,
    x,
    y,
    mm_dtype: torch.dtype,
    alive,
    bad_step,
    loss_row,
    step: int,
    buffers: dict | None = None,
) -> None:
    """One optimizer step of every member of ``work``, with no host sync and no allocation of
    a batch-sized tensor: forward and backward written out (the products autograd would make,
    into the reused :class:`_StepBuffers` of ``buffers``), then the optimizer's one pass.
    Products in ``mm_dtype`` (:data:`MM_DTYPE`). The loss is the sum over members of each
    member's mean cross-entropy on (x, y). A member whose loss or gradient is non-finite now, or
    was since the last host read, is frozen (:func:`_freeze_diverged`); ``alive``, ``bad_step``
    and ``loss_row`` are updated in place."""
    buffers = {} if buffers is None else buffers
    if "grads" not in buffers:  # the gradients the optimizer reads: the same tensors every step
        for p in params:
            p.grad = torch.empty_like(p)
        buffers["grads"] = [p.grad for p in params]
    B = x.shape[0]
    buf = buffers.get(B)
    if buf is None:
        buf = buffers[B] = _StepBuffers(work, B, mm_dtype)
    Ws = [w.detach().to(mm_dtype) for w in work.weights]
    bs = [b.detach().to(mm_dtype) for b in work.biases]
    xc = x.to(mm_dtype)
    with torch.no_grad():
        _forward(work.shape, buf, Ws, bs, xc)
        losses, dz = _loss_and_logit_grad(buf, y)
        _backward(work.shape, buf, buffers["grads"], Ws, dz.to(mm_dtype), xc)
        _freeze_diverged(params, buffers["grads"], opt, losses, alive, bad_step, loss_row, step)
    opt.step()


def _forward(shape, buf: _StepBuffers, Ws, bs, xc) -> None:
    """z_l = W_l h_{l-1} + b_l and h_l = phi(z_l) of every member into ``buf``, feature-major
    (M, out, B) as :meth:`~hf_init.mlp.model.Ensemble.forward`; the first layer is one product
    for every member (the input is shared)."""
    act = TORCH_ACTIVATIONS[shape.activation]
    M, B = buf.z[0].shape[0], buf.z[0].shape[2]
    h = None
    for l in range(shape.depth + 1):
        z = buf.z[l]
        out = z.shape[1]
        if l == 0:
            torch.addmm(
                bs[0].reshape(M * out, 1),
                Ws[0].reshape(M * out, -1),
                xc.t(),
                out=z.view(M * out, B),
            )
        else:
            torch.baddbmm(bs[l].unsqueeze(2), Ws[l], h, out=z)
        if l < shape.depth:
            h = buf.h[l]
            if shape.activation == "relu":
                z.relu_()
            elif h is not z:
                h.copy_(act(z))


def _loss_and_logit_grad(buf: _StepBuffers, y) -> tuple[torch.Tensor, torch.Tensor]:
    """(each member's mean cross-entropy, dLoss/dlogits = (softmax - onehot) / B), the gradient
    in float32, in place over the logits."""
    logits = buf.z[-1]
    M, B = logits.shape[0], logits.shape[2]
    logits32 = logits if logits.dtype == torch.float32 else logits.float()
    lse = torch.logsumexp(logits32, 1)  # (M, B)
    target = y.view(1, 1, B).expand(M, 1, B)
    losses = (lse - logits32.gather(1, target).squeeze(1)).mean(1)
    dz = logits32.sub_(lse.unsqueeze(1)).exp_()
    dz.scatter_add_(1, target, buf.minus_one).mul_(1.0 / B)
    return losses, dz


def _backward(shape, buf: _StepBuffers, grads, Ws, dz, xc) -> None:
    """Every weight and bias gradient into ``grads`` (weights first, then biases), from the
    logits' gradient ``dz`` down: the products autograd makes, dLoss/dz_l in place of dh_l."""
    act_backward = _ACTIVATION_BACKWARD[shape.activation]
    M, B = dz.shape[0], dz.shape[2]
    L = shape.depth + 1
    for l in range(shape.depth, -1, -1):
        gw, gb = grads[l], grads[L + l]
        _into(gb, torch.sum, dz, 2)
        if l == 0:  # the shared input: one product for every member
            out = dz.shape[1]
            _into(gw.view(M * out, -1), torch.mm, dz.view(M * out, B), xc)
            break
        h_prev = buf.h[l - 1]
        _into(gw, torch.bmm, dz, h_prev.transpose(1, 2))
        dh = torch.bmm(Ws[l].transpose(1, 2), dz, out=buf.dh[l - 1])
        dz = act_backward(dh, buf.z[l - 1], h_prev)


def _freeze_diverged(params, grads, opt, losses, alive, bad_step, loss_row, step: int) -> None:
    """Mark the members whose loss or gradient is non-finite at ``step`` (their first such step
    into ``bad_step``) and zero the gradients and per-entry optimizer state of every member not
    ``alive``, so the update leaves its weights as they were, bit for bit."""
    M = alive.shape[0]
    # one reduction pass: a NaN/inf entry makes its member's sum non-finite (so does a sum that
    # overflows float32, ~3e38: such a gradient counts as diverged too)
    gsum = torch.stack([g.reshape(M, -1).sum(1) for g in grads]).sum(0)
    ok = torch.isfinite(losses) & torch.isfinite(gsum)
    bad_step.masked_fill_(alive & ~ok, step)
    alive &= ok
    loss_row.copy_(torch.where(alive, losses, float("nan")))
    dead = ~alive
    # on the CPU reading the flag costs nothing (no queue to drain), so the masking pass is
    # skipped while every member is alive; on an accelerator it always runs (no sync)
    if alive.device.type != "cpu" or bool(dead.any()):
        for p, g in zip(params, grads):
            d = dead.view(-1, *([1] * (g.dim() - 1)))
            g.masked_fill_(d, 0.0)
            for value in opt.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.masked_fill_(d, 0.0)


@torch.no_grad()
def _write_back(model: Ensemble, work: Ensemble, live: torch.Tensor) -> None:
    """Copy the live members' parameters from the compacted ensemble into the full one."""
    if work is model or live.numel() == 0:
        return
    for full, part in zip(_parameters(model), _parameters(work)):
        full[live] = part


def _compact(work: Ensemble, opt: torch.optim.Optimizer, keep: torch.Tensor, cfg: TrainConfig):
    """A new ensemble and optimizer holding only the ``keep`` members, optimizer state included
    (per-entry tensors sliced, scalar state such as Adam's step count copied)."""
    old = _parameters(work)
    new = Ensemble(work.shape, [w[keep] for w in work.weights], [b[keep] for b in work.biases])
    new_params = _parameters(new)
    new_opt = make_optimizer(new_params, cfg.optimizer, cfg.lr, cfg.momentum)
    for p_old, p_new in zip(old, new_params):
        state = opt.state.get(p_old)
        if state:
            new_opt.state[p_new] = {
                k: (
                    v[keep].clone()
                    if torch.is_tensor(v) and v.shape == p_old.shape
                    else (v.clone() if torch.is_tensor(v) else v)
                )
                for k, v in state.items()
            }
    return new, new_opt
