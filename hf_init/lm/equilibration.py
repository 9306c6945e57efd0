"""Depth-dependent equilibration of Q/K/V weight variances, and the paper's claims as checks.

Reads the long record table of :func:`hf_init.core.records.read_records` over one or many
pretraining runs (told apart by their key columns, e.g. ``scheme``, ``seed``): the ``var`` of
roles q, k, v and the ``learning_rate``. Per layer :func:`equilibration_table`, across layers
:func:`spread_table`, and over seeds :func:`check_claims`. Every statistic and test is defined in
``docs/findings.md`` ("How the statistics and verdicts are defined").
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd
from scipy import stats as sps

PROJECTIONS = ("q", "k", "v")
SEED_KEY = "seed"
NON_KEYS = ("step", "layer", "role", "statistic", "value")

EARLY_WINDOW = 0.1
"""Early window as a fraction of the run's recorded step range: the first 10% is where the
paper says shallow layers 'expand rapidly' (after a typical warmup of a few % of the run)
while the deep ones have barely moved; small enough to precede equilibration, large enough
to hold several records."""

MIN_EARLY_RECORDS = 3
"""A slope needs at least 2 points; 3 give it one degree of freedom against one noisy record.
When the window holds fewer, it is extended to this many records (short runs)."""

TOLERANCE = 0.05
"""Relative band around the final level: 5% is well above the step-to-step noise of a variance
over ~0.6M weights (relative std ~ sqrt(2/N) < 0.2%) and well below the growths the paper
describes (tens of %), so it marks 'has settled' rather than noise."""

SMOOTHING = 5
"""Centered moving median over 5 records: removes a single-record spike (a median over 5
ignores up to 2 outliers) while shifting a monotone curve not at all."""

ALPHA = 0.05
"""Level of the pooled one-sided tests."""

NARROW_RATIO = 0.5
"""Claim (c): the end band counts as 'narrower' when its log-variance std is at most half its
maximum over the run (a clear narrowing, not a few % of noise)."""

MIN_LAYERS = 3
"""Fewest usable layers for a per-seed Spearman rho."""

POWER = 0.8
"""Power the report's "seeds needed" aims at: the conventional 80%."""

MAX_SEEDS = 200
"""Largest number of seeds "seeds needed" searches; beyond it the report says "> 200"."""

CLAIMS = {
    "shallow_grow_faster": "shallow layers grow faster early (rho(layer, early growth) < 0)",
    "deep_equilibrate_later": "deep layers equilibrate later (rho(layer, equilibration step) > 0)",
    "narrower_band_at_end": "variances end in a narrower band than they pass through "
    f"(end / max log-variance spread <= {NARROW_RATIO})",
}


# ------------------------------------------------------------------ table helpers


def run_keys(frame: pd.DataFrame) -> list[str]:
    """The columns naming a run (everything but step/layer/role/statistic/value)."""
    return [c for c in frame.columns if c not in NON_KEYS]


def _variances(frame: pd.DataFrame, projections=PROJECTIONS) -> pd.DataFrame:
    sel = frame[
        (frame["statistic"] == "var")
        & frame["role"].isin(projections)
        & frame["layer"].notna()
        & frame["step"].notna()
    ]
    sel = sel.rename(columns={"role": "projection"}).drop(columns="statistic")
    if sel.empty:
        raise ValueError(
            f"no 'var' records of roles {', '.join(projections)} with a step and a layer "
            "in the table (expected the records of a pretraining run's variance.jsonl)"
        )
    sel = sel.astype({"step": "int64", "layer": "int64"})
    index = [*run_keys(frame), "projection", "layer", "step"]
    sel = sel.drop_duplicates(index, keep="last")  # a resumed run may repeat steps: the latest wins
    return sel.sort_values(index).reset_index(drop=True)


def _groups(df: pd.DataFrame, by: list[str]):
    if not by:
        yield (), df
        return
    for key, sub in df.groupby(by, sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), sub


# ------------------------------------------------------------------ curve statistics


