"""Training an :class:`~hf_init.mlp.model.Ensemble`: every member sees the same minibatches in
the same order, under one optimizer over the stacked tensors, with per-layer statistics recorded.

Why one optimizer over the stacked tensors is exactly M independent optimizers: SGD (with or
without momentum) and Adam update every parameter entry from that entry's own gradient and
state only (no global norm, no clipping, nothing shared across entries except the step count,
which is the same for every member). The loss is the *sum over members* of each member's mean
cross-entropy, so the gradient w.r.t. member m's weights is exactly member m's own gradient.
``tests/test_mlp.py`` trains one member inside an ensemble and the same member alone as a
plain ``nn.Sequential`` with ``torch.optim`` and checks the weights agree.

A member whose loss or gradient becomes non-finite (or whose gradient entries sum past float32's
range) is *diverged*: its step is recorded, its gradients and optimizer state are zeroed so that
step leaves it unchanged, its frozen weights are written back to the full ensemble and it is
dropped from the batched compute (the others, with their optimizer state, train on). Its later
metrics are reported as NaN. The checks run on the device with no host sync per step; the host
reads them every :data:`CHECK_EVERY` steps (a member diverged in between is already frozen: its
gradients and optimizer state are zeroed from its divergence step on, see :func:`_step`).

The ensemble and the data live on one device (the model's: CPU, CUDA or MPS); ``dtype``
chooses the matmul precision (:data:`DTYPES`).
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
DTYPES = (
    "float32",
    "tf32",
    "bfloat16",
)  # the matmul precision (weights, optimizer and loss stay float32)
# the dtype the step's products take: tf32 is float32 with CUDA's tf32 flag set by train_ensemble
MM_DTYPE = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16}


def minibatch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """Index tensors of every minibatch: a fresh permutation of range(n) per epoch (torch
    generator seeded with ``seed``), cut into batches of ``batch_size`` (the last may be smaller)."""
    g = torch.Generator().manual_seed(int(seed))
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches


FUSED_DEVICES = ("cpu", "cuda")  # where torch.optim's fused SGD and Adam kernels exist for float32


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum (``sgd``) or Adam (``adam``): both elementwise, see the module docstring.
    One update pass over the stacked tensors per step: torch's fused kernel on the CPU and CUDA
    (on this 2-core CPU, for the 80-member width-64 sweep: SGD 0.13 ms instead of 0.23 ms with
    foreach, Adam 0.3 ms instead of 2.7 ms), the multi-tensor (foreach) update elsewhere."""
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
    (:func:`hf_init.core.moments.row_variances`; on the host where the device has no float64: MPS): (M,)."""
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
    with torch.enable_grad():
        logits, pre, post = model(x, keep=True)
        loss = per_member_ce(logits, y)
        loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).sum()
        grads = torch.autograd.grad(loss, pre + list(model.weights), allow_unused=True)
    L = len(pre)
    missing = torch.full(
        (model.n_members,), float("nan"), dtype=torch.float64
    )  # on the host, as _pop_var
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
    # process ~100x slower; flushing them to zero made the default sweep ~1.6x faster here and
    # changes nothing measurable (such values are zero at every recorded precision).
    # torch has no getter for this flag; its default is off, which is restored afterwards.
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
    from tqdm.auto import tqdm

    M = model.n_members
    device = model.weights[0].device
    data = data.to(device)
    batches = minibatch_order(len(data.y_train), cfg.batch_size, cfg.epochs, cfg.data_seed)
    T = len(batches)
    # every minibatch's indices as one tensor on the device, sliced per step (no transfer per step)
    order = torch.cat(batches).to(device) if T else torch.zeros(0, dtype=torch.long, device=device)
    ends = np.cumsum([len(b) for b in batches]).tolist()
    record_at = sorted(set(range(0, T + 1, cfg.record_every)) | {T})
    record_set = set(record_at)
    probe_x, probe_y = data.x_train[: cfg.probe_size], data.y_train[: cfg.probe_size]

    # `work` computes only the live members (`live`: their indices in `model`, on the host); a
    # member that diverges is written back to `model` frozen and dropped from `work`. Between
    # host reads (every CHECK_EVERY steps and at records) divergence is tracked on the device:
    # `alive` (members of `work` with no non-finite step yet), `bad_step` (its first such step)
    # and `seg_loss` (the step losses since the last read).
    live = torch.arange(M)
    work = model
    params = list(work.weights) + list(work.biases)
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum)
    buffers: dict = {}  # the step's reused tensors (_StepBuffers) by batch size, for the current `work`
    diverged_step = np.full(M, -1, dtype=np.int64)
    step_loss = np.full((T, M), np.nan)
    rec = {
        k: []
        for k in ("train_loss", "train_acc", "test_loss", "test_acc", "pre", "act", "gpre", "gw")
    }
    L = model.shape.n_layers
    mm_dtype = MM_DTYPE[cfg.dtype]

    def fresh_state(m_work):
        return (
            torch.ones(m_work, dtype=torch.bool, device=device),
            torch.full((m_work,), -1, device=device),
            torch.full((CHECK_EVERY, m_work), float("nan"), device=device),
        )

    alive, bad_step, seg_loss = fresh_state(M)
    seg_start = 0

    def read_back(step):
        """Host read of the device state for steps seg_start..step-1: losses, new divergences,
        and the diverged members dropped from `work` (written back to `model` first)."""
        nonlocal live, work, opt, params, alive, bad_step, seg_loss, seg_start, buffers
        n = step - seg_start
        if n == 0 or live.numel() == 0:
            seg_start = step
            return
        ok = alive.cpu()
        step_loss[seg_start:step, live.numpy()] = seg_loss[:n].double().cpu().numpy()
        if not ok.all():
            dead = (~ok).numpy()
            diverged_step[live.numpy()[dead]] = bad_step.cpu().numpy()[dead]
            _write_back(model, work, live)
            live = live[ok]
            if live.numel():
                work, opt = _compact(work, opt, ok.to(device), cfg)
                params = list(work.weights) + list(work.biases)
                buffers = {}
        alive, bad_step, seg_loss = fresh_state(live.numel())
        seg_start = step

    def record():
        alive_idx = live.numpy()
        for split, (x, y) in (
            ("train", (data.x_train, data.y_train)),
            ("test", (data.x_test, data.y_test)),
        ):
            loss, acc = np.full(M, np.nan), np.full(M, np.nan)
            if alive_idx.size:
                loss[alive_idx], acc[alive_idx] = _evaluate(work, x, y)
            rec[f"{split}_loss"].append(loss)
            rec[f"{split}_acc"].append(acc)
        stats = _layer_stats(work, probe_x, probe_y) if alive_idx.size else [None] * 4
        for key, value in zip(("pre", "act", "gpre", "gw"), stats):
            full = np.full((M, L), np.nan)
            if value is not None:
                full[alive_idx] = value
            rec[key].append(full)

    bar = tqdm(total=T, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step in range(T):
        if step in record_set or step - seg_start == CHECK_EVERY:
            read_back(step)
            if step in record_set:
                record()
            if progress:
                bar.set_postfix(active=f"{live.numel()}/{M}")
        if live.numel() == 0:  # every member diverged: nothing left to train
            bar.update(1)
            continue
        idx = order[ends[step] - len(batches[step]) : ends[step]]
        _step(
            work,
            params,
            opt,
            data.x_train.index_select(0, idx),
            data.y_train.index_select(0, idx),
            mm_dtype,
            alive,
            bad_step,
            seg_loss[step - seg_start],
            step,
            buffers,
        )
        bar.update(1)
    bar.close()
    read_back(T)
    record()
    if work is not model:
        _write_back(model, work, live)

    as_arr = lambda k: np.stack(rec[k])  # noqa: E731
    return EnsembleRecord(
        step_loss=step_loss,
        record_steps=np.asarray(record_at),
        train_loss=as_arr("train_loss"),
        train_acc=as_arr("train_acc"),
        test_loss=as_arr("test_loss"),
        test_acc=as_arr("test_acc"),
        preact_var=as_arr("pre"),
        act_var=as_arr("act"),
        grad_preact_var=as_arr("gpre"),
        grad_weight_var=as_arr("gw"),
        diverged_step=diverged_step,
        seconds=time.perf_counter() - t0,
    )


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
    (the parameters' ``.grad`` too, made once per ``work`` by :func:`_step`): no allocation per
    step. On the CPU a fresh tensor of a megabyte or more is new memory from the operating
    system, and its page faults cost more than the elementwise work on it (the 80-member
    width-64 step: ~500 faults, ~0.8 ms of 6).

    Products and activations are in ``mm_dtype``: float32, or bfloat16 as CPU/CUDA autocast
    makes them (inputs cast to bf16, products and activations bf16, the loss in float32)."""

    def __init__(self, work: Ensemble, B: int, mm_dtype: torch.dtype):
        M, dims, device = work.n_members, work.shape.widths(), work.weights[0].device
        empty = lambda *size, dtype=mm_dtype: torch.empty(*size, dtype=dtype, device=device)  # noqa: E731
        relu_like = work.shape.activation in ("relu", "linear")  # h needs no buffer of its own
        self.z = [empty(M, d, B) for d in dims[1:]]  # z_l (feature-major); the logits at the output
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
    Products in ``mm_dtype`` (:data:`MM_DTYPE`; a bf16 product is cast into the float32 gradient).

    Loss: the sum over members of each member's mean cross-entropy on (x, y), so member m's
    gradient is its own. Its gradient w.r.t. the logits is (softmax - onehot) / B.

    A member whose loss or gradient is non-finite now (or was at an earlier step since the last
    host read) is frozen: its gradients and per-entry optimizer state are zeroed, so the update
    leaves its weights as they were before this step, bit for bit. Updates ``alive``,
    ``bad_step`` (this step for members diverging now) and ``loss_row`` (NaN for frozen members)
    in place."""
    M, B = work.n_members, x.shape[0]
    buffers = {} if buffers is None else buffers
    if (
        "grads" not in buffers
    ):  # the gradients, read by the optimizer: the same tensors at every step
        for p in params:
            p.grad = torch.empty_like(p)
        buffers["grads"] = [p.grad for p in params]
    grads = buffers["grads"]
    buf = buffers.get(B)
    if buf is None:
        buf = buffers[B] = _StepBuffers(work, B, mm_dtype)
    shape, depth = work.shape, work.shape.depth
    act, act_backward = TORCH_ACTIVATIONS[shape.activation], _ACTIVATION_BACKWARD[shape.activation]
    cast = (lambda t: t) if mm_dtype == torch.float32 else (lambda t: t.to(mm_dtype))  # noqa: E731
    Ws = [cast(w.detach()) for w in work.weights]
    bs = [cast(b.detach()) for b in work.biases]
    xc = cast(x)
    with torch.no_grad():
        # forward, feature-major (see Ensemble.forward): z_l = W_l h_{l-1} + b_l, (M, out, B)
        h = None
        for l in range(depth + 1):
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
            if l < depth:
                h = buf.h[l]
                if shape.activation == "relu":
                    z.relu_()
                elif h is not z:
                    h.copy_(act(z))
        logits = buf.z[-1]
        logits32 = logits if logits.dtype == torch.float32 else logits.float()
        lse = torch.logsumexp(logits32, 1)  # (M, B)
        target = y.view(1, 1, B).expand(M, 1, B)
        losses = (lse - logits32.gather(1, target).squeeze(1)).mean(1)
        finite = torch.isfinite(losses)
        # dLoss/dlogits = (softmax - onehot) / B, in place over the logits
        dz = logits32.sub_(lse.unsqueeze(1)).exp_()
        dz.scatter_add_(1, target, buf.minus_one).mul_(1.0 / B)
        dz = cast(dz)
        L = depth + 1
        for l in range(depth, -1, -1):
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
        # one reduction pass: a NaN/inf entry makes its member's sum non-finite (so does a sum that
        # overflows float32, ~3e38: such a gradient counts as diverged too)
        gsum = torch.stack([g.reshape(M, -1).sum(1) for g in grads]).sum(0)
        ok = finite & torch.isfinite(gsum)
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
    opt.step()


@torch.no_grad()
def _write_back(model: Ensemble, work: Ensemble, live: torch.Tensor) -> None:
    """Copy the live members' parameters from the compacted ensemble into the full one."""
    if work is model or live.numel() == 0:
        return
    for full, part in zip(
        list(model.weights) + list(model.biases), list(work.weights) + list(work.biases)
    ):
        full[live] = part


def _compact(work: Ensemble, opt: torch.optim.Optimizer, keep: torch.Tensor, cfg: TrainConfig):
    """A new ensemble and optimizer holding only the ``keep`` members, optimizer state included
    (per-entry tensors sliced, scalar state such as Adam's step count copied)."""
    old = list(work.weights) + list(work.biases)
    new = Ensemble(work.shape, [w[keep] for w in work.weights], [b[keep] for b in work.biases])
    new_params = list(new.weights) + list(new.biases)
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
