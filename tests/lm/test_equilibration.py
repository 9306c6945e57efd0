"""Equilibration statistics and the claim checks on synthetic curves with known answers.

Expected values come from closed forms (saturating exponential, pure exponential growth), from
scipy (spearmanr, linregress) or by hand, never from the module itself. Records go through the
real writer and reader (hf_init.core.records)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.optimize import brentq

from hf_init.core.records import make_record, read_records, write_records
from hf_init.lm import equilibration as E

STEPS = np.arange(0, 1001, 10)  # 101 records, T = 1000
T = 1000.0


def saturating(t, v0, vinf, tau):
    return vinf - (vinf - v0) * np.exp(-np.asarray(t, float) / tau)


def run_frame(tmp_path, curves, scheme="s", seed=0, steps=STEPS, lr=None):
    """curves: {(projection, layer): values over steps}; lr: values over steps or None."""
    recs = []
    for i, step in enumerate(steps):
        if lr is not None:
            recs.append(make_record(int(step), None, None, {"learning_rate": float(lr[i])}))
        for (proj, layer), values in curves.items():
            recs.append(make_record(int(step), layer, proj, {"var": float(values[i]), "rms": 0.0}))
    path = tmp_path / f"{scheme}_{seed}.jsonl"
    write_records(path, recs)
    return read_records(path, scheme=scheme, seed=seed)


def study(tmp_path, make_curves, seeds, scheme="s", steps=STEPS):
    return pd.concat(
        [run_frame(tmp_path, make_curves(seed), scheme, seed, steps) for seed in seeds],
        ignore_index=True,
    )


# ------------------------------------------------------------------ per-layer statistics

TAUS = {0: 30.0, 1: 80.0, 2: 150.0, 3: 260.0}


def expected_eq_step(v0, vinf, tau, tol, level):
    """Increasing saturating curve: |v/level - 1| <= tol <=> t >= t*, first recorded step >= t*."""
    t_star = -tau * math.log((vinf - (1 - tol) * level) / (vinf - v0))
    return float(STEPS[np.searchsorted(STEPS, t_star - 1e-9)])


@pytest.mark.parametrize("tol", [0.05, 0.02, 0.1])
def test_equilibration_step_matches_the_formula_without_smoothing(tmp_path, tol):
    v0, vinf = 4e-4, 1e-3
    curves = {("q", l): saturating(STEPS, v0, vinf, tau) for l, tau in TAUS.items()}
    eq = E.equilibration_table(run_frame(tmp_path, curves), tolerance=tol, smoothing=1)
    for l, tau in TAUS.items():
        row = eq[(eq.layer == l)].iloc[0]
        level = saturating(T, v0, vinf, tau)
        assert row.final_level == pytest.approx(level, rel=1e-12)
        assert row.relative_change == pytest.approx(level / v0 - 1, rel=1e-9)
        assert row.equilibration_step == expected_eq_step(v0, vinf, tau, tol, level)
        assert row.left_band


def test_equilibration_step_with_default_smoothing(tmp_path):
    # monotone curve: the symmetric median leaves it unchanged; final level = median of the last
    # 5 raw records = v(t_{n-3}) = v(980). Records after 980 are above it by less than tol.
    v0, vinf, tol = 4e-4, 1e-3, E.TOLERANCE
    curves = {("k", l): saturating(STEPS, v0, vinf, tau) for l, tau in TAUS.items()}
    eq = E.equilibration_table(run_frame(tmp_path, curves))
    for l, tau in TAUS.items():
        level = saturating(980.0, v0, vinf, tau)
        assert saturating(T, v0, vinf, tau) / level - 1 <= tol
        row = eq[eq.layer == l].iloc[0]
        assert row.final_level == pytest.approx(level, rel=1e-12)
        assert row.equilibration_step == expected_eq_step(v0, vinf, tau, tol, level)
        assert row.left_band


def test_smoothing_ignores_a_single_late_spike(tmp_path):
    v = saturating(STEPS, 4e-4, 1e-3, 30.0)
    spiky = v.copy()
    spiky[90] *= 1.5  # step 900
    frame = run_frame(tmp_path, {("v", 0): spiky})
    smooth = E.equilibration_table(frame).iloc[0].equilibration_step
    raw = E.equilibration_table(frame, smoothing=1).iloc[0].equilibration_step
    assert raw == 910.0
    level = saturating(980.0, 4e-4, 1e-3, 30.0)  # the spike is not among the last 5 records
    assert smooth == expected_eq_step(4e-4, 1e-3, 30.0, E.TOLERANCE, level)


def test_never_equilibrated_is_nan(tmp_path):
    # exp(0.01 t): +10.5% per record, always more than 5% from the final level
    frame = run_frame(tmp_path, {("q", 0): 1e-4 * np.exp(0.01 * STEPS)})
    for smoothing in (1, 5):
        assert math.isnan(
            E.equilibration_table(frame, smoothing=smoothing).iloc[0].equilibration_step
        )


def test_early_growth_rate_is_the_exponential_rate(tmp_path):
    rates = {0: 3e-3, 1: 1e-3, 2: -2e-3}
    # after step 100 the curve goes flat: the rate is only seen inside the early window
    curves = {("q", l): 1e-3 * np.exp(r * np.minimum(STEPS, 100)) for l, r in rates.items()}
    eq = E.equilibration_table(
        run_frame(tmp_path, curves)
    )  # window 0.1 of [0, 1000] -> steps <= 100
    for l, r in rates.items():
        row = eq[eq.layer == l].iloc[0]
        assert row.early_growth_rate == pytest.approx(r, rel=1e-9)
        assert row.early_window_end == 100 and row.early_records == 11


def test_early_growth_rate_on_noise_is_scipy_linregress(tmp_path):
    rng = np.random.default_rng(0)
    v = 1e-3 * np.exp(2e-3 * STEPS + rng.normal(0, 0.05, len(STEPS)))
    eq = E.equilibration_table(run_frame(tmp_path, {("q", 0): v}), early_window=0.2)
    want = sps.linregress(STEPS[STEPS <= 200], np.log(v[STEPS <= 200])).slope
    assert eq.iloc[0].early_growth_rate == pytest.approx(want, rel=1e-9)


def test_short_run_extends_the_window_to_three_records(tmp_path):
    steps = np.array([0, 10, 20, 30])
    v = 1e-3 * np.exp(np.array([0.0, 0.1, 0.3, 0.35]))
    eq = E.equilibration_table(run_frame(tmp_path, {("q", 0): v}, steps=steps))
    assert eq.iloc[0].early_records == 3 and eq.iloc[0].early_window_end == 20
    assert eq.iloc[0].early_growth_rate == pytest.approx(
        sps.linregress([0, 10, 20], np.log(v[:3])).slope
    )


def test_learning_rate_at_equilibration(tmp_path):
    lr = 1e-3 * (1 - STEPS / T)
    curves = {("q", 0): saturating(STEPS, 4e-4, 1e-3, 80.0)}
    row = E.equilibration_table(run_frame(tmp_path, curves, lr=lr), smoothing=1).iloc[0]
    eq = expected_eq_step(4e-4, 1e-3, 80.0, E.TOLERANCE, saturating(T, 4e-4, 1e-3, 80.0))
    assert row.equilibration_step == eq
    assert row.learning_rate_at_equilibration == pytest.approx(1e-3 * (1 - eq / T))
    assert row.lr_fraction_of_peak == pytest.approx(1 - eq / T)
    no_lr = E.equilibration_table(run_frame(tmp_path, curves), smoothing=1).iloc[0]
    assert math.isnan(no_lr.learning_rate_at_equilibration)


def test_spread_by_hand(tmp_path):
    steps = np.array([0, 10, 20])
    # log variances per layer at steps 0, 10, 20: [0,0,0], [0,1,2], [0,0.2,0.4]
    logs = {0: [0, 0, 0], 1: [0, 1, 0.2], 2: [0, 2, 0.4]}
    curves = {("q", l): 3e-3 * np.exp(np.array(x)) for l, x in logs.items()}
    curves["q", 3] = np.array([0.0, np.nan, np.inf])  # no spread to speak of: left out
    sp = E.spread_table(run_frame(tmp_path, curves, steps=steps)).sort_values("step")
    assert list(sp.n_layers) == [3, 3, 3]
    assert sp.max_min_ratio.to_numpy() == pytest.approx([1.0, math.e**2, math.e**0.4])
    assert sp.log_std.to_numpy() == pytest.approx([0.0, math.sqrt(2 / 3), 0.2 * math.sqrt(2 / 3)])


# ------------------------------------------------------------------ pooled tests


def test_sign_flip_test_by_hand():
    t = E.sign_flip_test([-0.5, 0.1])  # means over sign flips: -0.3, -0.2, 0.2, 0.3; observed -0.2
    assert (t["n_seeds"], t["p_less"], t["p_greater"], t["min_p"]) == (2, 0.5, 0.75, 0.25)
    t = E.sign_flip_test([-0.5, -0.3, -0.8, -0.2, -0.9])
    assert t["p_less"] == 1 / 32 and t["p_greater"] == 1.0


def test_spearman_per_seed_is_scipys(tmp_path):
    order = {0: [3, 1, 4, 2, 5, 0], 1: [0, 2, 1, 3, 5, 4]}  # rank of each layer's growth rate

    def curves(seed):
        return {("q", l): 1e-3 * np.exp(1e-3 * (1 + order[seed][l]) * STEPS) for l in range(6)}

    _, seeds = E.check_claims(study(tmp_path, curves, [0, 1]), robustness=False)
    a = seeds[seeds.claim == "shallow_grow_faster"].set_index("seed")
    for seed in (0, 1):
        res = sps.spearmanr(range(6), order[seed])
        assert a.loc[seed, "statistic"] == pytest.approx(res.statistic)
        assert a.loc[seed, "p_layers"] == pytest.approx(res.pvalue)


def growth_curves(sign):
    """Layer l grows at rate (1 + sign * l) e-3 / step (+ a per-seed wiggle keeping the order)."""

    def make(seed):
        return {
            (p, l): 1e-3 * np.exp((1 + sign * 0.2 * l + 0.01 * seed) * 1e-3 * STEPS)
            for p in E.PROJECTIONS
            for l in range(4)
        }

    return make


def verdict(verdicts, claim, projection="q"):
    return verdicts[(verdicts.claim == claim) & (verdicts.projection == projection)].iloc[0]


def test_claim_a_supported_contradicted_and_not_supported(tmp_path):
    v, _ = E.check_claims(study(tmp_path, growth_curves(-1), range(5)))
    for p in E.PROJECTIONS:
        row = verdict(v, "shallow_grow_faster", p)
        assert row.verdict == "supported" and row.statistic == pytest.approx(-1.0)
        assert row.p_value == 1 / 32 and row.stable
    v, _ = E.check_claims(study(tmp_path, growth_curves(+1), range(5)))
    row = verdict(v, "shallow_grow_faster")
    assert row.verdict == "contradicted" and row.statistic == pytest.approx(1.0)
    assert "points against the claim" in row.sentence
    v, _ = E.check_claims(study(tmp_path, growth_curves(-1), range(2)))
    row = verdict(v, "shallow_grow_faster")
    assert row.verdict == "not supported" and row.min_p == 0.25 and row.p_value == 0.25
    assert "cannot reach" in row.sentence


def test_claim_b_deep_equilibrate_later(tmp_path):
    def later(seed):
        return {
            (p, l): saturating(STEPS, 4e-4, 1e-3, tau * (1 + 0.02 * seed))
            for p in E.PROJECTIONS
            for l, tau in TAUS.items()
        }

    def earlier(seed):
        return {
            (p, l): saturating(STEPS, 4e-4, 1e-3, TAUS[3 - l]) for p in E.PROJECTIONS for l in TAUS
        }

    v, seeds = E.check_claims(study(tmp_path, later, range(5)))
    row = verdict(v, "deep_equilibrate_later", "k")
    assert row.verdict == "supported" and row.statistic == pytest.approx(1.0) and row.stable
    v, _ = E.check_claims(study(tmp_path, earlier, range(5)))
    assert verdict(v, "deep_equilibrate_later").verdict == "contradicted"


def test_claim_b_never_equilibrated_ranks_latest(tmp_path):
    def make(seed):
        c = {("q", l): saturating(STEPS, 4e-4, 1e-3, TAUS[l]) for l in range(3)}
        c[("q", 3)] = 1e-4 * np.exp(0.01 * STEPS)  # deepest never equilibrates
        return c

    _, seeds = E.check_claims(study(tmp_path, make, [0]), robustness=False)
    b = seeds[seeds.claim == "deep_equilibrate_later"].iloc[0]
    assert b.statistic == pytest.approx(1.0) and b.n == 4


def test_claim_c_spread_ratio_by_hand(tmp_path):
    steps = np.array([0, 10, 20, 30])
    narrow = {0: [0, 0, 0, 0], 1: [0, 1, 0.5, 0.2], 2: [0, 2, 1.0, 0.4]}  # log variances
    widening = {0: [0, 0, 0, 0], 1: [0, 0.3, 0.6, 1.0], 2: [0, 0.6, 1.2, 2.0]}
    middle = {0: [0, 0, 0, 0], 1: [0, 1, 0.8, 0.7], 2: [0, 2, 1.6, 1.4]}

    def make(logs):
        return lambda seed: {
            (p, l): np.exp(np.array(x) * (1 + 0.1 * seed))
            for p in E.PROJECTIONS
            for l, x in logs.items()
        }

    for logs, ratio, want in (
        (narrow, 0.2, "supported"),
        (widening, 1.0, "contradicted"),
        (middle, 0.7, "not supported"),
    ):
        v, seeds = E.check_claims(study(tmp_path, make(logs), range(3), steps=steps))
        c = seeds[(seeds.claim == "narrower_band_at_end") & (seeds.projection == "v")]
        assert c.statistic.to_numpy() == pytest.approx([ratio] * 3)
        row = verdict(v, "narrower_band_at_end", "v")
        assert row.verdict == want and row.stable


def test_claim_c_needs_a_spread_wider_than_the_tolerance(tmp_path):
    # the band widens to the end, but its largest log-variance std, 0.05 sqrt(2/3) (1 + 0.1 seed)
    # = 0.041, 0.045, 0.049, stays under the tolerance 0.05: nothing to narrow from -> not
    # supported; at tolerance 0.025 every seed's end is its widest -> contradicted (unstable).
    steps = np.array([0, 10, 20, 30])
    logs = {0: [0, 0, 0, 0], 1: [0, 0.02, 0.04, 0.05], 2: [0, 0.04, 0.08, 0.1]}

    def make(seed):
        return {
            (p, l): np.exp(np.array(x) * (1 + 0.1 * seed))
            for p in E.PROJECTIONS
            for l, x in logs.items()
        }

    v, seeds = E.check_claims(study(tmp_path, make, range(3), steps=steps))
    c = seeds[(seeds.claim == "narrower_band_at_end") & (seeds.projection == "q")]
    assert c.max_spread.to_numpy() == pytest.approx(
        0.05 * math.sqrt(2 / 3) * np.array([1, 1.1, 1.2])
    )
    row = verdict(v, "narrower_band_at_end")
    assert (row.verdict, row.verdict_half, row.verdict_double) == (
        "not supported",
        "contradicted",
        "not supported",
    )
    assert not row.stable and "NOT stable" in row.sentence


def test_verdict_unstable_when_the_early_window_matters(tmp_path):
    # log v = a_l min(t, 50) + b_l max(t - 50, 0): shallow faster before step 50 (a decreasing
    # in l),
    # deep faster after (b increasing). Window 0.05 sees only a; window 0.2 mostly b.
    def make(seed):
        return {
            (p, l): 1e-3
            * np.exp(
                0.002 * (4 - l) * np.minimum(STEPS, 50)
                + 0.002 * (1 + l + 0.01 * seed) * np.maximum(STEPS - 50, 0)
            )
            for p in E.PROJECTIONS
            for l in range(4)
        }

    v, _ = E.check_claims(study(tmp_path, make, range(5)))
    row = verdict(v, "shallow_grow_faster")
    assert row.verdict_half == "supported" and row.verdict_double == "contradicted"
    assert not row.stable and "NOT stable" in row.sentence


def test_groups_by_scheme(tmp_path):
    frame = pd.concat(
        [
            study(tmp_path, growth_curves(-1), range(5), scheme="a"),
            study(tmp_path, growth_curves(+1), range(5), scheme="b"),
        ],
        ignore_index=True,
    )
    v, _ = E.check_claims(frame)
    a = v[(v.scheme == "a") & (v.claim == "shallow_grow_faster")]
    b = v[(v.scheme == "b") & (v.claim == "shallow_grow_faster")]
    assert len(a) == 3 and set(a.verdict) == {"supported"} and set(b.verdict) == {"contradicted"}
    assert "seed" not in v.columns and v.n_seeds.max() == 5


def test_markdown_table():
    # numbers right-aligned, text (and booleans) left-aligned
    df = pd.DataFrame({"a": [1.0, math.nan], "b": ["x|y", "z"], "c": [True, False]})
    assert E.to_markdown(df, digits=3) == (
        "| a | b | c |\n|---:|:---|:---|\n| 1 | x\\|y | True |\n|  | z | False |\n"
    )
    # floats to 4 significant digits unless told: the report's tables
    small = pd.DataFrame({"x": [0.000123456, 98765.4321, 2.0]})
    assert E.to_markdown(small) == "| x |\n|---:|\n| 0.0001235 |\n| 9.877e+04 |\n| 2 |\n"
    assert E.to_markdown(small, digits=2).splitlines()[2:] == [
        "| 0.00012 |",
        "| 9.9e+04 |",
        "| 2 |",
    ]


def test_centered_median_is_pandas_rolling_inside_and_symmetric_at_the_ends():
    x = np.random.default_rng(3).normal(size=12)
    got = E.centered_median(x, 5)
    want = pd.Series(x).rolling(5, center=True).median().to_numpy()
    assert got[2:-2] == pytest.approx(want[2:-2])
    assert [got[0], got[1], got[-2], got[-1]] == pytest.approx(
        [x[0], np.median(x[:3]), np.median(x[-3:]), x[-1]]
    )


def test_a_table_without_qkv_variances_is_one_clear_error(tmp_path):
    frame = run_frame(tmp_path, {("mlp_fc", 0): np.ones(len(STEPS))})
    with pytest.raises(ValueError, match="no 'var' records of roles q, k, v"):
        E.check_claims(frame)


def test_real_pretraining_records_run_through(tmp_path):
    """The saved records of the default pretraining config (4 records, steps 0-6): every layer
    moved by far less than the tolerance, so each is within it from the first record on."""
    frame = read_records(
        "tests/fixtures/behaviour_kept/pretrain_variance.jsonl", scheme="gpt2", seed=0
    )
    eq = E.equilibration_table(frame)
    assert len(eq) == 3 * 12 and (eq.relative_change.abs() < E.TOLERANCE / 10).all()
    assert (eq.equilibration_step == 0).all() and not eq.left_band.any()
    v, seeds = E.check_claims(frame)
    assert set(v.verdict) <= {"supported", "contradicted", "not supported"} and len(v) == 9
    assert (v[v.claim != "narrower_band_at_end"].verdict == "not supported").all()  # 1 seed


def test_a_repeated_step_counts_once_with_the_last_value(tmp_path):
    v = saturating(STEPS, 4e-4, 1e-3, 80.0)
    once = run_frame(tmp_path, {("q", 0): v})
    twice = pd.concat([run_frame(tmp_path, {("q", 0): v * 3}), once], ignore_index=True)
    a, b = E.equilibration_table(once, smoothing=1), E.equilibration_table(twice, smoothing=1)
    assert b.iloc[0].final_level == pytest.approx(v[-1]) and b.iloc[0].equilibration_step == a.iloc[
        0
    ].equilibration_step == expected_eq_step(4e-4, 1e-3, 80.0, E.TOLERANCE, v[-1])


def test_claims_markdown_states_the_parameters(tmp_path):
    v, _ = E.check_claims(
        study(tmp_path, growth_curves(-1), range(2)), early_window=0.2, tolerance=0.1
    )
    text = E.claims_markdown(v, early_window=0.2, tolerance=0.1)
    assert "first 0.2 of each run" in text and "tolerance: 0.1" in text
    assert "over seeds at level 0.05," in text and "sign test at 0.05 has" in text
    other = E.claims_markdown(v, alpha=0.01)  # the level the verdicts were tested at
    assert "over seeds at level 0.01," in other and "sign test at 0.01 has" in other
    assert text.count("\n- ") == len(v) == 9 and "| scheme | projection | claim |" in text


# ------------------------------------------------------------------ power


def power_by_hand(n, q, alpha=0.05):
    """Sign test power with math.comb: reject when k >= c, c the smallest count whose
    Bin(n, 1/2) upper tail is <= alpha (found with scipy's binomtest)."""
    c = next(
        k
        for k in range(n + 2)
        if k > n or sps.binomtest(k, n, 0.5, alternative="greater").pvalue <= alpha
    )
    return sum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(c, n + 1))


