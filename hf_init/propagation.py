"""Measured signal propagation at initialization, the counterpart of :mod:`hf_init.theory`.

* :func:`measure_mlp`: a plain fully connected net (same conventions as ``theory``: z_1 = W_1 x
  + b_1, z_l = W_l phi(z_{l-1}) + b_l, no activation after z_L), built fresh for each seed,
  run on a batch of inputs. Per layer it records the pre-activation second moment
  mean(z_l^2) and the gradient second moment mean((dLoss/dz_l)^2), each a *population* mean
  over every entry (batch x units), in float64. The loss is Loss = sum_b <z_L(x_b), v_b> with
  v i.i.d. N(0, 1) drawn independently of the net, so dLoss/dz_L = v (theory's
  ``output_grad_var = 1``); gradients of the hidden layers come from autograd.
* :func:`measure_gpt2`: a GPT-2 built by :func:`hf_init.modeling.build_model`, in eval mode (no
  dropout). Forward hooks record, per block, the residual stream after the block and what the
  attention and MLP branches add, each the population second moment over batch x positions x
  coordinates, in float64. (In transformers 5.x ``output_hidden_states=True`` returns the
  embeddings and the block outputs, but its *last* entry has the final LayerNorm applied, so
  the hooks are used for every block instead.)
* Real inputs, offline: :func:`digits_inputs` (scikit-learn's 8x8 digits, standardized) and
  :func:`byte_token_batch` (UTF-8 bytes of the Python documentation shipped with the standard
  library, as token ids 0..255).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .theory import ACTIVATIONS, weight_stds

_TORCH_ACT = {
    "relu": F.relu,
    "linear": lambda z: z,
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact (erf) form
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
}


@dataclass(frozen=True)
class MLPMeasurement:
    """Per-seed measurements, shape (n_seeds, L): ``q[s, l-1]`` = mean over batch and units of
    z_l^2, ``grad_var[s, l-1]`` = mean of (dLoss/dz_l)^2. Means over seeds as properties."""

    q: np.ndarray
    grad_var: np.ndarray

    @property
    def q_mean(self) -> np.ndarray:
        return self.q.mean(axis=0)

    @property
    def grad_var_mean(self) -> np.ndarray:
        return self.grad_var.mean(axis=0)


def measure_mlp(
    widths: Sequence[int],
    activation: str,
    weight_std,
    inputs: torch.Tensor,
    seeds: Sequence[int] = (0, 1, 2, 3),
    bias_std: float = 0.0,
    scheme_options: dict | None = None,
) -> MLPMeasurement:
    """Measure a fresh MLP per seed on ``inputs`` (B, n_0). ``weight_std``: one std, one per
    layer, or a scheme name (weights then drawn by the scheme itself: normal or uniform)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    widths = tuple(int(n) for n in widths)
    if inputs.ndim != 2 or inputs.shape[1] != widths[0]:
        raise ValueError(f"inputs must be (batch, {widths[0]}), got {tuple(inputs.shape)}")
    if not seeds:
        raise ValueError("need at least one seed")
    stds = weight_stds(weight_std, widths, scheme_options)  # one resolution rule for theory and measurement
    scheme = None
    if isinstance(weight_std, str):
        from .schemes import SchemeOptions, WeightSpec, get_scheme

        scheme, opts = get_scheme(weight_std), SchemeOptions(**(scheme_options or {}))
    act = _TORCH_ACT[activation]
    x = inputs.to(torch.float64)
    qs, gs = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        weights, biases = [], []
        for l in range(len(widths) - 1):
            w = torch.empty(widths[l + 1], widths[l], dtype=torch.float64)
            if scheme is not None:
                scheme.init_(w, WeightSpec("linear", widths[l], widths[l + 1]), opts, generator=gen)
            else:
                w.normal_(0.0, float(stds[l]), generator=gen)
            b = torch.zeros(widths[l + 1], dtype=torch.float64)
            if bias_std > 0:
                b.normal_(0.0, bias_std, generator=gen)
            weights.append(w.requires_grad_())
            biases.append(b)
        v = torch.randn(x.shape[0], widths[-1], dtype=torch.float64, generator=gen)
        zs = []
        h = x
        for l, (w, b) in enumerate(zip(weights, biases)):
            z = h @ w.T + b
            zs.append(z)
            h = act(z)
        grads = torch.autograd.grad((zs[-1] * v).sum(), zs[:-1]) if len(zs) > 1 else ()
        qs.append([float((z.detach() ** 2).mean()) for z in zs])
        gs.append([float((g**2).mean()) for g in grads] + [float((v**2).mean())])
    return MLPMeasurement(np.array(qs), np.array(gs))


