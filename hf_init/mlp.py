"""MLPs for the init studies and a vectorised ensemble trainer.

An MLP of ``depth`` hidden layers of ``width`` units maps ``n_in`` features to ``n_out`` logits
through ``depth + 1`` linear layers (weights (out, in) as in ``nn.Linear``, biases zero at init)
with the activation after every hidden layer and none after the output layer.

The :class:`Ensemble` holds M such MLPs (members: every (std or scheme) x seed of a study) as
stacked tensors, weights (M, out, in) and biases (M, out), and runs them all with batched
matmuls (``torch.baddbmm``). Every member sees the same minibatches in the same order.

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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hf_init.schemes import SchemeOptions, WeightSpec, get_scheme

ACTIVATIONS = ("relu", "tanh", "linear")
OPTIMIZERS = ("sgd", "adam")


def _act(name: str):
    return {"relu": torch.relu, "tanh": torch.tanh, "linear": lambda z: z}[name]


@dataclass(frozen=True)
class MLPShape:
    """n_in -> depth x [Linear(width) + activation] -> Linear(n_out)."""

    n_in: int
    width: int
    depth: int
    n_out: int
    activation: str = "relu"

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1 (hidden layers), got {self.depth}")
        if self.width < 1 or self.n_in < 1 or self.n_out < 1:
            raise ValueError(f"width, n_in and n_out must be >= 1, got {self}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")

    @property
    def n_layers(self) -> int:
        """Linear layers, the output layer included: depth + 1."""
        return self.depth + 1

    def layer_fans(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each linear layer, input to output."""
        dims = [self.n_in] + [self.width] * self.depth + [self.n_out]
        return [(dims[i], dims[i + 1]) for i in range(self.n_layers)]


def build_mlp(shape: MLPShape) -> nn.Sequential:
    """The plain ``nn.Sequential`` version of one member (the reference the tests compare with)."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "linear": nn.Identity}[shape.activation]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(shape.layer_fans()):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < shape.depth:
            layers.append(act())
    return nn.Sequential(*layers)


def scheme_layer_stds(scheme: str, shape: MLPShape, options: SchemeOptions | None = None) -> list[float]:
    """The std the registry scheme ``scheme`` gives each linear layer of ``shape`` (role "linear")."""
    s = get_scheme(scheme)
    return [s.std(WeightSpec("linear", fan_in, fan_out), options) for fan_in, fan_out in shape.layer_fans()]


def standard_normal_draws(shape: MLPShape, seeds: list[int]) -> list[torch.Tensor]:
    """One standard-normal tensor per (seed, layer): layer l -> (n_seeds, out, in), float32.

    Seed s always gives the same draw whatever else is in the study, so a member's weights
    are ``draw[seed] * std``: members sharing a seed differ only by the scale (the controlled
    comparison of :func:`ensemble_weights`)."""
    per_seed = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        per_seed.append([torch.randn(fan_out, fan_in, generator=g) for fan_in, fan_out in shape.layer_fans()])
    return [torch.stack([ws[layer] for ws in per_seed]) for layer in range(shape.n_layers)]


def ensemble_weights(draws: list[torch.Tensor], seed_index: list[int], layer_stds: list[list[float]]) -> list[torch.Tensor]:
    """Member m's layer-l weight = draws[l][seed_index[m]] * layer_stds[m][l]; returns (M, out, in) per layer."""
    idx = torch.as_tensor(seed_index, dtype=torch.long)
    stds = torch.as_tensor(layer_stds, dtype=torch.float32)  # (M, L)
    if stds.shape != (len(seed_index), len(draws)):
        raise ValueError(f"layer_stds must be (members={len(seed_index)}, layers={len(draws)}), got {tuple(stds.shape)}")
    return [draws[l][idx] * stds[:, l].view(-1, 1, 1) for l in range(len(draws))]