@pytest.mark.parametrize("n, q", [(5, 1.0), (5, 0.8), (10, 0.8), (20, 0.8), (13, 0.7), (4, 1.0)])
def test_sign_test_power_is_the_binomial_sum(n, q):
    assert E.sign_test_power(n, q) == pytest.approx(power_by_hand(n, q), abs=1e-12)


def test_seeds_needed_is_the_first_n_with_80_percent_power():
    # every seed agreeing: 5 seeds (1/2^5 = 0.031 <= 0.05; 4 seeds give at best 0.0625)
    assert E.seeds_needed(1.0) == 5
    for q in (0.8, 0.7, 0.9):
        n = int(E.seeds_needed(q))
        assert power_by_hand(n, q) >= 0.8
        assert all(power_by_hand(m, q) < 0.8 for m in range(1, n))
    assert E.seeds_needed(0.5) == math.inf and E.seeds_needed(0.51) == math.inf


def test_robustness_reruns_halve_and_double_the_early_window(tmp_path):
    """Deeper layers grow faster over the first 50 steps and shallower ones after: at half the
    early window (the first 5% of the run) the shallow-faster claim is contradicted, at the
    default (10%) and at double (20%) supported, so the verdict is marked unstable."""

    def make(seed):
        t = STEPS.astype(float)
        curves = {}
        for l in range(4):
            a, b = (1 + 0.2 * l + 0.01 * seed) * 1e-3, (10 - 3 * l + 0.01 * seed) * 1e-3
            curves.update({(p, l): np.exp(np.where(t <= 50, a * t, a * 50 + b * (t - 50)))
                           for p in E.PROJECTIONS})  # fmt: skip
        return curves

    frame = study(tmp_path, make, range(5))
    row = verdict(E.check_claims(frame)[0], "shallow_grow_faster")
    assert (row.verdict, row.verdict_half, row.verdict_double) == (
        "supported",
        "contradicted",
        "supported",
    )
    assert not row.stable
    alone = verdict(E.check_claims(frame, early_window=0.05)[0], "shallow_grow_faster")
    assert alone.verdict == "contradicted"