def centered_median(values, window: int = SMOOTHING) -> np.ndarray:
    """Moving median over ``window`` records centered on each record; near the ends the window
    shrinks symmetrically (half-width min(window // 2, i, n - 1 - i))."""
    x = np.asarray(values, dtype=float)
    n, h = len(x), max(int(window), 1) // 2
    out = np.empty(n)
    if n > 2 * h:
        out[h : n - h] = np.median(np.lib.stride_tricks.sliding_window_view(x, 2 * h + 1), axis=1)
    for i in [*range(min(h, n)), *range(max(n - h, 0), n)]:  # the ends: shrink symmetrically
        w = min(h, i, n - 1 - i)
        out[i] = np.median(x[i - w : i + w + 1])
    return out


def final_level(values, smoothing: int = SMOOTHING) -> float:
    """Median of the last ``smoothing`` raw values."""
    x = np.asarray(values, dtype=float)
    return float(np.median(x[-max(int(smoothing), 1) :]))


def equilibration_step(
    steps, values, tolerance: float = TOLERANCE, smoothing: int = SMOOTHING
) -> float:
    """First recorded step from which the smoothed curve stays within ``tolerance`` (relative)
    of the final level; NaN when only the last record qualifies (or the curve is not finite)."""
    steps = np.asarray(steps)
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or not np.all(np.isfinite(x)):
        return math.nan
    level = final_level(x, smoothing)
    if not level > 0:
        return math.nan
    inside = np.abs(centered_median(x, smoothing) / level - 1.0) <= tolerance
    # first index i such that inside[i:] are all True
    outside = np.flatnonzero(~inside)
    first = 0 if len(outside) == 0 else int(outside[-1]) + 1
    if first >= len(x) - 1:
        return math.nan
    return float(steps[first])


def early_growth(
    steps, values, early_window: float = EARLY_WINDOW, min_records: int = MIN_EARLY_RECORDS
) -> tuple[float, float, int]:
    """(slope of ln values vs step by least squares over the early window, last step used,
    number of records used). NaN slope when fewer than 2 positive finite records."""
    steps = np.asarray(steps, dtype=float)
    x = np.asarray(values, dtype=float)
    if len(steps) == 0:
        return math.nan, math.nan, 0
    end = steps[0] + early_window * (steps[-1] - steps[0])
    n = max(int(np.sum(steps <= end)), min(min_records, len(steps)))
    s, v = steps[:n], x[:n]
    ok = np.isfinite(v) & (v > 0)
    if ok.sum() < 2:
        return math.nan, float(s[-1]), int(ok.sum())
    slope = np.polyfit(s[ok], np.log(v[ok]), 1)[0]
    return float(slope), float(s[-1]), int(ok.sum())


def _learning_rates(frame: pd.DataFrame) -> pd.DataFrame:
    lr = frame[(frame["statistic"] == "learning_rate") & frame["step"].notna()]
    return lr.astype({"step": "int64"})


def _lr_at(lr_run: pd.DataFrame, step: float) -> float:
    """The learning rate in force at ``step`` (the last one recorded at or before it); NaN with
    none recorded then, which includes a NaN step (a curve that never equilibrated)."""
    before = lr_run[lr_run["step"] <= step]
    if before.empty:
        return math.nan
    return float(before.sort_values("step")["value"].iloc[-1])


