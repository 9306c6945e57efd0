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
metrics are reported as NaN.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from hf_init.mlp.model import Ensemble, per_member_ce

OPTIMIZERS = ("sgd", "adam")


def minibatch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """Index tensors of every minibatch: a fresh permutation of range(n) per epoch (torch
    generator seeded with ``seed``), cut into batches of ``batch_size`` (the last may be smaller)."""
    g = torch.Generator().manual_seed(int(seed))
    batches = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum (``sgd``) or Adam (``adam``): both elementwise, see the module docstring."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=True)
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

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
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
    """Population variance over every dim but the first (members), float64: (M,)."""
    x = t.detach().to(torch.float64).reshape(t.shape[0], -1)
    return ((x - x.mean(1, keepdim=True)) ** 2).mean(1)


@torch.no_grad()
def _evaluate(model: Ensemble, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096):
    losses = torch.zeros(model.n_members, dtype=torch.float64)
    correct = torch.zeros(model.n_members, dtype=torch.float64)
    for i in range(0, len(y), chunk):
        logits = model(x[i : i + chunk])
        yy = y[i : i + chunk]
        losses += per_member_ce(logits, yy).double() * len(yy)
        correct += (logits.argmax(-1) == yy).double().sum(1)
    return (losses / len(y)).numpy(), (correct / len(y)).numpy()


def _layer_stats(model: Ensemble, x: torch.Tensor, y: torch.Tensor):
    with torch.enable_grad():
        logits, pre, post = model(x, keep=True)
        loss = per_member_ce(logits, y)
        loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).sum()
        grads = torch.autograd.grad(loss, pre + list(model.weights), allow_unused=True)
    L = len(pre)
    missing = torch.full((model.n_members,), float("nan"), dtype=torch.float64)
    return (
        torch.stack([_pop_var(z) for z in pre], 1).numpy(),
        torch.stack([_pop_var(h) for h in post], 1).numpy(),
        torch.stack([_pop_var(g) if g is not None else missing for g in grads[:L]], 1).numpy(),
        torch.stack([_pop_var(g) if g is not None else missing for g in grads[L:]], 1).numpy(),
    )


def train_ensemble(model: Ensemble, data, cfg: TrainConfig, progress: bool = True, desc: str = "train") -> EnsembleRecord:
    """Train every member of ``model`` on ``data`` (a :class:`~hf_init.data.tabular.TabularData`)
    with the same minibatches; see :class:`EnsembleRecord` for what is recorded."""
    t0 = time.perf_counter()
    # Members in the vanishing regime produce subnormal floats (< 1.2e-38), which x86 CPUs
    # process ~100x slower; flushing them to zero made the default sweep ~1.6x faster here and
    # changes nothing measurable (such values are zero at every recorded precision).
    # torch has no getter for this flag; its default is off, which is restored afterwards.
    torch.set_flush_denormal(True)
    try:
        return _train(model, data, cfg, progress, desc, t0)
    finally:
        torch.set_flush_denormal(False)


def _train(model: Ensemble, data, cfg: TrainConfig, progress: bool, desc: str, t0: float) -> EnsembleRecord:
    from tqdm.auto import tqdm

    M = model.n_members
    batches = minibatch_order(len(data.y_train), cfg.batch_size, cfg.epochs, cfg.data_seed)
    T = len(batches)
    record_at = sorted(set(range(0, T + 1, cfg.record_every)) | {T})
    record_set = set(record_at)
    probe_x, probe_y = data.x_train[: cfg.probe_size], data.y_train[: cfg.probe_size]

    # `work` computes only the live members (`live`: their indices in `model`); a member that
    # diverges is written back to `model` frozen and dropped from `work`.
    live = torch.arange(M)
    work = model
    params = list(work.weights) + list(work.biases)
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum)
    diverged_step = np.full(M, -1, dtype=np.int64)
    step_loss = np.full((T, M), np.nan)
    rec = {k: [] for k in ("train_loss", "train_acc", "test_loss", "test_acc", "pre", "act", "gpre", "gw")}
    L = model.shape.n_layers

    def record():
        alive = live.numpy()
        for split, (x, y) in (("train", (data.x_train, data.y_train)), ("test", (data.x_test, data.y_test))):
            loss, acc = np.full(M, np.nan), np.full(M, np.nan)
            if alive.size:
                loss[alive], acc[alive] = _evaluate(work, x, y)
            rec[f"{split}_loss"].append(loss)
            rec[f"{split}_acc"].append(acc)
        stats = _layer_stats(work, probe_x, probe_y) if alive.size else [None] * 4
        for key, value in zip(("pre", "act", "gpre", "gw"), stats):
            full = np.full((M, L), np.nan)
            if value is not None:
                full[alive] = value
            rec[key].append(full)

    bar = tqdm(total=T, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for step, idx in enumerate(batches):
        if step in record_set:
            record()
        if live.numel() == 0:  # every member diverged: nothing left to train
            bar.update(1)
            continue
        m_live = live.numel()
        opt.zero_grad(set_to_none=False)
        losses = per_member_ce(work(data.x_train[idx]), data.y_train[idx])
        finite = torch.isfinite(losses.detach())
        torch.where(finite, losses, torch.zeros_like(losses)).sum().backward()
        # one reduction pass: a NaN/inf entry makes its member's sum non-finite (so does a sum
        # that overflows float32, ~3e38: such a gradient counts as diverged too)
        grad_ok = torch.isfinite(torch.stack([p.grad.reshape(m_live, -1).sum(1) for p in params]).sum(0))
        ok = finite & grad_ok
        step_loss[step, live.numpy()] = np.where(ok.numpy(), losses.detach().double().numpy(), np.nan)
        if not ok.all():
            diverged_step[live[~ok].numpy()] = step
            _freeze(opt, params, ~ok)  # this step leaves them unchanged
        opt.step()
        if not ok.all():
            _write_back(model, work, live)
            live = live[ok]
            work, opt = _compact(work, opt, ok, cfg)
            params = list(work.weights) + list(work.biases)
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(active=f"{live.numel()}/{M}")
    bar.close()
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


@torch.no_grad()
def _write_back(model: Ensemble, work: Ensemble, live: torch.Tensor) -> None:
    """Copy the live members' parameters from the compacted ensemble into the full one."""
    if work is model or live.numel() == 0:
        return
    for full, part in zip(list(model.weights) + list(model.biases), list(work.weights) + list(work.biases)):
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
                k: (v[keep].clone() if torch.is_tensor(v) and v.shape == p_old.shape else
                    (v.clone() if torch.is_tensor(v) else v))
                for k, v in state.items()
            }
    return new, new_opt


@torch.no_grad()
def _freeze(opt: torch.optim.Optimizer, params, dead: torch.Tensor) -> None:
    """Zero the gradients and every per-entry optimizer state (momentum, Adam moments) of the
    ``dead`` members, so the coming and all later updates leave their weights unchanged."""
    for p in params:
        p.grad[dead] = 0.0
        for value in opt.state.get(p, {}).values():
            if torch.is_tensor(value) and value.shape == p.shape:
                value[dead] = 0.0
