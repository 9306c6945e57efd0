"""The theory check: variance-propagation predictions (:mod:`hf_init.theory.recursions`) next to what
networks built at initialization measure (:mod:`hf_init.theory.measurement`), as records of
:mod:`hf_init.core.records`; verdicts on them; and the check's arguments.

Records (one per network, quantity and layer; ``step`` is null: everything is at init):

* keys ``network`` (``mlp-<activation>-<multiple>xcritical`` or ``gpt2-<scheme>-scaled|unscaled``),
  ``activation``, ``scheme`` (GPT-2), ``std_multiple`` (MLP), ``weight_std`` (MLP hidden layers;
  GPT-2 ``attn_proj``), ``quantity`` (``forward``/``gradient`` for an MLP; ``residual``,
  ``attn_add``, ``mlp_add`` for GPT-2); ``layer`` (MLP 1..L; GPT-2 block, 0 = embeddings);
  ``role`` ``linear`` for an MLP layer, null for a GPT-2 residual-stream quantity;
* statistics ``predicted``, ``measured``, ``measured_sem``, ``relative_error``; MLP
  ``tolerance``; GPT-2 ``predicted_uncorrelated``, ``relative_error_uncorrelated``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hf_init.core.cli import UsageError
from hf_init.core.records import make_record, read_records, to_wide
from hf_init.theory.measurement import GPT2Probe, measure_gpt2, measure_mlp
from hf_init.theory.recursions import (
    ACTIVATIONS,
    critical_std,
    gpt2_residual_kernel,
    gpt2_residual_variance,
    gpt2_scheme_stds,
    propagate,
)


def read_check_rows(path) -> list[dict]:
    """The records of a theory-check file as one dict per (network, quantity, layer), every
    statistic a field (NaN where not recorded), through :func:`hf_init.core.records.read_records`."""
    return to_wide(read_records(path)).to_dict("records")


def _sem(per_seed: np.ndarray) -> np.ndarray:
    """Standard error of the mean over seeds (sample std, ddof=1, / sqrt(S)); nan for 1 seed."""
    s = per_seed.shape[0]
    return (
        per_seed.std(axis=0, ddof=1) / np.sqrt(s) if s > 1 else np.full(per_seed.shape[1:], np.nan)
    )


def mlp_check_records(
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
    n0 = int(inputs.shape[1])
    widths = [n0] + [int(width)] * int(depth)
    hidden = std_multiple * critical_std(activation, width)
    stds = [std_multiple / np.sqrt(n0)] + [hidden] * (depth - 1)
    pred = propagate(
        widths, activation, stds, input_second_moment=(inputs.double() ** 2).mean(dim=1).numpy()
    )
    meas = measure_mlp(widths, activation, stds, inputs, seeds=seeds)
    rows = []
    for quantity, p, m, relvar in (
        ("forward", pred.q, meas.q, pred.q_relvar),
        ("gradient", pred.grad_var, meas.grad_var, pred.grad_relvar),
    ):
        tol = k_sigma * np.sqrt(relvar / len(seeds))
        sem = _sem(m)
        for l in range(depth):
            stats = {
                "predicted": float(p[l]),
                "measured": float(m[:, l].mean()),
                "measured_sem": float(sem[l]),
                "relative_error": float(m[:, l].mean() / p[l] - 1.0),
                "tolerance": float(tol[l]),
            }
            rows.append(
                make_record(
                    None,
                    l + 1,
                    "linear",
                    stats,
                    network=f"mlp-{activation}-{std_multiple:g}xcritical",
                    activation=activation,
                    scheme=None,
                    std_multiple=std_multiple,
                    weight_std=hidden,
                    quantity=quantity,
                )
            )
    return rows


def gpt2_check_records(scheme: str, residual_scaling: bool | None, probe: GPT2Probe) -> list[dict]:
    """Predicted vs measured residual-stream second moment per block and what each block's
    attention and MLP add, for ``scheme`` with GPT-2's residual scaling as the scheme defines it
    (``None``) or forced on/off. ``predicted``: ``theory.gpt2_residual_kernel`` on the same
    token ids (covariance across positions); ``predicted_uncorrelated``:
    ``theory.gpt2_residual_variance`` (uncorrelated tokens). No tolerance is derived for GPT-2
    (the approximations are not controlled): the relative errors are reported."""
    n_layer, n_embd, seq_len = probe.n_layer, probe.n_embd, probe.seq_len
    stds, gain = gpt2_scheme_stds(
        scheme,
        n_layer,
        n_embd,
        vocab_size=probe.vocab_size,
        n_positions=seq_len,
        residual_scaling=residual_scaling,
    )
    carries = _carries_scaling(scheme, n_layer, n_embd, probe.vocab_size, seq_len)
    scaled = carries if residual_scaling is None else residual_scaling
    pred = gpt2_residual_kernel(stds, n_layer, n_embd, probe.input_ids.numpy())
    unc = gpt2_residual_variance(stds, n_layer, n_embd, seq_len)
    meas = measure_gpt2(scheme, probe, residual_gain=gain)
    name = f"gpt2-{scheme}-{'scaled' if scaled else 'unscaled'}"
    rows = []
    for quantity, p, pu, m, first in (
        ("residual", pred.residual, unc.residual, meas.residual, 0),
        ("attn_add", pred.attn_add, unc.attn_add, meas.attn_add, 1),
        ("mlp_add", pred.mlp_add, unc.mlp_add, meas.mlp_add, 1),
    ):
        sem = _sem(m)
        for i in range(len(p)):
            stats = {
                "predicted": float(p[i]),
                "measured": float(m[:, i].mean()),
                "measured_sem": float(sem[i]),
                "relative_error": float(m[:, i].mean() / p[i] - 1.0),
                "predicted_uncorrelated": float(pu[i]),
                "relative_error_uncorrelated": float(m[:, i].mean() / pu[i] - 1.0),
            }
            rows.append(
                make_record(
                    None,
                    i + first,
                    None,
                    stats,
                    network=name,
                    activation="gelu_tanh",
                    scheme=scheme,
                    std_multiple=None,
                    weight_std=stds["attn_proj"],
                    quantity=quantity,
                )
            )
    return rows


def _carries_scaling(scheme, n_layer, n_embd, vocab_size, seq_len) -> bool:
    _, gain_off = gpt2_scheme_stds(
        scheme, n_layer, n_embd, vocab_size=vocab_size, n_positions=seq_len, residual_scaling=False
    )
    return gain_off != 1.0


def _efold(slope: float) -> str:
    return f"{1 / abs(slope):.3g}" if abs(slope) > 1e-12 else "inf"


def verdict(rows: list[dict]) -> list[str]:
    """Short lines saying where theory and measurement agree and where/why they part. ``rows``:
    one dict per record with every statistic (:func:`read_check_rows`)."""
    lines = []
    mlp = [r for r in rows if r["network"].startswith("mlp-")]
    for net in dict.fromkeys(r["network"] for r in mlp):
        for quantity in ("forward", "gradient"):
            rs = [r for r in mlp if r["network"] == net and r["quantity"] == quantity]
            ok = sum(abs(r["relative_error"]) <= r["tolerance"] for r in rs)
            worst = max(rs, key=lambda r: abs(r["relative_error"]))
            p = np.array([r["predicted"] for r in rs])
            m = np.array([r["measured"] for r in rs])
            slope_p = np.mean(np.diff(np.log(p))) if len(p) > 1 else 0.0
            slope_m = np.mean(np.diff(np.log(m))) if len(m) > 1 else 0.0
            lines.append(
                f"{net:<28} {quantity:<8} {ok}/{len(rs)} layers within finite-width tolerance; "
                f"worst {worst['relative_error']:+.1%} at layer {worst['layer']} "
                f"(tol {worst['tolerance']:.1%}); mean log-slope/layer predicted {slope_p:+.3f}, "
                f"measured {slope_m:+.3f} (an e-fold every {_efold(slope_p)} / {_efold(slope_m)} layers)"
            )
    gpt = [r for r in rows if r["network"].startswith("gpt2-")]
    for net in dict.fromkeys(r["network"] for r in gpt):
        sel = {
            q: [r for r in gpt if r["network"] == net and r["quantity"] == q]
            for q in ("residual", "attn_add", "mlp_add")
        }
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
            f"MLP branch worst {worst(sel['mlp_add']):.0%}"
        )
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


def _scheme_names(needs_std: bool = False) -> list[str]:
    from hf_init.core.schemes import SCHEMES

    # the GPT-2 theory takes one std per weight kind: per-layer schemes are left out
    return [n for n, s in SCHEMES.items() if s.needs_std == needs_std and not s.per_layer]


@dataclass
class TheoryCheckArguments:
    """What ``scripts/theory_check.py`` builds and measures; checked when made (one line on a
    bad value). Lists are space-separated on the command line."""

    output_dir: str = field(
        default="runs/theory_check", metadata={"help": "folder the check writes"}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace the files of an existing output folder"}
    )
    activations: list[str] = field(
        default_factory=lambda: ["relu", "tanh", "gelu", "linear"],
        metadata={"help": f"MLP activations, of: {', '.join(ACTIVATIONS)}"},
    )
    std_multiples: list[float] = field(
        default_factory=lambda: [0.7, 1.0, 1.4],
        metadata={"help": "hidden-layer std as multiples of theory.critical_std"},
    )
    width: int = field(default=1024, metadata={"help": "MLP hidden width"})
    depth: int = field(default=10, metadata={"help": "MLP layers"})
    batch: int = field(default=256, metadata={"help": "digits images per forward pass"})
    seeds: int = field(default=4, metadata={"help": "MLPs built per setting"})
    k_sigma: float = field(
        default=4.0, metadata={"help": "tolerance in finite-width standard deviations"}
    )
    gpt2_schemes: list[str] = field(
        default_factory=lambda: [
            "gpt2",
            "kaiming_normal",
            "xavier_normal",
            "small_init",
            "deepnet",
        ],
        metadata={"help": "init schemes of the GPT-2s (any scheme not needing init_std)"},
    )
    gpt2_n_layer: int = 12
    gpt2_n_embd: int = 128
    gpt2_n_head: int = 4
    gpt2_seq_len: int = 64
    gpt2_batch: int = field(default=8, metadata={"help": "byte-token sequences per forward pass"})
    gpt2_seeds: int = field(default=2, metadata={"help": "GPT-2s built per setting"})

    def __post_init__(self):
        for a in self.activations:
            if a not in ACTIVATIONS:
                raise UsageError(f"unknown activation {a!r}; valid: {', '.join(ACTIVATIONS)}")
        valid = _scheme_names()
        for s in self.gpt2_schemes:
            if s not in valid:
                raise UsageError(
                    f"unknown, std-needing or per-layer scheme {s!r}; valid: {', '.join(valid)}"
                )
        for name in (
            "width",
            "depth",
            "batch",
            "seeds",
            "gpt2_n_layer",
            "gpt2_n_embd",
            "gpt2_n_head",
            "gpt2_seq_len",
            "gpt2_batch",
            "gpt2_seeds",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.gpt2_n_embd % self.gpt2_n_head:
            raise UsageError("--gpt2_n_embd must be divisible by --gpt2_n_head")
        for name, values in (("std_multiples", self.std_multiples), ("k_sigma", [self.k_sigma])):
            bad = [v for v in values if not (math.isfinite(v) and v > 0)]
            if bad:
                raise UsageError(f"--{name} must be finite and > 0, got {bad[0]}")