def equilibration_table(
    frame: pd.DataFrame,
    early_window: float = EARLY_WINDOW,
    tolerance: float = TOLERANCE,
    smoothing: int = SMOOTHING,
    projections=PROJECTIONS,
) -> pd.DataFrame:
    """Per (run keys..., projection, layer): initial, final_level, relative_change,
    early_growth_rate, early_window_end, early_records, equilibration_step, left_band,
    learning_rate_at_equilibration, lr_fraction_of_peak (defined in docs/findings.md)."""
    keys = run_keys(frame)
    var = _variances(frame, projections)
    lrs = _learning_rates(frame)
    rows = []
    for kvals, run in _groups(var, keys):
        ident = dict(zip(keys, kvals))
        lr_run = lrs
        for k, v in ident.items():
            lr_run = lr_run[lr_run[k] == v] if not pd.isna(v) else lr_run[lr_run[k].isna()]
        peak = float(lr_run["value"].max()) if not lr_run.empty else math.nan
        for (proj, layer), curve in run.groupby(["projection", "layer"], sort=True):
            steps, values = curve["step"].to_numpy(), curve["value"].to_numpy(dtype=float)
            init = float(values[0])
            level = final_level(values, smoothing)
            slope, end, n_early = early_growth(steps, values, early_window)
            eq = equilibration_step(steps, values, tolerance, smoothing)
            lr = _lr_at(lr_run, eq)
            rows.append(
                {
                    **ident,
                    "projection": proj,
                    "layer": int(layer),
                    "initial": init,
                    "final_level": level,
                    "relative_change": level / init - 1.0,
                    "early_growth_rate": slope,
                    "early_window_end": end,
                    "early_records": n_early,
                    "equilibration_step": eq,
                    "left_band": not eq == float(steps[0]),
                    "learning_rate_at_equilibration": lr,
                    "lr_fraction_of_peak": lr / peak if peak > 0 else math.nan,
                }
            )
    return pd.DataFrame(rows)