def test_robustness_reruns_halve_and_double_both_the_window_and_the_tolerance(
    tmp_path, monkeypatch
):
    """check_claims computes the table three times: at the given early window and tolerance,
    at both halved, at both doubled (the tolerance also reaches the per-seed statistics)."""
    calls = []
    table, stats = E.equilibration_table, E.seed_statistics

    def spy_table(frame, early_window, tolerance, smoothing):
        calls.append(("table", early_window, tolerance))
        return table(frame, early_window, tolerance, smoothing)

    def spy_stats(eq, spread, seed_key, tolerance):
        calls.append(("seeds", tolerance))
        return stats(eq, spread, seed_key, tolerance)

    monkeypatch.setattr(E, "equilibration_table", spy_table)
    monkeypatch.setattr(E, "seed_statistics", spy_stats)
    E.check_claims(study(tmp_path, growth_curves(-1), range(3)), early_window=0.1, tolerance=0.04)
    assert calls == [
        ("table", 0.1, 0.04), ("seeds", 0.04),
        ("table", 0.05, 0.02), ("seeds", 0.02),
        ("table", 0.2, 0.08), ("seeds", 0.08),
    ]  # fmt: skip


def test_seeds_needed_counts_up_to_and_including_the_cap():
    """The cap is a number of seeds that may be the answer: at max_seeds = n (the answer) it is
    n, one below it none qualifies (inf)."""
    n = int(E.seeds_needed(0.8))
    assert E.seeds_needed(0.8, max_seeds=n) == n
    assert E.seeds_needed(0.8, max_seeds=n - 1) == math.inf
    # the count starts at one seed: at alpha 1/2 a single agreeing seed rejects (p = 1/2)
    assert E.sign_test_power(1, 1.0, alpha=0.5) == 1.0
    assert E.seeds_needed(1.0, alpha=0.5) == 1
    # a power exactly reached counts: every seed agreeing, 5 seeds reject with probability 1
    assert E.sign_test_power(5, 1.0) == 1.0 and E.seeds_needed(1.0, power=1.0) == 5


