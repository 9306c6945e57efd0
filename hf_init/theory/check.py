"""The theory check: variance-propagation predictions (:mod:`hf_init.theory.recursions`) next
to what networks built at initialization measure (:mod:`hf_init.theory.measurement`), as
records of :mod:`hf_init.core.records`; verdicts on them; the check's arguments and its job
(:func:`run_theory_check`, behind ``scripts/theory_check.py``).

Records (one per network, quantity and layer; ``step`` is null: everything is at init):

* keys ``network`` (``mlp-<activation>-<multiple>xcritical``,
  ``gpt2-<scheme>-scaled|unscaled`` or ``llama-<scheme>``), ``activation``, ``scheme`` (GPT-2,
  Llama), ``std_multiple`` (MLP), ``weight_std`` (MLP hidden layers; GPT-2 ``attn_proj``,
  Llama ``o``), ``quantity`` (``forward``/``gradient`` for an MLP; ``residual``, ``attn_add``,
  ``mlp_add`` for GPT-2 and Llama); ``layer`` (MLP 1..L; block, 0 = embeddings); ``role``
  ``linear`` for an MLP layer, null for a residual-stream quantity;
* statistics ``predicted``, ``measured``, ``measured_sem``, ``relative_error``; MLP
  ``tolerance``; GPT-2 and Llama ``predicted_uncorrelated``, ``relative_error_uncorrelated``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hf_init.core.cli import UsageError
from hf_init.core.outputs import check_output_dir, existing_outputs, kept_until_success
from hf_init.core.records import make_record, read_records, to_wide, write_records
from hf_init.theory import plots
from hf_init.theory.measurement import (
    ResidualProbe,
    byte_token_batch,
    digits_inputs,
    measure_mlp,
    measure_residual,
)
from hf_init.theory.recursions import (
    ACTIVATIONS,
    critical_std,
    gpt2_residual_kernel,
    gpt2_residual_variance,
    gpt2_scheme_stds,
    llama_residual_kernel,
    llama_residual_variance,
    llama_scheme_stds,
    propagate,
)


def read_check_rows(path) -> list[dict]:
    """The records of a theory-check file as one dict per (network, quantity, layer), every
    statistic a field (NaN where not recorded); read by the one reader of records."""
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


def gpt2_check_records(
    scheme: str, residual_scaling: bool | None, probe: ResidualProbe
) -> list[dict]:
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
    meas = measure_residual(scheme, probe, residual_gain=gain)
    name = f"gpt2-{scheme}-{'scaled' if scaled else 'unscaled'}"
    keys = dict(network=name, activation="gelu_tanh", scheme=scheme, weight_std=stds["attn_proj"])
    return _residual_records(pred, unc, meas, **keys)


def llama_check_records(scheme: str, probe: ResidualProbe) -> list[dict]:
    """:func:`gpt2_check_records` for a pre-RMSNorm Llama (``probe.model_type`` llama) built
    with ``scheme`` as the scheme defines it: ``theory.llama_residual_kernel`` (covariance
    across positions, RoPE in the logits) and ``theory.llama_residual_variance`` (uncorrelated
    tokens) against the measurement."""
    n_layer, n_embd, n_head = probe.n_layer, probe.n_embd, probe.n_head
    stds = llama_scheme_stds(
        scheme, n_layer, n_embd, n_head, probe.n_kv_head, vocab_size=probe.vocab_size
    )
    pred = llama_residual_kernel(stds, n_layer, n_embd, probe.input_ids.numpy(), n_head)
    unc = llama_residual_variance(stds, n_layer, n_embd, probe.seq_len)
    meas = measure_residual(scheme, probe)
    keys = dict(network=f"llama-{scheme}", activation="silu", scheme=scheme, weight_std=stds["o"])
    return _residual_records(pred, unc, meas, **keys)


def _residual_records(pred, unc, meas, **keys) -> list[dict]:
    """One record per quantity (residual, attn_add, mlp_add) and block of the two predictions
    (position covariance, uncorrelated tokens) next to the measurement, with ``keys``."""
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
                    None, i + first, None, stats, std_multiple=None, quantity=quantity, **keys
                )
            )
    return rows


def _carries_scaling(scheme, n_layer, n_embd, vocab_size, seq_len) -> bool:
    _, gain_off = gpt2_scheme_stds(
        scheme, n_layer, n_embd, vocab_size=vocab_size, n_positions=seq_len, residual_scaling=False
    )
    return gain_off != 1.0


RESIDUAL_QUANTITIES = ("residual", "attn_add", "mlp_add")


def _efold(slope: float) -> str:
    return f"{1 / abs(slope):.3g}" if abs(slope) > 1e-12 else "inf"


def verdict(rows: list[dict]) -> list[str]:
    """Short lines saying where theory and measurement agree and where/why they part. ``rows``:
    one dict per record with every statistic (:func:`read_check_rows`)."""
    mlp = [r for r in rows if r["network"].startswith("mlp-")]
    decoders = [r for r in rows if r["network"].startswith(("gpt2-", "llama-"))]
    lines = [
        _mlp_verdict(net, quantity, [r for r in mlp if r["network"] == net])
        for net in dict.fromkeys(r["network"] for r in mlp)
        for quantity in ("forward", "gradient")
    ]
    for net in dict.fromkeys(r["network"] for r in decoders):
        lines.append(_residual_verdict(net, [r for r in decoders if r["network"] == net]))
    return lines


def _mlp_verdict(net: str, quantity: str, rows: list[dict]) -> str:
    """One MLP quantity: layers within tolerance, the worst layer, the mean log-slopes."""
    rs = [r for r in rows if r["quantity"] == quantity]
    ok = sum(abs(r["relative_error"]) <= r["tolerance"] for r in rs)
    worst = max(rs, key=lambda r: abs(r["relative_error"]))
    p = np.array([r["predicted"] for r in rs])
    m = np.array([r["measured"] for r in rs])
    slope_p = np.mean(np.diff(np.log(p))) if len(p) > 1 else 0.0
    slope_m = np.mean(np.diff(np.log(m))) if len(m) > 1 else 0.0
    return (
        f"{net:<28} {quantity:<8} {ok}/{len(rs)} layers within finite-width tolerance; "
        f"worst {worst['relative_error']:+.1%} at layer {worst['layer']} "
        f"(tol {worst['tolerance']:.1%}); mean log-slope/layer predicted {slope_p:+.3f}, "
        f"measured {slope_m:+.3f} "
        f"(an e-fold every {_efold(slope_p)} / {_efold(slope_m)} layers)"
    )


def _worst(rows: list[dict], key: str = "relative_error") -> float:
    return max(abs(r[key]) for r in rows)


def _residual_verdict(net: str, rows: list[dict]) -> str:
    """One GPT-2 or Llama: residual growth measured and predicted both ways, the branches'
    errors."""
    res, att, mlp = ([r for r in rows if r["quantity"] == q] for q in RESIDUAL_QUANTITIES)

    def growth(key):
        return res[-1][key] / res[0][key]

    return (
        f"{net:<28} residual x{growth('measured'):.3g} over {len(res) - 1} blocks measured; "
        f"predicted x{growth('predicted'):.3g} (position covariance, worst |rel err| "
        f"{_worst(res):.0%}), x{growth('predicted_uncorrelated'):.3g} (uncorrelated tokens, "
        f"worst {_worst(res, 'relative_error_uncorrelated'):.0%}); attention branch block 1 / "
        f"last {att[0]['relative_error']:+.0%} / {att[-1]['relative_error']:+.0%} "
        f"(uncorrelated {att[0]['relative_error_uncorrelated']:+.0%} / "
        f"{att[-1]['relative_error_uncorrelated']:+.0%}); "
        f"MLP branch worst {_worst(mlp):.0%}"
    )


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
    "Llama (pre-RMSNorm, RoPE, SwiGLU, grouped-query attention): the same two theories with the "
    "embedding table alone at block 0 (no position table: a repeated token starts identical), "
    "RMSNorm for LayerNorm, the SwiGLU branch n_inner std_down^2 E[silu(g)^2] E[u^2] (gate and up "
    "independent), and RoPE in the logits only (the position-covariance theory's key spread "
    "carries RoPE's correlation factor); sharing key/value heads changes no second moment.",
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
    llama_schemes: list[str] = field(
        default_factory=lambda: [
            "gpt2",
            "kaiming_normal",
            "xavier_normal",
            "small_init",
            "deepnet",
        ],
        metadata={
            "help": "init schemes of the Llamas (pre-RMSNorm, RoPE, SwiGLU), built in the GPT-2s' "
            "shape and measured on their tokens and seeds (none: `llama_schemes: []` in a YAML)"
        },
    )
    llama_n_kv_head: int = field(
        default=2, metadata={"help": "the Llamas' key/value heads (must divide --gpt2_n_head)"}
    )

    def __post_init__(self):
        for a in self.activations:
            if a not in ACTIVATIONS:
                raise UsageError(f"unknown activation {a!r}; valid: {', '.join(ACTIVATIONS)}")
        valid = _scheme_names()
        for s in (*self.gpt2_schemes, *self.llama_schemes):
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
            "llama_n_kv_head",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.gpt2_n_embd % self.gpt2_n_head:
            raise UsageError("--gpt2_n_embd must be divisible by --gpt2_n_head")
        if self.llama_schemes and self.gpt2_n_head % self.llama_n_kv_head:
            raise UsageError("--gpt2_n_head must be divisible by --llama_n_kv_head")
        for name, values in (("std_multiples", self.std_multiples), ("k_sigma", [self.k_sigma])):
            bad = [v for v in values if not (math.isfinite(v) and v > 0)]
            if bad:
                raise UsageError(f"--{name} must be finite and > 0, got {bad[0]}")


# what the check writes into its output folder (with --overwrite these are kept until the new
# files are written)
OUTPUTS = {
    "theory_check.jsonl": "records: predicted vs measured per network, quantity and layer",
    "mlp_forward.png": "pre-activation variance per layer, theory line vs measured points",
    "mlp_gradient.png": "gradient variance per layer",
    "gpt2_residual.png": "residual-stream growth per scheme",
    "gpt2_branches.png": "measured/predicted of the attention and MLP branches",
    "llama_residual.png": "the Llamas' residual-stream growth per scheme",
    "llama_branches.png": "the Llamas' measured/predicted of the attention and MLP branches",
    "verdict.txt": "the verdict printed at the end",
}


def run_theory_check(args: TheoryCheckArguments) -> None:
    """Measure every MLP and GPT-2 of ``args`` at init next to the theory, write :data:`OUTPUTS`
    into ``args.output_dir`` (refused when it holds anything, unless ``args.overwrite``) and
    print the verdict."""
    out = Path(args.output_dir)
    check_output_dir(out, args.overwrite)  # any entry counts: refuse a folder that is not empty
    t0 = time.time()
    records = _check_records(args, t0)
    with kept_until_success(out, existing_outputs(out, tuple(OUTPUTS))):
        lines = _write_check(out, records, args)
    print("\n".join(lines))
    print(f"wrote {out} in {time.time() - t0:.0f}s")


def _check_records(args: TheoryCheckArguments, t0: float) -> list[dict]:
    """The records of every MLP (activation x std multiple) and GPT-2 (scheme x residual
    scaling on/off) of ``args``, with a progress line per activation and per scheme."""
    records = []
    x = digits_inputs(args.batch if args.batch < 1797 else None)
    seeds = list(range(args.seeds))
    for act in args.activations:
        for mult in args.std_multiples:
            records += mlp_check_records(act, mult, x, args.width, args.depth, seeds, args.k_sigma)
        print(f"mlp {act}: done ({time.time() - t0:.0f}s)", flush=True)
    probe = ResidualProbe(
        byte_token_batch(args.gpt2_batch, args.gpt2_seq_len),
        list(range(args.gpt2_seeds)),
        args.gpt2_n_layer,
        args.gpt2_n_embd,
        args.gpt2_n_head,
    )
    for scheme in args.gpt2_schemes:
        for scaling in (True, False):
            records += gpt2_check_records(scheme, scaling, probe)
        print(f"gpt2 {scheme}: done ({time.time() - t0:.0f}s)", flush=True)
    llama = dataclasses.replace(probe, model_type="llama", n_kv_head=args.llama_n_kv_head)
    for scheme in args.llama_schemes:
        records += llama_check_records(scheme, llama)
        print(f"llama {scheme}: done ({time.time() - t0:.0f}s)", flush=True)
    return records


def _write_check(out: Path, records: list[dict], args: TheoryCheckArguments) -> list[str]:
    """Write the records, the figures and verdict.txt into ``out``; the verdict's lines."""
    out.mkdir(parents=True, exist_ok=True)
    rows = read_check_rows(write_records(out / "theory_check.jsonl", records))
    if args.activations:
        plots.plot_mlp(rows, "forward", out / "mlp_forward.png")
        plots.plot_mlp(rows, "gradient", out / "mlp_gradient.png")
    for family, schemes in (("gpt2", args.gpt2_schemes), ("llama", args.llama_schemes)):
        if schemes:
            plots.plot_residual(rows, out / f"{family}_residual.png", family)
            plots.plot_branches(rows, out / f"{family}_branches.png", family)
    lines = verdict(rows) + VERDICT_NOTES
    (out / "verdict.txt").write_text("\n".join(lines) + "\n")
    return lines