def spread_table(frame: pd.DataFrame, projections=PROJECTIONS) -> pd.DataFrame:
    """Per (run keys..., projection, step): n_layers, max_min_ratio, log_std (ddof=0) of the raw
    variances across layers."""
    keys = run_keys(frame)
    var = _variances(frame, projections)
    var = var[np.isfinite(var["value"]) & (var["value"] > 0)]
    rows = []
    for kvals, sub in _groups(var, [*keys, "projection", "step"]):
        v = sub["value"].to_numpy(dtype=float)
        rows.append(
            {
                **dict(zip([*keys, "projection", "step"], kvals)),
                "n_layers": len(v),
                "max_min_ratio": float(v.max() / v.min()),
                "log_std": float(np.std(np.log(v))),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ claims


def spearman(layers, values) -> tuple[float, float, int]:
    """(rho, scipy two-sided p, n) over finite pairs; NaN when < MIN_LAYERS or constant."""
    x, y = np.asarray(layers, float), np.asarray(values, float)
    ok = np.isfinite(x) & ~np.isnan(y)
    x, y = x[ok], y[ok]
    if len(x) < MIN_LAYERS or np.all(y == y[0]) or np.all(x == x[0]):
        return math.nan, math.nan, int(len(x))
    res = sps.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue), int(len(x))


def sign_flip_test(rhos) -> dict:
    """Exact sign-flip permutation test of the mean over seeds: ``p_less`` = P(mean <= observed),
    ``p_greater`` = P(mean >= observed) over all 2^n sign assignments; ``min_p`` = 1 / 2^n."""
    r = np.asarray([v for v in rhos if math.isfinite(v)], dtype=float)
    n = len(r)
    if n == 0:
        return {
            "n_seeds": 0,
            "mean": math.nan,
            "p_less": math.nan,
            "p_greater": math.nan,
            "min_p": math.nan,
        }
    signs = np.array(list(product((1.0, -1.0), repeat=n)))
    means = (signs * np.abs(r)).mean(axis=1)
    obs = r.mean()
    eps = 1e-12 * max(1.0, np.abs(r).max())
    return {
        "n_seeds": n,
        "mean": float(obs),
        "p_less": float(np.mean(means <= obs + eps)),
        "p_greater": float(np.mean(means >= obs - eps)),
        "min_p": 1.0 / 2**n,
    }


def sign_test_power(n: int, agree: float, alpha: float = ALPHA) -> float:
    """Probability that the one-sided sign test at level ``alpha`` rejects with ``n`` seeds when
    each seed independently points the tested way with probability ``agree``."""
    k = np.arange(n + 2)  # P(X >= n + 1) = 0: some k always qualifies
    critical = int(k[sps.binom.sf(k - 1, n, 0.5) <= alpha][0])  # X ~ Bin(n, 1/2) under the null
    return float(sps.binom.sf(critical - 1, n, agree))


def seeds_needed(
    agree: float, alpha: float = ALPHA, power: float = POWER, max_seeds: int = MAX_SEEDS
) -> float:
    """Fewest seeds giving the one-sided sign test at level ``alpha`` the ``power`` to detect an
    effect whose seeds each point its way with probability ``agree``; inf when none up to
    ``max_seeds`` does (and for ``agree`` <= 1/2, no effect)."""
    if not agree > 0.5:
        return math.inf
    for n in range(1, max_seeds + 1):
        if sign_test_power(n, agree, alpha) >= power:
            return float(n)
    return math.inf


def _power_columns(rhos, alpha: float) -> dict:
    """``seeds_agreeing`` (finite rhos with the sign of their mean) and ``seeds_needed`` for an
    effect that consistent (:func:`seeds_needed`, agree = seeds_agreeing / n)."""
    r = np.asarray([v for v in rhos if math.isfinite(v)], dtype=float)
    if len(r) == 0 or r.mean() == 0:
        return {"seeds_agreeing": 0, "seeds_needed": math.inf}
    agreeing = int(np.sum(np.sign(r) == np.sign(r.mean())))
    return {"seeds_agreeing": agreeing, "seeds_needed": seeds_needed(agreeing / len(r), alpha)}


def _rank_verdict(test: dict, direction: str, alpha: float) -> str:
    """Supported when the claimed direction's p is at most ``alpha``, contradicted when the other
    one's is; with no seeds both p are NaN and neither comparison holds: not supported."""
    p_claim, p_other = (
        (test["p_less"], test["p_greater"])
        if direction == "less"
        else (test["p_greater"], test["p_less"])
    )
    if p_claim <= alpha:
        return "supported"
    if p_other <= alpha:
        return "contradicted"
    return "not supported"


def _group_keys(keys: list[str], seed_key: str) -> list[str]:
    return [k for k in keys if k != seed_key]


def seed_statistics(
    eq: pd.DataFrame, spread: pd.DataFrame, seed_key: str = SEED_KEY, tolerance: float = TOLERANCE
) -> pd.DataFrame:
    """Per (group keys..., projection, claim, seed): ``statistic`` (rho for (a), (b); end/max
    spread ratio for (c)), ``n`` (layers for rho, steps for (c)), ``p_layers`` (scipy's Spearman
    p over layers, (a)/(b) only), ``seed_verdict`` ((c) only)."""
    keys = [c for c in eq.columns if c not in ("projection", "layer") and c not in _EQ_COLUMNS]
    groups = _group_keys(keys, seed_key)
    seed_cols = [seed_key] if seed_key in keys else []
    rows = []
    for kvals, sub in _groups(eq, [*groups, "projection", *seed_cols]):
        ident = dict(zip([*groups, "projection", *seed_cols], kvals))
        sub = sub.sort_values("layer")
        rho, p, n = spearman(
            sub["layer"], sub["early_growth_rate"].where(np.isfinite(sub["early_growth_rate"]))
        )
        rows.append(
            {**ident, "claim": "shallow_grow_faster", "statistic": rho, "n": n, "p_layers": p}
        )
        eqs = sub["equilibration_step"].to_numpy(dtype=float)
        eqs = np.where(np.isnan(eqs), np.inf, eqs)  # never equilibrated = latest
        rho, p, n = spearman(sub["layer"], eqs)
        rows.append(
            {**ident, "claim": "deep_equilibrate_later", "statistic": rho, "n": n, "p_layers": p}
        )
    for kvals, sub in _groups(spread, [*groups, "projection", *seed_cols]):
        ident = dict(zip([*groups, "projection", *seed_cols], kvals))
        s = sub.sort_values("step")["log_std"].to_numpy(dtype=float)
        top = float(np.max(s)) if len(s) else math.nan
        ratio = float(s[-1] / top) if top > 0 else math.nan
        v = (
            "not supported"
            if not (math.isfinite(ratio) and top > tolerance)
            else "supported"
            if ratio <= NARROW_RATIO
            else "contradicted"
            if ratio >= 1.0
            else "not supported"
        )
        rows.append(
            {
                **ident,
                "claim": "narrower_band_at_end",
                "statistic": ratio,
                "n": len(s),
                "p_layers": math.nan,
                "max_spread": top,
                "seed_verdict": v,
            }
        )
    out = pd.DataFrame(rows)
    for col in ("max_spread", "seed_verdict"):
        if col not in out:
            out[col] = None
    return out


_EQ_COLUMNS = (
    "initial",
    "final_level",
    "relative_change",
    "early_growth_rate",
    "early_window_end",
    "early_records",
    "equilibration_step",
    "left_band",
    "learning_rate_at_equilibration",
    "lr_fraction_of_peak",
)


def _verdicts(seeds: pd.DataFrame, seed_key: str, alpha: float) -> pd.DataFrame:
    groups = [
        c
        for c in seeds.columns
        if c
        not in (
            "projection",
            "claim",
            seed_key,
            "statistic",
            "n",
            "p_layers",
            "max_spread",
            "seed_verdict",
        )
    ]
    rows = []
    for kvals, sub in _groups(seeds, [*groups, "projection", "claim"]):
        ident = dict(zip([*groups, "projection", "claim"], kvals))
        claim = ident["claim"]
        if claim == "narrower_band_at_end":
            r = sub["statistic"].to_numpy(dtype=float)
            sv = list(sub["seed_verdict"])
            verdict = (
                "supported"
                if sv and all(v == "supported" for v in sv)
                else "contradicted"
                if sv and all(v == "contradicted" for v in sv)
                else "not supported"
            )
            rows.append(
                {
                    **ident,
                    "statistic_name": "end/max log-variance spread, per seed",
                    "statistic": float(np.nanmedian(r)) if np.isfinite(r).any() else math.nan,
                    "per_seed": ", ".join(f"{v:.3g}" for v in r),
                    "n_seeds": len(r),
                    "p_value": math.nan,
                    "min_p": math.nan,
                    "seeds_agreeing": math.nan,
                    "seeds_needed": math.nan,
                    "verdict": verdict,
                }
            )
        else:
            direction = "less" if claim == "shallow_grow_faster" else "greater"
            test = sign_flip_test(sub["statistic"])
            rows.append(
                {
                    **ident,
                    "statistic_name": "mean Spearman rho over seeds",
                    "statistic": test["mean"],
                    "per_seed": ", ".join(f"{v:.3g}" for v in sub["statistic"]),
                    "n_seeds": test["n_seeds"],
                    "p_value": test["p_less"] if direction == "less" else test["p_greater"],
                    "min_p": test["min_p"],
                    **_power_columns(sub["statistic"], alpha),
                    "verdict": _rank_verdict(test, direction, alpha),
                }
            )
    return pd.DataFrame(rows)


def check_claims(
    frame: pd.DataFrame,
    early_window: float = EARLY_WINDOW,
    tolerance: float = TOLERANCE,
    smoothing: int = SMOOTHING,
    alpha: float = ALPHA,
    seed_key: str = SEED_KEY,
    robustness: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The claims over a record table: (verdicts, per-seed statistics).

    ``verdicts`` columns: group keys... (run keys but ``seed_key``), projection, claim,
    statistic_name, statistic (mean rho for (a)/(b), median end/max ratio for (c)), per_seed,
    n_seeds, p_value (one-sided, claimed direction; NaN for (c)), min_p (1/2^n_seeds),
    seeds_agreeing and seeds_needed (the power, :func:`power_phrase`; NaN for (c)), verdict,
    and with ``robustness``: verdict_half, verdict_double (the parameter of the claim -- early
    window for (a), tolerance for (b) -- halved / doubled), stable, sentence.
    """
    spread = spread_table(frame)
    seeds = seed_statistics(
        equilibration_table(frame, early_window, tolerance, smoothing), spread, seed_key, tolerance
    )
    verdicts = _verdicts(seeds, seed_key, alpha)
    if robustness and not verdicts.empty:
        index = [
            c
            for c in verdicts.columns
            if c
            not in (
                "statistic_name",
                "statistic",
                "per_seed",
                "n_seeds",
                "p_value",
                "min_p",
                "seeds_agreeing",
                "seeds_needed",
                "verdict",
            )
        ]
        for label, f in (("verdict_half", 0.5), ("verdict_double", 2.0)):
            eq = equilibration_table(frame, early_window * f, tolerance * f, smoothing)
            other = _verdicts(seed_statistics(eq, spread, seed_key, tolerance * f), seed_key, alpha)
            other = other[index + ["verdict"]].rename(columns={"verdict": label})
            verdicts = verdicts.merge(other, on=index, how="left")
        stable = (verdicts["verdict"] == verdicts["verdict_half"]) & (
            verdicts["verdict"] == verdicts["verdict_double"]
        )
        verdicts["stable"] = stable
    verdicts["sentence"] = [
        verdict_sentence(r, early_window, tolerance, alpha) for r in verdicts.to_dict("records")
    ]
    return verdicts, seeds


def verdict_sentence(
    row: dict,
    early_window: float = EARLY_WINDOW,
    tolerance: float = TOLERANCE,
    alpha: float = ALPHA,
) -> str:
    """One plain-language line for a row of the verdicts table (``alpha``: the level the verdicts
    were tested at)."""
    keys = [f"{k}={row[k]}" for k in row if k not in _VERDICT_COLUMNS]
    who = (", ".join(keys) + ", " if keys else "") + f"{str(row['projection']).upper()}"
    claim = row["claim"]
    if claim == "narrower_band_at_end":
        detail = (
            f"end/max spread ratio per seed {row['per_seed']} "
            f"(a seed supports at <= {NARROW_RATIO}, contradicts at 1, "
            f"neither when its largest log-variance spread is <= the tolerance {tolerance:g})"
        )
    else:
        param = (
            f"early window {early_window:g} of the run"
            if claim == "shallow_grow_faster"
            else f"tolerance {tolerance:g}"
        )
        detail = (
            f"mean Spearman rho {row['statistic']:.3g} over {row['n_seeds']} seed(s) "
            f"(per seed {row['per_seed']}), one-sided sign-flip p = {row['p_value']:.3g}, "
            f"smallest attainable p = {row['min_p']:.3g}; {param}"
        )
        if not row["n_seeds"]:
            detail = f"no seed had a defined rho (< 3 usable layers, or constant values); {param}"
        elif (row["statistic"] > 0) == (claim == "shallow_grow_faster") and row["statistic"] != 0:
            detail += "; the mean rho points against the claim"
        if row["n_seeds"] and row["min_p"] > alpha:
            detail += f"; with {row['n_seeds']} seed(s) this test cannot reach p <= {alpha:g}"
        if row["n_seeds"]:
            detail += "; " + power_phrase(
                row["seeds_agreeing"], row["n_seeds"], row["seeds_needed"], alpha
            )
    text = f"{who}: '{CLAIMS[claim]}' is {row['verdict'].upper()} -- {detail}."
    if "stable" in row and row["stable"] is not None and not pd.isna(row["stable"]):
        what = "early window" if claim == "shallow_grow_faster" else "tolerance"
        text += (
            f" Stable when the {what} is halved and doubled."
            if row["stable"]
            else (
                f" NOT stable: halved -> {row['verdict_half']}, doubled -> {row['verdict_double']}."
            )
        )
    return text


def power_phrase(agreeing: int, n: int, needed: float, alpha: float = ALPHA) -> str:
    """How many seeds an effect as consistent as the observed one needs (the report's power) for
    a sign test at level ``alpha``."""
    share = f"{agreeing:.0f} of {n:.0f} seeds share the mean's sign"
    if not math.isfinite(needed):
        how = (
            f"more than {MAX_SEEDS} seeds give" if agreeing * 2 > n else "no number of seeds gives"
        )
        return f"{share}: at that consistency {how} a sign test {POWER:.0%} power"
    return (
        f"{share}: at that consistency {needed:.0f} seeds give a one-sided sign test at level "
        f"{alpha:g} a power of {POWER:.0%}"
    )


_VERDICT_COLUMNS = {
    "projection",
    "max_spread",
    "claim",
    "statistic_name",
    "statistic",
    "per_seed",
    "n_seeds",
    "p_value",
    "min_p",
    "seeds_agreeing",
    "seeds_needed",
    "verdict",
    "verdict_half",
    "verdict_double",
    "stable",
    "sentence",
}


def to_markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a GitHub Markdown table (floats to ``digits`` significant digits, NaN as
    empty; number columns right-aligned, the others left), without needing ``tabulate``."""

    def cell(v):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    def is_number(column) -> bool:
        values = [v for v in df[column] if v is not None and not pd.isna(v)]
        return bool(values) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in values
        )

    cols = list(df.columns)
    rule = "|" + "".join("---:|" if is_number(c) else ":---|" for c in cols)
    lines = ["| " + " | ".join(map(str, cols)) + " |", rule]
    for rec in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in rec) + " |")
    return "\n".join(lines) + "\n"