# --- GPT-2 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPT2Measurement:
    """Per-seed population second moments, (n_seeds, n_layer + 1) for ``residual`` (index 0 =
    embeddings) and (n_seeds, n_layer) for the branch outputs ``attn_add`` and ``mlp_add``."""

    residual: np.ndarray
    attn_add: np.ndarray
    mlp_add: np.ndarray


def _second_moment(t: torch.Tensor) -> float:
    return float((t.detach().to(torch.float64) ** 2).mean())


@torch.no_grad()
def measure_gpt2_once(model, input_ids: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """(residual, attn_add, mlp_add) second moments of one built model on ``input_ids`` (B, T)."""
    body = model.transformer if hasattr(model, "transformer") else model
    was_training = model.training
    model.eval()
    residual: list[float] = []
    attn: list[float] = []
    mlp: list[float] = []
    hooks = [body.drop.register_forward_hook(lambda m, i, o: residual.append(_second_moment(o)))]
    for block in body.h:
        hooks.append(block.attn.register_forward_hook(lambda m, i, o: attn.append(_second_moment(o[0]))))
        hooks.append(block.mlp.register_forward_hook(lambda m, i, o: mlp.append(_second_moment(o))))
        hooks.append(block.register_forward_hook(
            lambda m, i, o: residual.append(_second_moment(o[0] if isinstance(o, tuple) else o))))
    try:
        body(input_ids=input_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return residual, attn, mlp


@dataclass(frozen=True)
class GPT2Probe:
    """The GPT-2 shape to build and what to measure it on: token ids ``input_ids`` (B, T, the
    context length is T) and one model per seed in ``seeds``."""

    input_ids: torch.Tensor
    seeds: Sequence[int]
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int = 256

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def measure_gpt2(scheme: str, probe: GPT2Probe, residual_gain: float = 1.0, **scheme_kwargs) -> GPT2Measurement:
    """Build GPT-2 with ``scheme`` (``build_model``) in ``probe``'s shape once per seed (seeding
    torch's global RNG with ``torch.manual_seed(seed)``, as ``build_model`` draws from it),
    multiply the residual projections (attn/mlp ``c_proj``) by ``residual_gain`` (to toggle
    GPT-2's 1/sqrt(2 n_layer) scaling, see ``theory.gpt2_scheme_stds``) and measure on
    ``probe.input_ids``."""
    from .modeling import build_model

    rows = ([], [], [])
    for seed in probe.seeds:
        torch.manual_seed(int(seed))
        model = build_model(init_scheme=scheme, n_layer=probe.n_layer, n_embd=probe.n_embd, n_head=probe.n_head,
                            vocab_size=probe.vocab_size, n_positions=probe.seq_len, **scheme_kwargs)
        if residual_gain != 1.0:
            with torch.no_grad():
                for block in model.transformer.h:
                    block.attn.c_proj.weight.mul_(residual_gain)
                    block.mlp.c_proj.weight.mul_(residual_gain)
        for acc, values in zip(rows, measure_gpt2_once(model, probe.input_ids)):
            acc.append(values)
    return GPT2Measurement(*(np.array(r) for r in rows))


# --- real inputs, offline ---------------------------------------------------------------


def digits_inputs(n: int | None = None, seed: int = 0) -> torch.Tensor:
    """scikit-learn's 8x8 digits (1797 x 64, ships with the package: offline), each feature
    standardized to mean 0 and population variance 1 over the whole set (constant pixels stay
    0). ``n``: a random subset of that many images (fixed by ``seed``)."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    if n is not None:
        if not 1 <= n <= len(x):
            raise ValueError(f"n must be in 1..{len(x)}, got {n}")
        x = x[np.random.default_rng(seed).choice(len(x), size=n, replace=False)]
    return torch.from_numpy(x)


def byte_token_batch(batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(batch, seq_len) token ids: random windows of the UTF-8 bytes of the Python
    documentation that ships with the standard library (``pydoc_data.topics``), ids 0..255."""
    from pydoc_data.topics import topics

    data = np.frombuffer("\n".join(topics[k] for k in sorted(topics)).encode("utf-8"), dtype=np.uint8)
    if seq_len < 1 or batch < 1 or seq_len >= len(data):
        raise ValueError(f"batch and seq_len must be >= 1 and seq_len < {len(data)}")
    starts = np.random.default_rng(seed).integers(0, len(data) - seq_len, size=batch)
    return torch.from_numpy(np.stack([data[s : s + seq_len] for s in starts]).astype(np.int64))


# --- theory vs measurement tables --------------------------------------------------------

CHECK_FIELDS = ("network", "activation", "scheme", "std_multiple", "weight_std", "quantity", "layer",
                "predicted", "measured", "measured_sem", "relative_error", "tolerance", "within_tolerance",
                "predicted_uncorrelated", "relative_error_uncorrelated")


def _sem(per_seed: np.ndarray) -> np.ndarray:
    """Standard error of the mean over seeds (sample std, ddof=1, / sqrt(S)); nan for 1 seed."""
    s = per_seed.shape[0]
    return per_seed.std(axis=0, ddof=1) / np.sqrt(s) if s > 1 else np.full(per_seed.shape[1:], np.nan)


def mlp_check_rows(
    activation: str,
    std_multiple: float,
    inputs: torch.Tensor,
    width: int,
    depth: int,
    seeds: Sequence[int],
    k_sigma: float = 4.0,
) -> list[dict]:
    """Predicted vs measured forward and gradient variance of a depth x width MLP whose hidden
    layers have std = ``std_multiple`` x ``theory.critical_std(activation, width)`` and whose
    first layer has std ``std_multiple`` / sqrt(n_0) (so q_1 = multiple^2 x the input's mean
    square: the first layer has no activation before it).

    ``tolerance`` per layer: ``k_sigma`` x the finite-width standard deviation of the seed
    mean, sqrt(relvar / S) from ``theory.propagate`` (an upper bound for a batch mean)."""
    from .theory import critical_std, propagate

    n0 = int(inputs.shape[1])
    widths = [n0] + [int(width)] * int(depth)
    hidden = std_multiple * critical_std(activation, width)
    stds = [std_multiple / np.sqrt(n0)] + [hidden] * (depth - 1)
    pred = propagate(widths, activation, stds, input_second_moment=(inputs.double() ** 2).mean(dim=1).numpy())
    meas = measure_mlp(widths, activation, stds, inputs, seeds=seeds)
    rows = []
    for quantity, p, m, relvar in (("forward", pred.q, meas.q, pred.q_relvar),
                                   ("gradient", pred.grad_var, meas.grad_var, pred.grad_relvar)):
        tol = k_sigma * np.sqrt(relvar / len(seeds))
        sem = _sem(m)
        for l in range(depth):
            rel = m[:, l].mean() / p[l] - 1.0
            rows.append({
                "network": f"mlp-{activation}-{std_multiple:g}xcritical", "activation": activation, "scheme": "",
                "std_multiple": std_multiple, "weight_std": hidden, "quantity": quantity, "layer": l + 1,
                "predicted": float(p[l]), "measured": float(m[:, l].mean()), "measured_sem": float(sem[l]),
                "relative_error": float(rel), "tolerance": float(tol[l]), "within_tolerance": bool(abs(rel) <= tol[l]),
                "predicted_uncorrelated": "", "relative_error_uncorrelated": "",
            })
    return rows


def gpt2_check_rows(scheme: str, residual_scaling: bool | None, probe: GPT2Probe) -> list[dict]:
    """Predicted vs measured residual-stream second moment per block and what each block's
    attention and MLP add, for ``scheme`` with GPT-2's residual scaling as the scheme defines it
    (``None``) or forced on/off. ``predicted``: ``theory.gpt2_residual_kernel`` on the same
    token ids (covariance across positions); ``predicted_uncorrelated``:
    ``theory.gpt2_residual_variance`` (uncorrelated tokens). No tolerance is derived for GPT-2
    (the approximations are not controlled): the relative errors are reported."""
    from .theory import gpt2_residual_kernel, gpt2_residual_variance, gpt2_scheme_stds

    n_layer, n_embd, seq_len = probe.n_layer, probe.n_embd, probe.seq_len
    stds, gain = gpt2_scheme_stds(scheme, n_layer, n_embd, vocab_size=probe.vocab_size, n_positions=seq_len,
                                  residual_scaling=residual_scaling)
    carries = _carries_scaling(scheme, n_layer, n_embd, probe.vocab_size, seq_len)
    scaled = carries if residual_scaling is None else residual_scaling
    pred = gpt2_residual_kernel(stds, n_layer, n_embd, probe.input_ids.numpy())
    unc = gpt2_residual_variance(stds, n_layer, n_embd, seq_len)
    meas = measure_gpt2(scheme, probe, residual_gain=gain)
    name = f"gpt2-{scheme}-{'scaled' if scaled else 'unscaled'}"
    rows = []
    for quantity, p, pu, m, first in (("residual", pred.residual, unc.residual, meas.residual, 0),
                                      ("attn_add", pred.attn_add, unc.attn_add, meas.attn_add, 1),
                                      ("mlp_add", pred.mlp_add, unc.mlp_add, meas.mlp_add, 1)):
        sem = _sem(m)
        for i in range(len(p)):
            rows.append({
                "network": name, "activation": "gelu_tanh", "scheme": scheme, "std_multiple": "",
                "weight_std": stds["attn_out"], "quantity": quantity, "layer": i + first,
                "predicted": float(p[i]), "measured": float(m[:, i].mean()), "measured_sem": float(sem[i]),
                "relative_error": float(m[:, i].mean() / p[i] - 1.0), "tolerance": "", "within_tolerance": "",
                "predicted_uncorrelated": float(pu[i]),
                "relative_error_uncorrelated": float(m[:, i].mean() / pu[i] - 1.0),
            })
    return rows


def _carries_scaling(scheme, n_layer, n_embd, vocab_size, seq_len) -> bool:
    from .theory import gpt2_scheme_stds

    _, gain_off = gpt2_scheme_stds(scheme, n_layer, n_embd, vocab_size=vocab_size, n_positions=seq_len,
                                   residual_scaling=False)
    return gain_off != 1.0


def _efold(slope: float) -> str:
    return f"{1 / abs(slope):.3g}" if abs(slope) > 1e-12 else "inf"


def verdict(rows: list[dict]) -> list[str]:
    """Short lines saying where theory and measurement agree and where/why they part."""
    lines = []
    mlp = [r for r in rows if r["network"].startswith("mlp-")]
    for net in dict.fromkeys(r["network"] for r in mlp):
        for quantity in ("forward", "gradient"):
            rs = [r for r in mlp if r["network"] == net and r["quantity"] == quantity]
            ok = sum(r["within_tolerance"] for r in rs)
            worst = max(rs, key=lambda r: abs(r["relative_error"]))
            p = np.array([r["predicted"] for r in rs])
            m = np.array([r["measured"] for r in rs])
            slope_p = np.mean(np.diff(np.log(p))) if len(p) > 1 else 0.0
            slope_m = np.mean(np.diff(np.log(m))) if len(m) > 1 else 0.0
            lines.append(f"{net:<28} {quantity:<8} {ok}/{len(rs)} layers within finite-width tolerance; "
                         f"worst {worst['relative_error']:+.1%} at layer {worst['layer']} "
                         f"(tol {worst['tolerance']:.1%}); mean log-slope/layer predicted {slope_p:+.3f}, "
                         f"measured {slope_m:+.3f} (an e-fold every {_efold(slope_p)} / {_efold(slope_m)} layers)")
    gpt = [r for r in rows if r["network"].startswith("gpt2-")]
    for net in dict.fromkeys(r["network"] for r in gpt):
        sel = {q: [r for r in gpt if r["network"] == net and r["quantity"] == q] for q in ("residual", "attn_add", "mlp_add")}
        res, att = sel["residual"], sel["attn_add"]

        def worst(rs, key="relative_error"):
            return max(abs(r[key]) for r in rs)

        growth = lambda key: res[-1][key] / res[0][key]
        lines.append(
            f"{net:<28} residual x{growth('measured'):.3g} over {len(res) - 1} blocks measured; predicted "
            f"x{growth('predicted'):.3g} (position covariance, worst |rel err| {worst(res):.0%}), "
            f"x{growth('predicted_uncorrelated'):.3g} (uncorrelated tokens, worst "
            f"{worst(res, 'relative_error_uncorrelated'):.0%}); attention branch block 1 / last "
            f"{att[0]['relative_error']:+.0%} / {att[-1]['relative_error']:+.0%} "
            f"(uncorrelated {att[0]['relative_error_uncorrelated']:+.0%} / {att[-1]['relative_error_uncorrelated']:+.0%}); "
            f"MLP branch worst {worst(sel['mlp_add']):.0%}")
    return lines


VERDICT_NOTES = [
    "How to read this. MLP: the tolerance is k finite-width standard deviations of the seed mean "
    "(theory.propagate's 1/n fluctuation estimate, an upper bound for a batch mean); for relu and "
    "linear the mean-field mean is exact at any width, so misses there are fluctuations; for "
    "tanh/gelu a finite-width bias of order 1/n adds to them.",
    "GPT-2: the embedding row (block 0) and the MLP branch test the LayerNorm step and the "
    "gelu_tanh expectation. 'uncorrelated tokens' (the simple theory) treats the values averaged "
    "by attention as independent across positions; real tokens repeat, and after one attention "
    "layer every position holds an average of its prefix, so positions are correlated and the "
    "attention branch is underestimated more and more with depth. 'position covariance' "
    "propagates the T x T covariance across positions of the actual token ids and removes most "
    "of that gap. Both model softmax weights with i.i.d. Gaussian logits: with large logits "
    "(kaiming_normal, logit variance ~4) the concentration estimate is off in block 1.",
]


# --- arguments of scripts/theory_check.py ---------------------------------------------------


# what scripts/theory_check.py writes: with --overwrite these are kept until the new files are written
THEORY_OUTPUTS = ("theory_check.csv", "mlp_forward.png", "mlp_gradient.png", "gpt2_residual.png",
                  "gpt2_branches.png", "verdict.txt")


def check_theory_check_args(args) -> "Path":
    """Validate the parsed arguments of ``scripts/theory_check.py`` before anything is built or
    written; return the output folder. Raises :class:`hf_init.cli.UsageError` (one line)."""
    import math
    from pathlib import Path

    from .cli import UsageError
    from .outputs import check_output_dir
    from .schemes import SCHEMES

    for a in args.activations:
        if a not in ACTIVATIONS:
            raise UsageError(f"unknown activation {a!r}; valid: {', '.join(ACTIVATIONS)}")
    for s in args.gpt2_schemes:
        if s not in SCHEMES or SCHEMES[s].needs_std:
            raise UsageError(f"unknown or std-needing scheme {s!r}; valid: "
                             f"{', '.join(n for n, sc in SCHEMES.items() if not sc.needs_std)}")
    for name in ("width", "depth", "batch", "seeds", "gpt2_n_layer", "gpt2_n_embd", "gpt2_n_head",
                 "gpt2_seq_len", "gpt2_batch", "gpt2_seeds"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.gpt2_n_embd % args.gpt2_n_head:
        raise UsageError("--gpt2_n_embd must be divisible by --gpt2_n_head")
    for name, values in (("std_multiples", args.std_multiples), ("k_sigma", [args.k_sigma])):
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise UsageError(f"--{name} must be finite and > 0, got {bad[0]}")
    check_output_dir(args.output_dir, args.overwrite)  # any entry counts: refuse a folder that is not empty
    return Path(args.output_dir)