class Ensemble(nn.Module):
    """M MLPs of one shape as stacked parameters: ``weights[l]`` (M, out, in), ``biases[l]`` (M, out)."""

    def __init__(self, shape: MLPShape, weights: list[torch.Tensor], biases: list[torch.Tensor] | None = None):
        super().__init__()
        if len(weights) != shape.n_layers:
            raise ValueError(f"expected {shape.n_layers} weight tensors, got {len(weights)}")
        self.shape = shape
        self.n_members = int(weights[0].shape[0])
        for w, (fan_in, fan_out) in zip(weights, shape.layer_fans()):
            if tuple(w.shape) != (self.n_members, fan_out, fan_in):
                raise ValueError(f"weight shape {tuple(w.shape)} != {(self.n_members, fan_out, fan_in)}")
        if biases is None:
            biases = [torch.zeros(self.n_members, w.shape[1]) for w in weights]
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone().float()) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b.detach().clone().float()) for b in biases])
        self._act = _act(shape.activation)

    def forward(self, x: torch.Tensor, keep: bool = False):
        """x: (B, n_in), shared by all members -> logits (M, B, n_out). With ``keep=True`` also
        returns the per-layer pre-activations z_l and post-activations h_l (h_l = z_l at the
        output layer), each (M, B, fan_out)."""
        h = x.unsqueeze(0).expand(self.n_members, *x.shape)
        pre, post = [], []
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if l < self.shape.depth and not keep and self.shape.activation == "relu":
                h = torch.relu_(z)  # baddbmm's backward needs its inputs, not z: safe in place
            else:
                h = self._act(z) if l < self.shape.depth else z
            if keep:
                pre.append(z)
                post.append(h)
        return (h, pre, post) if keep else h

    def member_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each member on (x, y): (M,)."""
        logits = self(x)
        return per_member_ce(logits, y)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m as an ``nn.Sequential`` state dict (keys "0.weight", "0.bias", "2.weight", ...)."""
        out = {}
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{2 * l}.weight"] = w[m].detach().clone()
            out[f"{2 * l}.bias"] = b[m].detach().clone()
        return out


def per_member_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits (M, B, C), y (B,) -> mean cross-entropy over the batch for each member, (M,)."""
    m, b, c = logits.shape
    return F.cross_entropy(logits.reshape(m * b, c), y.repeat(m), reduction="none").view(m, b).mean(1)


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
    import time

    from tqdm.auto import tqdm

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
    import time

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


# --- studies: members, output folders, tables, TensorBoard ------------------------------

# everything the study scripts write into --output_dir (scripts/mlp_sweep.py, scripts/mlp_init_compare.py):
# any of them means the folder already holds a study (hf_init.outputs.check_output_dir)
STUDY_OUTPUTS = ("summary.json", "results.csv", "layer_stats.csv", "curves.csv", "sweep_metrics.png",
                 "layer_variance.png", "phase_diagram.png", "compare_curves.png", "tb")


def _study_train_config(args, probe_size: int) -> TrainConfig:
    """The TrainConfig of a study script's flags; lr defaults to 0.01 for sgd, 1e-3 for adam."""
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.01)
    return TrainConfig(optimizer=args.optimizer, lr=lr, momentum=args.momentum, epochs=args.epochs,
                       batch_size=args.batch_size, record_every=args.record_every, probe_size=probe_size)


def _check_threads(threads: int) -> None:
    from .cli import UsageError

    if threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = torch's choice), got {threads}")


def check_sweep_args(args) -> tuple[list[float], list[int], TrainConfig]:
    """Validate the parsed flags of ``scripts/mlp_sweep.py`` before any data is read or anything
    written; return (sorted distinct stds, depths, TrainConfig). Raises ValueError (one line)."""
    from .cli import UsageError
    from .schemes import check_std

    if args.stds is None:
        stds = log_grid(1e-4, 10.0, 3)
    elif not args.stds:
        raise UsageError("--stds is empty; give one or more stds > 0 (e.g. --stds 1e-3 1e-2 1e-1)")
    else:
        stds = [check_std(v, "--stds") for v in args.stds]
    depths = args.depths if args.depths else [args.depth]
    if any(d < 1 for d in depths):
        raise UsageError(f"depth must be >= 1 (hidden layers), got {min(depths)}")
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    _check_threads(args.threads)
    cfg = _study_train_config(args, args.probe_size)
    MLPShape(1, args.width, 1, 1, args.activation)  # validates width / activation
    return sorted(set(stds)), depths, cfg