def claims_markdown(
    verdicts: pd.DataFrame,
    early_window: float = EARLY_WINDOW,
    tolerance: float = TOLERANCE,
    smoothing: int = SMOOTHING,
    alpha: float = ALPHA,
) -> str:
    """A report section: the stated parameters and rules (``alpha``: the level the verdicts were
    tested at), the verdicts table (without the sentences) and one bullet per verdict sentence."""
    head = (
        f"Early window: the first {early_window:g} of each run's recorded steps (at least "
        f"{MIN_EARLY_RECORDS} records); equilibration tolerance: {tolerance:g} (relative to the "
        f"final level, the median of the last {smoothing} records) on a centered moving median "
        f"over {smoothing} records; pooled test: exact one-sided sign-flip test of the mean "
        f"Spearman rho over seeds at level {alpha:g}, whose smallest attainable p with n seeds is "
        f"1/2^n (`min_p`); power: `seeds_needed` is the fewest seeds with which a one-sided sign "
        f"test at {alpha:g} has {POWER:.0%} power for an effect as consistent as the observed one "
        "(each seed independently shares the mean's sign with probability seeds_agreeing / "
        "n_seeds; signs only, an approximation of the sign-flip test of the mean); band claim: "
        f"end/max log-variance spread <= {NARROW_RATIO:g} in every seed (a unanimity rule, no "
        "p-value). "
        "Robustness: every verdict re-run with the window and tolerance halved and doubled.\n\n"
    )
    shown = verdicts.drop(columns=[c for c in ("sentence", "statistic_name") if c in verdicts])
    table = to_markdown(shown)
    bullets = "".join(f"- {s}\n" for s in verdicts.get("sentence", []))
    return head + table + "\n" + bullets