@pytest.mark.parametrize(
    "rhos, agreeing, agree",
    [
        ([], 0, None),
        ([float("nan")], 0, None),
        ([0.5, -0.5], 0, None),  # a mean of exactly 0: no direction
        ([float("nan"), 0.5], 1, 1.0),  # one finite seed
        ([1.0, 1.0], 2, 1.0),  # a mean of exactly 1
        ([0.3, 0.2, -0.1, float("inf")], 2, 2 / 3),  # inf is not a seed's value
    ],
)
def test_power_columns_count_the_finite_seeds_with_the_means_sign(rhos, agreeing, agree):
    got = E._power_columns(rhos, 0.05)
    assert got["seeds_agreeing"] == agreeing
    want = math.inf if agree is None else E.seeds_needed(agree, 0.05)
    assert got["seeds_needed"] == want


def test_verdicts_state_the_seeds_agreeing_and_needed(tmp_path):
    v, _ = E.check_claims(study(tmp_path, growth_curves(-1), range(5)))
    row = verdict(v, "shallow_grow_faster")
    assert (row.seeds_agreeing, row.seeds_needed) == (5, 5)
    assert "5 of 5 seeds share the mean's sign" in row.sentence
    band = verdict(v, "narrower_band_at_end")
    assert math.isnan(band.seeds_needed)