def check_compare_args(args) -> TrainConfig:
    """Validate the parsed flags of ``scripts/mlp_init_compare.py`` before any data is read or
    anything written; return the TrainConfig. Raises ValueError (one line)."""
    from .cli import UsageError

    a, b = args.schemes
    check_controlled_schemes([a, b])
    if a == b:
        raise UsageError(f"--schemes needs two different schemes, got {a} twice")
    if args.seeds < 2:
        raise UsageError(f"--seeds must be >= 2 for a paired test, got {args.seeds}")
    for act in args.activations:
        MLPShape(1, args.width, args.depth, 1, act)  # validates depth / width / activation
    _check_threads(args.threads)
    if args.target_loss is not None and not args.target_loss > 0:
        raise UsageError(f"--target_loss must be > 0, got {args.target_loss}")
    return _study_train_config(args, 256)


def layer_rows(record: EnsembleRecord, member_keys: list[dict]) -> list[dict]:
    """Long-format per-layer variance rows: one per (member, record step, layer)."""
    rows = []
    R, M, L = record.preact_var.shape
    for m in range(M):
        for r in range(R):
            for l in range(L):
                rows.append({
                    **member_keys[m],
                    "step": int(record.record_steps[r]),
                    "layer": l + 1,
                    "preact_var": float(record.preact_var[r, m, l]),
                    "act_var": float(record.act_var[r, m, l]),
                    "grad_preact_var": float(record.grad_preact_var[r, m, l]),
                    "grad_weight_var": float(record.grad_weight_var[r, m, l]),
                })
    return rows


def curve_rows(record: EnsembleRecord, member_keys: list[dict]) -> list[dict]:
    """Full-train/test loss and accuracy of every member at every record step."""
    rows = []
    for m in range(len(member_keys)):
        for r, step in enumerate(record.record_steps):
            rows.append({
                **member_keys[m], "step": int(step),
                "train_loss": float(record.train_loss[r, m]), "test_loss": float(record.test_loss[r, m]),
                "train_acc": float(record.train_acc[r, m]), "test_acc": float(record.test_acc[r, m]),
            })
    return rows


def write_tensorboard(logdir, record: EnsembleRecord, member_keys: list[dict], run_names: list[str],
                      hparams: list[dict], metrics: list[dict]) -> int:
    """One TensorBoard run per member under ``logdir``: minibatch loss every step, full-split
    loss/accuracy and per-layer variances at record steps, and its HParams entry (written into
    the same run folder, so the dashboard links hparams to the curves). Returns the run count."""
    from torch.utils.tensorboard import SummaryWriter

    for m, name in enumerate(run_names):
        with SummaryWriter(log_dir=f"{logdir}/{name}") as w:
            for step, loss in enumerate(record.step_loss[:, m]):
                if math.isfinite(loss):
                    w.add_scalar("loss/minibatch", float(loss), step)
            for r, step in enumerate(record.record_steps):
                step = int(step)
                for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
                    v = float(getattr(record, key)[r, m])
                    if math.isfinite(v):
                        w.add_scalar(f"eval/{key}", v, step)
                for l in range(record.act_var.shape[2]):
                    for key in ("act_var", "grad_preact_var"):
                        v = float(getattr(record, key)[r, m, l])
                        if math.isfinite(v):
                            w.add_scalar(f"{key}/layer{l + 1}", v, step)
            w.add_hparams(hparams[m], {f"hparam/{k}": float(v) for k, v in metrics[m].items()}, run_name=".")
    return len(run_names)


def log_grid(lo: float, hi: float, per_decade: int) -> list[float]:
    """Log-spaced stds from lo to hi inclusive, ``per_decade`` points per decade."""
    n = int(round(math.log10(hi / lo) * per_decade)) + 1
    return [float(v) for v in np.logspace(math.log10(lo), math.log10(hi), n)]


