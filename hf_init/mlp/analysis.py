"""Regimes, stability bands and paired statistics of the MLP studies.

The regime rule
---------------
Each sweep member is classified from what was measured on it (:func:`classify_regime`):

1. ``diverged``: a non-finite loss or gradient appeared during training
   (``diverged_step`` >= 0 is the first such step; the member was frozen from then on).
2. ``stable``: the run stayed finite, it *learned* (final full-train-set loss below
   ``learned_fraction`` x ln(n_classes), the chance level; default 0.9 x ln C) and it did not
   start exploded (loss at init below ``exploded_loss_factor`` x ln C, default 10 x ln C).
3. ``exploding``: otherwise, when the signal grew through depth at init (per-layer gain > 1,
   see below), or the loss at init was above ``exploded_loss_factor`` x ln C, or the
   first-layer weight-gradient std at init (population std of dLoss/dW_1 over its entries,
   probe batch) exceeded ``exploded_grad_std`` (default 1e3).
4. ``vanishing``: otherwise: finite, did not learn, and the signal shrank through depth at
   init (per-layer gain <= 1, with gradients not exploding).

Signal gain at init: from the population variance of the pre-activations z_l over (probe
examples, units) at step 0, ``gain_per_layer = (var(z_out) / var(z_1)) ** (1 / depth)``, the
geometric-mean factor by which each of the ``depth`` width-fan-in layers multiplies the signal
variance (z_1: first hidden layer; z_out: the logits). For ReLU with weight std s and width n,
theory gives n s^2 / 2 (1 at the critical std sqrt(2 / n)).

Note what the rule does *not* do: a run whose signal vanished at init but that still learned
(Adam rescales tiny gradients) is ``stable``: the band is a statement about training outcome
under the stated optimizer, learning rate and budget, and the gain column in ``results.csv``
keeps the init diagnosis visible.

The stability band (:func:`stable_band`): a std is stable when more than half of its seeds
are ``stable``; the band is the longest run of consecutive stable stds on the sweep grid
(ties: the lower one), reported as [lo, hi]; isolated stable stds elsewhere are listed too.

Paired statistics (:func:`paired_comparison`): per seed both schemes are measured on the same
draw and minibatches, so differences are paired. Means come with a 95% interval from the
t-distribution over seeds (sample std, ddof=1, ``scipy.stats.t``); the paired test is the
two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, exact for small n). With n
seeds and no ties the smallest two-sided p it can give is 2 / 2^n: 0.0625 with 5 seeds, so
5 seeds can never reach p < 0.05.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

REGIMES = ("vanishing", "stable", "exploding", "diverged")


@dataclass(frozen=True)
class RegimeThresholds:
    learned_fraction: float = 0.9  # "learned": final train loss < this x ln(C)
    exploded_loss_factor: float = 10.0  # "exploded at init": initial loss > this x ln(C)
    exploded_grad_std: float = 1e3  # first-layer weight-gradient std at init above this: exploding


def gain_per_layer(preact_var_init: np.ndarray) -> float:
    """(var(z_out) / var(z_1)) ** (1 / (L - 1)) from the per-layer pre-activation variances at
    init (L = depth + 1 layers, first hidden to logits). NaN/inf when not finite or zero."""
    v = np.asarray(preact_var_init, dtype=np.float64)
    if v.size < 2 or not np.all(np.isfinite(v)) or v[0] <= 0 or v[-1] <= 0:
        return float("inf") if np.any(np.isinf(v)) else float("nan")
    return float(np.exp((np.log(v[-1]) - np.log(v[0])) / (v.size - 1)))


def classify_regime(
    *,
    diverged_step: int,
    initial_loss: float,
    final_loss: float,
    gain: float,
    grad_std_init: float,
    n_classes: int,
    thresholds: RegimeThresholds = RegimeThresholds(),
) -> str:
    """The regime of one member by the rule in the module docstring."""
    chance = math.log(n_classes)
    if diverged_step >= 0 or not math.isfinite(final_loss):
        return "diverged"
    exploded_init = (
        not math.isfinite(initial_loss)
    ) or initial_loss > thresholds.exploded_loss_factor * chance
    if final_loss < thresholds.learned_fraction * chance and not exploded_init:
        return "stable"
    big_grad = (not math.isfinite(grad_std_init)) or grad_std_init > thresholds.exploded_grad_std
    if exploded_init or big_grad or (math.isfinite(gain) and gain > 1.0) or gain == float("inf"):
        return "exploding"
    return "vanishing"


def stable_band(stds, regimes_per_std) -> dict:
    """``stds`` sorted ascending; ``regimes_per_std[i]``: the regimes of std i's seeds.

    Returns {"lo", "hi", "stable_stds", "fraction_stable"}: lo/hi None when nothing is stable."""
    stds = [float(s) for s in stds]
    if any(b <= a for a, b in zip(stds, stds[1:])):
        raise ValueError("stds must be strictly increasing")
    frac = [
        float(np.mean([r == "stable" for r in regs])) if len(regs) else 0.0
        for regs in regimes_per_std
    ]
    ok = [f > 0.5 for f in frac]
    best, cur = (0, -1), None
    for i, good in enumerate(ok):
        if good:
            cur = i if cur is None else cur
            if i - cur > best[1] - best[0]:
                best = (cur, i)
        else:
            cur = None
    has = any(ok)
    return {
        "lo": stds[best[0]] if has else None,
        "hi": stds[best[1]] if has else None,
        "stable_stds": [s for s, good in zip(stds, ok) if good],
        "fraction_stable": dict(zip([f"{s:.3g}" for s in stds], frac)),
    }


@dataclass(frozen=True)
class MeanCI:
    """Mean over seeds with a 95% t-interval (sample std, ddof=1). ``n`` counts finite values."""

    mean: float
    lo: float
    hi: float
    n: int


def mean_ci(values, confidence: float = 0.95) -> MeanCI:
    """Mean and the two-sided t-interval mean +- t_{(1+c)/2, n-1} * s / sqrt(n) over the finite
    values (``s``: sample std). With one value the interval is (nan, nan)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    m = float(x.mean())
    if n < 2:
        return MeanCI(m, float("nan"), float("nan"), 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return MeanCI(m, m - half, m + half, n)


def min_wilcoxon_p(n: int) -> float:
    """Smallest two-sided exact Wilcoxon signed-rank p-value with n pairs (no ties): 2 / 2^n."""
    return min(1.0, 2.0 / 2**n)


def paired_comparison(a, b, lower_is_better: bool = True) -> dict:
    """Paired comparison of per-seed values ``a`` and ``b`` (same seeds, same order).

    Returns mean/CI of a, b and of the difference a - b, and the two-sided Wilcoxon
    signed-rank p-value of the differences (pairs with a non-finite value are dropped;
    p is NaN with fewer than 2 pairs or when every difference is 0), plus the smallest p
    the test can reach with this many pairs, and in how many pairs ``a`` is strictly better
    (lower, or higher with ``lower_is_better`` False; a tie is no win)."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    if d.size >= 2 and np.any(d != 0):
        p = float(stats.wilcoxon(a[keep], b[keep], alternative="two-sided").pvalue)
    else:
        p = float("nan")
    return {
        "a": asdict(mean_ci(a)),
        "b": asdict(mean_ci(b)),
        "diff": asdict(mean_ci(d)),
        "n_pairs": int(d.size),
        "a_better_count": int(np.sum(d < 0 if lower_is_better else d > 0)),
        "wilcoxon_p": p,
        "min_possible_p": min_wilcoxon_p(int(d.size)) if d.size else float("nan"),
    }


def steps_to_target(steps: np.ndarray, losses: np.ndarray, target: float) -> float:
    """First recorded step whose loss is <= target; inf if never reached (a censored value)."""
    hit = np.nonzero(np.asarray(losses) <= target)[0]
    return float(steps[hit[0]]) if hit.size else float("inf")


def curve_area(steps: np.ndarray, losses: np.ndarray) -> float:
    """Area under the loss curve by the trapezoid rule over the recorded steps, divided by the
    step span (a mean loss over training; lower = faster/better). NaN if any loss is non-finite."""
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if not np.all(np.isfinite(losses)) or steps[-1] == steps[0]:
        return float("nan")
    return float(np.trapezoid(losses, steps) / (steps[-1] - steps[0]))


# --- study tables --------------------------------------------------------------------------


def sweep_rows(
    run, n_classes: int, thresholds: RegimeThresholds = RegimeThresholds()
) -> list[dict]:
    """One row per sweep member of a :class:`~hf_init.mlp.study.StudyRun`: measurements and
    regime."""
    rec = run.record
    rows = []
    for m, keys in enumerate(run.member_keys):
        gain = gain_per_layer(rec.preact_var[0, m])
        grad_std = float(np.sqrt(rec.grad_weight_var[0, m, 0]))
        initial, final = float(rec.train_loss[0, m]), float(rec.train_loss[-1, m])
        regime = classify_regime(
            diverged_step=int(rec.diverged_step[m]),
            initial_loss=initial,
            final_loss=final,
            gain=gain,
            grad_std_init=grad_std,
            n_classes=n_classes,
            thresholds=thresholds,
        )
        rows.append(
            {
                **keys,
                "initial_train_loss": initial,
                "final_train_loss": final,
                "final_test_loss": float(rec.test_loss[-1, m]),
                "final_train_acc": float(rec.train_acc[-1, m]),
                "final_test_acc": float(rec.test_acc[-1, m]),
                "gain_per_layer_init": gain,
                "grad_std_layer1_init": grad_std,
                "regime": regime,
                "diverged_step": int(rec.diverged_step[m]),
            }
        )
    return rows


def sweep_summary(rows: list[dict]) -> dict:
    """Per depth: the stable band and the regime counts per std (from :func:`sweep_rows`)."""
    out = {}
    for depth in sorted({r["depth"] for r in rows}):
        sub = [r for r in rows if r["depth"] == depth]
        stds = sorted({r["std"] for r in sub})
        regs = [[r["regime"] for r in sub if r["std"] == s] for s in stds]
        band = stable_band(stds, regs)
        band["regime_counts"] = {
            f"{s:.3g}": {g: rr.count(g) for g in REGIMES if rr.count(g)}
            for s, rr in zip(stds, regs)
        }
        band["majority_regime"] = {
            f"{s:.3g}": max(REGIMES, key=rr.count) for s, rr in zip(stds, regs)
        }
        out[str(depth)] = band
    return out


def compare_rows(run, target_loss: float) -> list[dict]:
    """One row per (scheme, seed) member of a comparison run. ``steps_to_target`` is the first
    record step whose full-train loss <= target_loss; a member that never gets there is
    censored at (last step + 1) and flagged ``reached_target`` False."""
    rec = run.record
    last = int(rec.record_steps[-1])
    rows = []
    for m, keys in enumerate(run.member_keys):
        s = steps_to_target(rec.record_steps, rec.train_loss[:, m], target_loss)
        rows.append(
            {
                **keys,
                "steps_to_target": s if math.isfinite(s) else last + 1,
                "reached_target": bool(math.isfinite(s)),
                "loss_auc": curve_area(rec.record_steps, rec.train_loss[:, m]),
                "initial_train_loss": float(rec.train_loss[0, m]),
                "final_train_loss": float(rec.train_loss[-1, m]),
                "final_test_loss": float(rec.test_loss[-1, m]),
                "final_test_acc": float(rec.test_acc[-1, m]),
                "diverged_step": int(rec.diverged_step[m]),
            }
        )
    return rows


COMPARE_METRICS = {  # metric -> True when lower is better
    "steps_to_target": True,
    "loss_auc": True,
    "final_test_loss": True,
    "final_test_acc": False,
}


def compare_summary(rows: list[dict], a: str, b: str, alpha: float = 0.05) -> dict:
    """Paired comparison of scheme ``a`` vs ``b`` per activation and metric, with a verdict on
    "``a`` converges faster than ``b``" from steps_to_target and loss_auc: "supported" (a better
    in the mean on both, Wilcoxon p < alpha on both), "contradicted" (b better on both, p <
    alpha on both), "not supported: a ahead in the mean, not significant", or "not supported"."""
    out = {}
    for act in sorted({r["activation"] for r in rows}):
        by = {}
        for scheme in (a, b):
            sub = sorted(
                (r for r in rows if r["activation"] == act and r["scheme"] == scheme),
                key=lambda r: r["seed"],
            )
            by[scheme] = sub
        if [r["seed"] for r in by[a]] != [r["seed"] for r in by[b]]:
            raise ValueError("paired comparison needs the same seeds for both schemes")
        metrics = {}
        for metric, lower in COMPARE_METRICS.items():
            res = paired_comparison(
                [r[metric] for r in by[a]], [r[metric] for r in by[b]], lower_is_better=lower
            )
            res["lower_is_better"] = lower
            metrics[metric] = res
        metrics["steps_to_target"]["censored"] = {
            s: int(sum(not r["reached_target"] for r in by[s])) for s in (a, b)
        }
        metrics["diverged"] = {s: int(sum(r["diverged_step"] >= 0 for r in by[s])) for s in (a, b)}
        speed = [metrics[k] for k in ("steps_to_target", "loss_auc")]
        better = all(m["diff"]["mean"] < 0 for m in speed)
        worse = all(m["diff"]["mean"] > 0 for m in speed)
        significant = all(m["wilcoxon_p"] < alpha for m in speed)
        if better and significant:
            verdict = "supported"
        elif worse and significant:
            verdict = f"contradicted: {b} converges faster"
        elif better:
            verdict = f"not supported: {a} ahead in the mean, not significant"
        else:
            verdict = "not supported"
        metrics["verdict"] = verdict
        out[act] = metrics
    return out
