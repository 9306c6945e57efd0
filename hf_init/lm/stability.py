"""Training stability across the runs of a study: learning-rate sensitivity, attention-logit
growth, attention-entropy collapse and divergence, and whether collapse came first.

- **Chance loss** ``L0 = ln(vocab_size)``: the loss of the uniform prediction. A run whose final
  eval loss is no better, or that stopped on non-finite values, counts as ``L0``.
- **LR sensitivity** (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
  training instabilities", arXiv:2309.14322): per scheme, the mean over the swept learning rates
  of ``min(L(lr), L0) - min_lr L(lr)``, L the final eval loss (mean over seeds). 0: every rate as
  good as the best; in nats. Wortsman et al. cap at the loss at initialization; ``L0`` stands in
  for it (the same for every scheme, the loss at init of a model whose logits start near 0).
- **Logit growth**: per layer, the probe's attention-logit std at the last record step over the
  first (mean over heads).
- **Entropy collapse** (Zhai et al. 2023, "Stabilizing Transformer Training by Preventing
  Attention Entropy Collapse", arXiv:2303.06296): a head collapses at the first record step where
  its probe entropy is below :data:`COLLAPSE_FRACTION` of :func:`uniform_entropy`, the entropy
  of uniform causal attention averaged as the probe averages it.
- **Divergence**: a run diverged when it stopped on non-finite values (at that step) or ended
  with eval loss >= ``L0``; then its divergence step is the first logged step after the
  training loss's minimum where it is back at ``>= L0`` (its first logged step if it never
  fell below).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

COLLAPSE_FRACTION = 0.1
"""A head has collapsed when its entropy is below 10% of uniform attention's: with 64-token
blocks (uniform 3.2 nats) below 0.32 nats, attention on about one token (e^0.32 = 1.4)."""


def chance_loss(vocab_size: int) -> float:
    """``ln(vocab_size)``, the cross-entropy of the uniform next-token prediction."""
    return math.log(vocab_size)


def uniform_entropy(block_size: int) -> float:
    """Entropy of uniform causal attention, mean over query positions t = 0..T-1 of ln(t + 1)
    (the mean the attention probe takes over positions)."""
    return float(np.mean(np.log(np.arange(1, block_size + 1))))


def _attention(table: pd.DataFrame, statistic: str) -> pd.DataFrame:
    sel = table[(table["role"] == "attn") & (table["statistic"] == statistic)]
    return sel.dropna(subset=["step", "layer"]).astype({"step": "int64", "layer": "int64"})


def logit_growth(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per (run keys..., layer): logit_std_init and logit_std_final (mean over heads at the first
    and the last record step) and growth = final / init."""
    att = _attention(table, "logit_std")
    rows = []
    for kvals, run in att.groupby(keys, sort=True):
        kvals = kvals if isinstance(kvals, tuple) else (kvals,)
        first, last = run["step"].min(), run["step"].max()
        for layer, sub in run.groupby("layer", sort=True):
            init = sub[sub["step"] == first]["value"].mean()
            final = sub[sub["step"] == last]["value"].mean()
            rows.append(
                {
                    **dict(zip(keys, kvals)),
                    "layer": int(layer),
                    "logit_std_init": init,
                    "logit_std_final": final,
                    "growth": final / init if init > 0 else math.nan,
                }
            )
    return pd.DataFrame(rows)