# ------------------------------------------------------------------ schedule coupling

CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")
"""Schedules whose learning rate stays at its peak after warm-up: under them the schedule
cannot be what settles the weights."""

STAY = 0.2
"""A curve has settled when it left the band and then stayed in it for at least the last 20% of
the run: a curve that keeps drifting reaches the band around its own final value only near the
end (a steady ramp of +50% spends its last 15% there), which is the run ending, not settling."""

SETTLED_SHARE = 0.5
"""Coupling verdict: the weights settle on their own when at least half the curves settle
under a constant learning rate."""

SAME_STEP = 0.1
"""Coupling verdict: equilibration steps within 10% of the run length count as the same step."""

DECAYED_LR = 0.5
"""Coupling verdict: an equilibration at less than half the peak learning rate is one the decay
may have made."""


def coupling_table(
    frame: pd.DataFrame,
    tolerance: float = TOLERANCE,
    smoothing: int = SMOOTHING,
    seed_key: str = SEED_KEY,
) -> pd.DataFrame:
    """Per run group (every key but ``seed_key``), over seeds, layers and projections: curves,
    ``settled`` (share that left the band and then stayed within ``tolerance`` of the final level
    for at least the last :data:`STAY` of the run), ``never`` (share with no equilibration step),
    ``eq_step`` and ``lr_fraction`` (medians over the settled curves of the equilibration step
    and the learning rate there / its peak) and ``run_steps`` (the last recorded step)."""
    keys = run_keys(frame)
    eq = equilibration_table(frame, tolerance=tolerance, smoothing=smoothing)
    recorded = frame.dropna(subset=["step"])
    span = recorded.groupby(keys, dropna=False)["step"].agg(["min", "max"]).reset_index()
    eq = eq.merge(span, on=keys, how="left")
    latest = eq["min"] + (1 - STAY) * (eq["max"] - eq["min"])
    eq["settled"] = eq["equilibration_step"].notna() & eq["left_band"]
    eq["settled"] &= eq["equilibration_step"] <= latest
    groups = [k for k in keys if k != seed_key]
    rows = []
    for kvals, sub in _groups(eq, groups):
        ok = sub[sub["settled"]]
        rows.append(
            {
                **dict(zip(groups, kvals)),
                "curves": len(sub),
                "settled": float(sub["settled"].mean()),
                "never": float(sub["equilibration_step"].isna().mean()),
                "eq_step": ok["equilibration_step"].median(),
                "lr_fraction": ok["lr_fraction_of_peak"].median(),
                "run_steps": float(sub["max"].max()),
            }
        )
    return pd.DataFrame(rows)