# ------------------------------------------------------------------ schedule coupling


def coupling_frame(tmp_path, curve_of, lr_of, schedule):
    """One run of 4 layers x Q/K/V whose curves are curve_of(steps), learning rate lr_of(steps)."""
    curves = {(p, l): curve_of(STEPS) * (1 + 0.01 * l) for p in E.PROJECTIONS for l in range(4)}
    frame = run_frame(tmp_path, curves, scheme=f"s_{schedule}", lr=lr_of(STEPS))
    return frame.assign(scheme="s", schedule=schedule)


def cosine(t):
    return 1e-3 * 0.5 * (1 + np.cos(np.pi * np.asarray(t, float) / T))


def constant(t):
    return np.full(len(t), 1e-3)


def test_coupling_follows_the_weights_when_constant_lr_settles_at_the_same_step(tmp_path):
    def curve(t):
        return saturating(t, 4e-4, 1e-3, 80.0)

    frame = pd.concat(
        [
            coupling_frame(tmp_path, curve, lr, s)
            for lr, s in ((constant, "constant"), (cosine, "cosine"))
        ]
    )
    table = E.coupling_table(frame, smoothing=1).set_index("schedule")
    eq = expected_eq_step(4e-4, 1e-3, 80.0, E.TOLERANCE, saturating(T, 4e-4, 1e-3, 80.0))
    assert table.loc["constant", "settled"] == 1.0 and table.loc["constant", "eq_step"] == eq
    assert table.loc["cosine", "lr_fraction"] == pytest.approx(
        0.5 * (1 + math.cos(math.pi * eq / T))
    )
    verdict = E.coupling_verdicts(table.reset_index()).iloc[0]
    assert (verdict.decaying, verdict.follows) == ("cosine", "weights")


def test_coupling_follows_the_schedule_when_variance_tracks_the_integrated_lr(tmp_path):
    # variance = 1e-3 (1 + 2 G(t)), G the learning rate integrated up to t, normalized to G(T) = 1:
    # under a constant rate a steady ramp (within 5% of its end only over the last 7.5% of the run)
    def integrated(lr_of):
        def curve(t):
            g = np.concatenate([[0.0], np.cumsum(lr_of(t)[:-1] * np.diff(t))])
            return 1e-3 * (1 + 2 * g / g[-1])

        return curve

    frame = pd.concat(
        [
            coupling_frame(tmp_path, integrated(lr), lr, s)
            for lr, s in ((constant, "constant_with_warmup"), (cosine, "cosine"))
        ]
    )
    table = E.coupling_table(frame, smoothing=1).set_index("schedule")
    assert table.loc["constant_with_warmup", "settled"] == 0.0
    # under cosine G(t) ~ x + sin(pi x) / pi (x = t / T): within 5% of the end from x* on
    x_star = brentq(lambda x: 1 + 2 * (x + math.sin(math.pi * x) / math.pi) - 0.95 * 3, 0.3, 0.99)
    assert table.loc["cosine", "settled"] == 1.0
    assert abs(table.loc["cosine", "eq_step"] - x_star * T) <= 20  # records every 10 steps
    verdict = E.coupling_verdicts(table.reset_index()).iloc[0]
    assert verdict.follows == "schedule" and verdict.lr_fraction_decaying < 0.5