def head_collapse(
    table: pd.DataFrame, keys: list[str], block_size: int, fraction: float = COLLAPSE_FRACTION
) -> pd.DataFrame:
    """Per (run keys..., layer, head): entropy_init, entropy_min, entropy_final and
    collapse_step (first record step with entropy < fraction x uniform_entropy; NaN: never)."""
    threshold = fraction * uniform_entropy(block_size)
    ent = _attention(table, "entropy")
    rows = []
    for kvals, curve in ent.groupby([*keys, "layer", "head"], sort=True):
        curve = curve.sort_values("step")
        values, steps = curve["value"].to_numpy(float), curve["step"].to_numpy()
        below = np.flatnonzero(values < threshold)
        rows.append(
            {
                **dict(zip([*keys, "layer", "head"], kvals)),
                "entropy_init": values[0],
                "entropy_min": np.nanmin(values),
                "entropy_final": values[-1],
                "collapse_step": float(steps[below[0]]) if len(below) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def diverged(stopped_at: float | None, eval_loss: float | None, l0: float) -> bool:
    """Whether a run diverged: it stopped on non-finite values, or its final eval loss is missing,
    not finite or >= ``l0``."""
    if stopped_at is not None and math.isfinite(stopped_at):
        return True
    return not (eval_loss is not None and math.isfinite(eval_loss) and eval_loss < l0)


def divergence_step(stopped_at: float | None, loss_curve: pd.DataFrame | None, l0: float) -> float:
    """The step a diverged run diverged at (module docstring); NaN when its loss curve is
    unknown or never climbs back to ``l0`` after its minimum."""
    if stopped_at is not None and math.isfinite(stopped_at):
        return float(stopped_at)
    if loss_curve is None or loss_curve.empty:
        return math.nan
    steps, loss = loss_curve["step"].to_numpy(float), loss_curve["loss"].to_numpy(float)
    bad = ~np.isfinite(loss) | (loss >= l0)
    if bad.all():  # never better than chance
        return float(steps[0])
    lowest = int(np.argmin(np.where(np.isfinite(loss), loss, np.inf)))
    after = np.flatnonzero(bad[lowest:])
    return float(steps[lowest + after[0]]) if len(after) else math.nan


def lr_sensitivity(results: pd.DataFrame, group: list[str]) -> pd.DataFrame:
    """Per group (e.g. scheme): the Wortsman et al. LR sensitivity over the learning rates in
    ``results`` (columns ``group..., lr, final_loss, chance_loss``; ``final_loss`` NaN for a
    diverged run), with best_lr, best_loss and the rates whose capped loss is below chance."""
    capped = results.assign(
        capped=np.fmin(results["final_loss"].fillna(np.inf), results["chance_loss"])
    )
    rows = []
    for kvals, sub in capped.groupby(group, sort=True):
        kvals = kvals if isinstance(kvals, tuple) else (kvals,)
        by_lr = sub.groupby("lr", sort=True).agg(
            loss=("capped", "mean"), chance=("chance_loss", "mean")
        )
        best = by_lr["loss"].min()
        trained = by_lr.index[by_lr["loss"] < by_lr["chance"]]
        rows.append(
            {
                **dict(zip(group, kvals)),
                "n_lrs": len(by_lr),
                "lr_min": by_lr.index.min(),
                "lr_max": by_lr.index.max(),
                "best_lr": by_lr["loss"].idxmin(),
                "best_loss": best,
                "lr_sensitivity": float((by_lr["loss"] - best).mean()),
                "lrs_below_chance": ", ".join(f"{v:g}" for v in trained),
            }
        )
    return pd.DataFrame(rows)


def run_stability(
    runs: pd.DataFrame, heads: pd.DataFrame, growth: pd.DataFrame, keys: list[str]
) -> pd.DataFrame:
    """Per run (``runs``: keys..., diverged, divergence_step): collapsed heads of all heads, the
    first collapse step, whether a collapse came before the divergence step (None for a run that
    did not diverge or whose divergence step is unknown), and the largest logit growth of a
    layer."""
    h = pd.DataFrame(columns=[*keys, "collapse_step"]) if heads.empty else heads
    g = pd.DataFrame(columns=[*keys, "growth"]) if growth.empty else growth
    h = h.groupby(keys, sort=False).agg(
        collapsed_heads=("collapse_step", "count"),
        heads=("collapse_step", "size"),
        first_collapse_step=("collapse_step", "min"),
    )
    g = g.groupby(keys, sort=False).agg(max_logit_growth=("growth", "max"))
    out = runs[[*keys, "diverged", "divergence_step"]].merge(h.reset_index(), on=keys, how="left")
    out = out.merge(g.reset_index(), on=keys, how="left")
    first = out["first_collapse_step"].astype(float).fillna(np.inf)
    known = out["diverged"] & out["divergence_step"].notna()
    out["collapse_before_divergence"] = [
        bool(f < d) if k else None for f, d, k in zip(first, out["divergence_step"], known)
    ]
    return out