def coupling_verdicts(table: pd.DataFrame, schedule_key: str = "schedule") -> pd.DataFrame:
    """Pair each constant-schedule group of :func:`coupling_table` with the groups that differ from
    it only in a decaying schedule: does equilibration follow the weights or the schedule?

    "weights": at least :data:`SETTLED_SHARE` of the curves settle under the constant schedule and
    the decaying schedule's median equilibration step is within :data:`SAME_STEP` of the run
    length of the constant one's. "schedule": fewer settle under the constant schedule and under
    the decaying one they settle at a median learning rate below :data:`DECAYED_LR` of its peak.
    Otherwise "mixed"."""
    if schedule_key not in table:
        return pd.DataFrame()
    others = [c for c in table.columns if c not in _COUPLING_COLUMNS and c != schedule_key]
    constant = table[table[schedule_key].isin(CONSTANT_SCHEDULES)]
    decaying = table[~table[schedule_key].isin(CONSTANT_SCHEDULES)]
    pairs = constant.merge(decaying, on=others, suffixes=("_constant", "_decaying"))
    rows = []
    for r in pairs.to_dict("records"):
        gap = abs(r["eq_step_decaying"] - r["eq_step_constant"]) / r["run_steps_constant"]
        if r["settled_constant"] >= SETTLED_SHARE and gap <= SAME_STEP:
            verdict = "weights"
        elif r["settled_constant"] < SETTLED_SHARE and r["lr_fraction_decaying"] < DECAYED_LR:
            verdict = "schedule"
        else:
            verdict = "mixed"
        rows.append(
            {
                **{k: r[k] for k in others},
                "decaying": r[f"{schedule_key}_decaying"],
                "settled_constant": r["settled_constant"],
                "settled_decaying": r["settled_decaying"],
                "eq_step_constant": r["eq_step_constant"],
                "eq_step_decaying": r["eq_step_decaying"],
                "lr_fraction_decaying": r["lr_fraction_decaying"],
                "follows": verdict,
            }
        )
    return pd.DataFrame(rows)


_COUPLING_COLUMNS = ("curves", "settled", "never", "eq_step", "lr_fraction", "run_steps")