def test_early_window_is_the_first_tenth_of_the_run_or_at_least_three_records():
    """early_growth's window on hand-made steps: records 0..100 step 1, the first 10% of the run
    (steps 0..10: 11 records) when that holds at least 3; with records every 50 steps, the first
    3. The slope is the least-squares slope of ln v over exactly those records (scipy)."""
    from scipy import stats

    steps = np.arange(0, 101)
    values = np.exp(0.02 * steps + np.sin(steps))  # not one exponential: the window matters
    slope, last, used = E.early_growth(steps, values)
    assert (last, used) == (10.0, 11)
    want = stats.linregress(steps[:11], np.log(values[:11])).slope
    assert slope == pytest.approx(want, rel=1e-9)
    sparse = np.arange(0, 501, 50)
    _, last, used = E.early_growth(sparse, np.exp(0.01 * sparse))
    assert (last, used) == (100.0, 3)
    # no records: nothing; fewer than two positive finite ones: no slope, but the window's last
    # step and how many were usable
    slope, last, used = E.early_growth([], [])
    assert np.isnan(slope) and np.isnan(last) and used == 0
    slope, last, used = E.early_growth([0, 5, 10], [2.0, -1.0, np.nan])
    assert np.isnan(slope) and (last, used) == (10.0, 1)


@pytest.mark.parametrize("claim, expected_sign", [("shallow_grow_faster", -1),
                                                  ("deep_equilibrate_later", +1)])  # fmt: skip
def test_a_sentence_says_the_mean_points_against_its_claim_only_when_it_does(claim, expected_sign):
    """A claim tested by a mean Spearman rho predicts a sign (shallow layers grow faster: rho < 0;
    deep layers equilibrate later: rho > 0). The sentence says the mean points against the claim
    for the opposite sign only: not for the predicted sign, and not for a mean of exactly 0."""

    def sentence(statistic):
        row = dict(projection="q", claim=claim, statistic=statistic, per_seed="x",
                   n_seeds=5, p_value=0.5, min_p=1 / 32, seeds_agreeing=3, seeds_needed=40.0,
                   verdict="not supported")  # fmt: skip
        return E.verdict_sentence(row)

    against = "the mean rho points against the claim"
    # each claim states its own parameter: the early window for growth, the tolerance for
    # equilibration
    stated = {"shallow_grow_faster": "; early window 0.1 of the run",
              "deep_equilibrate_later": "; tolerance 0.05"}  # fmt: skip
    assert stated[claim] in sentence(0.4) and E.EARLY_WINDOW == 0.1 and E.TOLERANCE == 0.05
    other = next(v for k, v in stated.items() if k != claim)
    assert other not in sentence(0.4)
    assert against in sentence(-0.4 * expected_sign)
    assert against not in sentence(0.4 * expected_sign)
    assert against not in sentence(0.0)


def test_sign_flip_test_of_one_seed_and_of_none():
    """One finite rho: the two sign assignments give means +-|r|, so the observed +0.3 has
    P(mean >= 0.3) = 1/2, P(mean <= 0.3) = 1 and min_p = 1/2; no finite rho: nothing to test."""
    assert E.sign_flip_test([float("nan"), 0.3]) == {
        "n_seeds": 1, "mean": 0.3, "p_less": 1.0, "p_greater": 0.5, "min_p": 0.5,
    }  # fmt: skip
    none = E.sign_flip_test([float("nan")])
    assert none["n_seeds"] == 0 and math.isnan(none["p_less"]) and math.isnan(none["mean"])


def test_power_phrase_says_how_many_seeds_or_that_none_would_do():
    """Needed seeds finite: the number; infinite with most seeds agreeing: more than the cap;
    with half or fewer agreeing (no effect either way): no number of seeds."""
    assert E.power_phrase(4, 5, 12.0) == (
        "4 of 5 seeds share the mean's sign: at that consistency 12 seeds give a one-sided sign "
        "test at level 0.05 a power of 80%"
    )
    more = f"3 of 5 seeds share the mean's sign: at that consistency more than {E.MAX_SEEDS} seeds"
    assert E.power_phrase(3, 5, math.inf).startswith(more)
    for agreeing, n in ((2, 4), (1, 5)):
        assert "no number of seeds gives a sign test 80% power" in E.power_phrase(
            agreeing, n, math.inf
        )


def test_equilibration_step_at_the_ends_of_a_short_curve():
    """Two records already at their level: settled from the first. A curve that reaches its level
    at the second-to-last record settles there; one that reaches it only at the last record (or
    has fewer than two records) never settled: NaN."""
    assert E.equilibration_step([0, 10], [3.0, 3.0], smoothing=1) == 0.0
    assert E.equilibration_step([0, 10, 20, 30], [1.0, 2.0, 3.0, 3.0], smoothing=1) == 20.0
    assert math.isnan(E.equilibration_step([0, 10, 20, 30], [1.0, 2.0, 2.5, 3.0], smoothing=1))
    assert math.isnan(E.equilibration_step([0], [3.0], smoothing=1))


def test_claim_c_at_a_spread_exactly_the_tolerance_is_not_supported(tmp_path):
    """Claim c needs a largest spread wider than the tolerance: variances 1 and 4 across two
    layers spread by std(ln 1, ln 4) = ln 2 exactly, so at tolerance ln 2 the seed is 'not
    supported', and just below it the spread, narrowed to half at the end, supports it."""
    steps = np.array([0, 10, 20])
    curves = {(p, 0): np.ones(3) for p in E.PROJECTIONS}
    curves |= {(p, 1): np.array([1.0, 4.0, 2.0]) for p in E.PROJECTIONS}
    frame = run_frame(tmp_path, curves, steps=steps)
    assert E.spread_table(frame).log_std.max() == math.log(2)
    for tolerance, verdict in ((math.log(2), "not supported"), (0.99 * math.log(2), "supported")):
        _, seeds = E.check_claims(frame, tolerance=tolerance)
        c = seeds[(seeds.claim == "narrower_band_at_end") & (seeds.projection == "q")]
        assert list(c.seed_verdict) == [verdict], tolerance