@dataclass
class StudyRun:
    """One trained ensemble of a study with the keys (std/scheme, seed, ...) of its members."""

    shape: MLPShape
    record: EnsembleRecord
    member_keys: list[dict]


def _train_shared_draws(data, shape: MLPShape, seeds: list[int], groups: list[tuple[dict, list[float]]],
                        cfg: TrainConfig, progress: bool, desc: str) -> StudyRun:
    """Train one ensemble of every (group, seed) member: ``groups`` are (key, per-layer stds);
    member (group, seed) has weights draw[seed] * stds, the same standard-normal draw of ``seed``
    for every group, and its key is ``{**key, "seed": seed}``."""
    draws = standard_normal_draws(shape, seeds)
    keys, seed_index, layer_stds = [], [], []
    for key, per_layer in groups:
        for k, seed in enumerate(seeds):
            keys.append({**key, "seed": seed})
            seed_index.append(k)
            layer_stds.append(per_layer)
    model = Ensemble(shape, ensemble_weights(draws, seed_index, layer_stds))
    record = train_ensemble(model, data, cfg, progress, desc=f"{desc}: {len(keys)} members")
    return StudyRun(shape, record, keys)


def run_sweep(data, stds: list[float], seeds: list[int], depths: list[int], width: int, activation: str,
              cfg: TrainConfig, progress: bool = True) -> list[StudyRun]:
    """Train every (std, seed) member with the scheme ``normal`` (every weight matrix, the
    first layer and the output layer included, has the same std), one ensemble per depth.
    Seed s gives the same standard-normal draw to every std (only the scale differs)."""
    from hf_init.schemes import SchemeOptions

    runs = []
    for depth in depths:
        shape = MLPShape(data.n_features, width, depth, data.n_classes, activation)
        groups = [({"depth": depth, "std": std}, scheme_layer_stds("normal", shape, SchemeOptions(std=std)))
                  for std in stds]
        runs.append(_train_shared_draws(data, shape, seeds, groups, cfg, progress, f"depth {depth}"))
    return runs


COMPARE_SCHEMES = ("kaiming_normal", "xavier_normal")


def check_controlled_schemes(schemes: list[str]) -> None:
    """ValueError unless every scheme is registered and draws normal weights (a uniform scheme
    would need its own uniform draw, so it could not share the seed's normal draw)."""
    from hf_init.schemes import get_scheme

    for name in schemes:
        if get_scheme(name).distribution != "normal":
            raise ValueError(f"scheme {name!r} draws uniform weights; the controlled comparison rescales one "
                             "normal draw, so use normal schemes (e.g. kaiming_normal, xavier_normal)")


def run_compare(data, schemes: list[str], seeds: list[int], depth: int, width: int, activations: list[str],
                cfg: TrainConfig, progress: bool = True) -> list[StudyRun]:
    """For each activation, one ensemble of every (scheme, seed): member (scheme, seed) has
    weights draw[seed] * std_scheme(layer), the same standard-normal draw for every scheme,
    and every member sees the same minibatches. Kaiming uses the activation's gain
    (``SchemeOptions(nonlinearity=activation)``: sqrt(2) relu, 5/3 tanh, 1 linear), fan_in
    mode; Xavier gain 1. Only normal-distribution schemes: a uniform scheme would need its own
    uniform draw, so it could not share the normal draw (the comparison would not be controlled)."""
    from hf_init.schemes import SchemeOptions

    check_controlled_schemes(schemes)
    runs = []
    for activation in activations:
        shape = MLPShape(data.n_features, width, depth, data.n_classes, activation)
        groups = [({"activation": activation, "scheme": name},
                   scheme_layer_stds(name, shape, SchemeOptions(nonlinearity=activation))) for name in schemes]
        runs.append(_train_shared_draws(data, shape, seeds, groups, cfg, progress, activation))
    return runs