def test_a_sentence_says_the_seeds_cannot_reach_the_level_only_when_they_cannot():
    """A one-sided sign-flip test over n seeds cannot go below p = 1/2^n: with 4 seeds (1/16 >
    0.05) the sentence says so, with 5 (1/32) it does not, and with no usable seed there is no
    test to speak of."""

    def sentence(n_seeds, min_p):
        row = dict(projection="q", claim="deep_equilibrate_later", statistic=0.4, per_seed="x",
                   n_seeds=n_seeds, p_value=0.5, min_p=min_p, seeds_agreeing=n_seeds,
                   seeds_needed=6.0, verdict="not supported")  # fmt: skip
        return E.verdict_sentence(row)

    assert "with 4 seed(s) this test cannot reach p <= 0.05" in sentence(4, 1 / 16)
    assert "cannot reach" not in sentence(5, 1 / 32)
    assert "cannot reach" not in sentence(0, 1.0)


def test_coupling_follows_the_weights_up_to_a_gap_of_exactly_the_same_step_share():
    """The weights lead when the constant schedule settles (share >= 1/2) and the decaying one
    settles within SAME_STEP (0.1) of the run of the constant one's step: a gap of 100 steps in a
    run of 1000 is exactly 0.1, still the same step; 101 is not (and with the learning rate not
    decayed below half, the verdict is mixed)."""
    assert E.SAME_STEP == 0.1 and E.SETTLED_SHARE == 0.5 and E.DECAYED_LR == 0.5

    def follows(eq_step_decaying, lr_fraction=0.6, settled=0.5):
        rows = [
            dict(scheme="s", schedule="constant", curves=8, settled=settled, never=0.0,
                 eq_step=400.0, lr_fraction=1.0, run_steps=1000.0),
            dict(scheme="s", schedule="cosine", curves=8, settled=1.0, never=0.0,
                 eq_step=eq_step_decaying, lr_fraction=lr_fraction, run_steps=1000.0),
        ]  # fmt: skip
        return E.coupling_verdicts(pd.DataFrame(rows)).iloc[0].follows

    assert (follows(500.0), follows(300.0)) == ("weights", "weights")
    assert (follows(501.0), follows(299.0)) == ("mixed", "mixed")
    # exactly half settled under the constant rate counts as settled: with the steps apart it is
    # mixed, not the schedule, even where the decaying rate fell below half its peak
    assert follows(600.0, lr_fraction=0.3) == "mixed"
    assert follows(600.0, lr_fraction=0.3, settled=0.49) == "schedule"
    assert follows(600.0, lr_fraction=0.5, settled=0.49) == "mixed"  # at half: not below it


# ------------------------------------------------------------------ exhaustive mutants' gaps


@pytest.mark.parametrize("window", [1, 3, 5, 7])
def test_centered_median_of_every_length_is_the_shrinking_window_by_hand(window):
    """Every length 1..12 (short ones whose middle is only a few records wide included): record
    i is the median of x[i - w : i + w + 1], w = min(window // 2, i, n - 1 - i)."""
    h = window // 2
    for n in range(1, 13):
        x = np.random.default_rng(n).normal(size=n)
        want = [float(np.median(x[i - min(h, i, n - 1 - i) : i + min(h, i, n - 1 - i) + 1]))
                for i in range(n)]  # fmt: skip
        assert E.centered_median(x, window).tolist() == pytest.approx(want), n


def test_equilibration_step_of_a_curve_with_a_non_finite_record_is_nan():
    """A NaN or inf anywhere (here the first record, the tail flat and finite) means no step."""
    for bad in (np.nan, np.inf):
        assert math.isnan(E.equilibration_step([0, 10, 20, 30], [bad, 1.0, 1.0, 1.0], smoothing=1))


def test_equilibration_band_includes_its_edge():
    """|v / level - 1| <= tolerance: 1.5 against a level of 1 is inside a band of 0.5 (exact in
    binary), so the curve settled at its first record; 1.5 + 2^-20 is not."""
    assert E.equilibration_step([0, 10, 20, 30], [1.5, 1.0, 1.0, 1.0], 0.5, 1) == 0.0
    assert E.equilibration_step([0, 10, 20, 30], [1.5 + 2**-20, 1.0, 1.0, 1.0], 0.5, 1) == 10.0


def test_early_window_of_a_run_that_starts_late_is_measured_from_its_first_step():
    """Steps 100..200 (a run resumed or recorded from step 100): the first tenth is steps 100..110,
    11 records, and the slope is scipy's over them."""
    from scipy import stats

    steps = np.arange(100, 201)
    values = np.exp(0.01 * steps + np.cos(steps))
    slope, last, used = E.early_growth(steps, values)
    assert (last, used) == (110.0, 11)
    assert slope == pytest.approx(stats.linregress(steps[:11], np.log(values[:11])).slope)


def test_early_growth_skips_zero_records_and_fits_exactly_two():
    """A zero variance has no logarithm: it is left out, not fitted as -inf. Two positive records
    are enough for a slope: ln(v1 / v0) / (s1 - s0)."""
    slope, last, used = E.early_growth([0, 5, 10], [0.0, 2.0, 2.0 * math.e])
    assert (slope, last, used) == (pytest.approx(0.2), 10.0, 2)


def test_spearman_needs_three_layers_and_no_more():
    """MIN_LAYERS = 3: three layers give scipy's rho and p; two give NaN."""
    rho, p, n = E.spearman([0, 1, 2], [0.3, 0.1, 0.2])
    res = sps.spearmanr([0, 1, 2], [0.3, 0.1, 0.2])
    assert (rho, p, n) == (pytest.approx(res.statistic), pytest.approx(res.pvalue), 3)
    rho, p, n = E.spearman([0, 1], [0.3, 0.1])
    assert math.isnan(rho) and math.isnan(p) and n == 2


def test_lr_fraction_of_a_schedule_that_stays_at_zero_is_nan(tmp_path):
    """A learning rate of 0 throughout has no peak to be a fraction of: NaN, not a division by
    zero; the rate at equilibration is still read (0)."""
    curves = {("q", 0): saturating(STEPS, 4e-4, 1e-3, 80.0)}
    row = E.equilibration_table(run_frame(tmp_path, curves, lr=0 * STEPS), smoothing=1).iloc[0]
    assert row.learning_rate_at_equilibration == 0.0 and math.isnan(row.lr_fraction_of_peak)


def test_spearman_drops_the_layers_whose_value_is_nan_and_is_nan_quietly_when_constant():
    """Pairs with a NaN value are left out (scipy's rho over the rest); a constant value or layer
    column has no rank correlation: NaN, without scipy's ConstantInputWarning."""
    import warnings

    rho, p, n = E.spearman([0, 1, 2, 3, 4], [0.3, np.nan, 0.1, 0.2, 0.5])
    res = sps.spearmanr([0, 2, 3, 4], [0.3, 0.1, 0.2, 0.5])
    assert (rho, p, n) == (pytest.approx(res.statistic), pytest.approx(res.pvalue), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for layers, values in (([0, 1, 2, 3], [0.2] * 4), ([1, 1, 1, 1], [0.1, 0.4, 0.2, 0.3])):
            rho, p, n = E.spearman(layers, values)
            assert math.isnan(rho) and math.isnan(p) and n == 4


def test_a_p_value_exactly_at_the_level_decides_the_verdict(tmp_path):
    """p <= alpha: with 4 seeds all pointing one way the sign-flip p is 1/16, and at a level of
    exactly 1/16 the claim is supported (growth falling with depth) or contradicted (rising);
    just below that level it is neither."""
    frames = {sign: study(tmp_path, growth_curves(sign), range(4)) for sign in (-1, +1)}
    for alpha, want in ((1 / 16, ("supported", "contradicted")), (0.06, ("not supported",) * 2)):
        got = tuple(
            verdict(E.check_claims(frames[s], alpha=alpha, robustness=False)[0],
                    "shallow_grow_faster").verdict
            for s in (-1, +1)
        )  # fmt: skip
        assert got == want, alpha


def test_sentences_name_the_run_and_the_parameter_that_was_varied_at_the_level_asked(tmp_path):
    """A verdict's sentence starts with its run keys (here the scheme) and the projection; its
    stability part names the early window for claim (a) and the tolerance for (b); with
    robustness off there are no halved/doubled verdicts at all. Tested at a level of 1/16, four
    seeds can reach it (no "cannot reach"), and the power phrase states that level."""
    frame = study(tmp_path, growth_curves(-1), range(4), scheme="kaiming")
    v, _ = E.check_claims(frame, alpha=1 / 16)
    a, b = (verdict(v, c, "k") for c in ("shallow_grow_faster", "deep_equilibrate_later"))
    assert a.sentence.startswith("scheme=kaiming, K: ") and b.sentence.startswith("scheme=kaiming")
    assert "Stable when the early window is halved and doubled." in a.sentence
    assert b.sentence.endswith(". Stable when the tolerance is halved and doubled.")
    assert "cannot reach" not in a.sentence and "test at level 0.0625 a power" in a.sentence
    assert "cannot reach p <= 0.05" in E.check_claims(frame)[0].sentence.iloc[0]
    assert "cannot reach p <= 0.01" in E.check_claims(frame, alpha=0.01)[0].sentence.iloc[0]
    quick, _ = E.check_claims(frame, robustness=False)
    assert not {"verdict_half", "verdict_double", "stable"} & set(quick.columns)
    assert "stable" not in quick.sentence.iloc[0].lower()


def test_a_curve_settled_when_it_stayed_in_band_for_the_last_fifth_of_the_run_and_no_less(tmp_path):
    """STAY = 0.2: over steps 500..1500 (a run recorded from step 500) a curve stepping from 1 to
    its final 2 at step 1300 stayed for the last fifth and settled; one stepping at 1310 did not;
    one that never reached its level before the last record (NaN step) did not either."""
    assert E.STAY == 0.2
    steps = STEPS + 500
    for jump, settled in ((1300, 1.0), (1310, 0.0), (1500, 0.0)):
        curve = np.where(steps < jump, 1.0, 2.0)
        frame = run_frame(tmp_path, {("q", 0): curve}, steps=steps)
        table = E.coupling_table(frame, smoothing=1)
        assert (table.settled.iloc[0], table.curves.iloc[0]) == (settled, 1), jump


def test_markdown_aligns_a_nullable_integer_column_right_and_an_all_missing_one_left():
    """Missing cells (pd.NA, NaN) are empty and do not decide the alignment: a nullable integer
    column with a missing value is still numbers; a column with nothing in it is not."""
    df = pd.DataFrame({"n": pd.array([3, None], dtype="Int64"), "e": [math.nan, math.nan]})
    assert E.to_markdown(df) == "| n | e |\n|---:|:---|\n| 3 |  |\n|  |  |\n"


def test_claims_markdown_table_leaves_the_sentences_to_the_bullets(tmp_path):
    """The table has the verdict columns but not the sentence (nor the statistic's name); each
    sentence is a bullet below it."""
    v, _ = E.check_claims(study(tmp_path, growth_curves(-1), range(3)), robustness=False)
    text = E.claims_markdown(v)
    header = next(line for line in text.splitlines() if line.startswith("| "))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert "verdict" in cells and "sentence" not in cells and "statistic_name" not in cells
    assert [line[2:] for line in text.splitlines() if line.startswith("- ")] == list(v.sentence)
