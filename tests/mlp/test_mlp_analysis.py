"""Regime rule and stable band on hand-made cases (ties included); paired statistics and the
verdict against scipy and the textbook formulas."""

import math

import numpy as np
import pytest
from scipy import stats

from hf_init.mlp.analysis import (
    classify_regime,
    compare_rows,
    compare_summary,
    curve_area,
    gain_per_layer,
    mean_ci,
    min_wilcoxon_p,
    paired_comparison,
    stable_band,
    steps_to_target,
    sweep_rows,
)

LN10 = math.log(10)


def regime(**kw):
    base = dict(
        diverged_step=-1,
        initial_loss=LN10,
        final_loss=0.1,
        gain=1.0,
        grad_std_init=1e-2,
        n_classes=10,
    )
    base.update(kw)
    return classify_regime(**base)


def test_regime_rule_hand_made_cases():
    assert regime() == "stable"
    assert regime(diverged_step=37, final_loss=float("nan")) == "diverged"
    assert regime(diverged_step=0, final_loss=0.1) == "diverged"  # any non-finite step wins
    # stuck at chance with a shrinking signal: vanishing
    assert regime(final_loss=LN10, gain=1e-3, grad_std_init=1e-12) == "vanishing"
    # stuck at chance with a growing signal: exploding
    assert regime(final_loss=LN10, gain=30.0) == "exploding"
    # learned but started far above chance (10 x ln C): exploding, not stable
    assert regime(initial_loss=1e4, final_loss=0.01, gain=3.0) == "exploding"
    # did not learn, gain <= 1 but huge first-layer gradient: exploding
    assert regime(final_loss=LN10, gain=0.5, grad_std_init=1e5) == "exploding"
    # loss fell but not below 0.9 ln C: not learned
    assert regime(final_loss=0.95 * LN10, gain=0.01) == "vanishing"
    # learned from a vanished signal (e.g. Adam): stable, the rule is about the outcome
    assert regime(final_loss=0.3, gain=1e-4) == "stable"
    # the gain's boundary: a signal kept exactly (gain 1) did not grow, just above 1 it did
    assert regime(final_loss=LN10, gain=1.0) == "vanishing"
    assert regime(final_loss=LN10, gain=1.0 + 1e-12) == "exploding"


@pytest.mark.parametrize("n_classes", [3, 10])
def test_regime_thresholds_are_multiples_of_chance(n_classes):
    """Each threshold on both sides, at its stated multiple of the chance loss ln C: initial loss
    10 ln C (exploded at init), final loss 0.9 ln C (learned), first-layer gradient std 1e3."""
    chance = math.log(n_classes)

    def r(**kw):
        return regime(**{"final_loss": 0.3, "gain": 0.5, "n_classes": n_classes, **kw})

    assert r(initial_loss=10 * chance * 0.99) == "stable"
    assert r(initial_loss=10 * chance * 1.01) == "exploding"
    assert r(final_loss=0.9 * chance * 0.99) == "stable"
    assert r(final_loss=0.9 * chance * 1.01) == "vanishing"
    assert r(final_loss=chance, grad_std_init=1e3 * 0.99) == "vanishing"
    assert r(final_loss=chance, grad_std_init=1e3 * 1.01) == "exploding"
    assert r(final_loss=chance, grad_std_init=1e3) == "vanishing"  # at it is not above it
    # exactly at the other two: an initial loss of 10 ln C is not above it (not exploded), a final
    # loss of 0.9 ln C is not below it (not learned)
    assert r(initial_loss=10.0 * chance) == "stable"
    assert r(final_loss=0.9 * chance) == "vanishing"


def test_gain_per_layer_is_the_geometric_mean_ratio():
    v = np.array([2.0, 1.0, 0.5, 0.25])  # halves each of the 3 steps
    assert gain_per_layer(v) == pytest.approx(0.5)
    assert gain_per_layer(np.array([1.0, 8.0])) == pytest.approx(8.0)
    assert math.isnan(gain_per_layer(np.array([1.0, float("nan")])))
    # no gain from one layer, from a zero variance at either end or from a NaN in any layer
    # (the ends alone would give sqrt(4) = 2 here); an infinite variance anywhere is inf
    for v in ([4.0], [0.0, 1.0], [1.0, 0.0], [1.0, 2.0, 0.0], [1.0, float("nan"), 4.0]):
        assert math.isnan(gain_per_layer(np.array(v))), v
    for v in ([1.0, float("inf")], [float("inf"), 1.0], [1.0, float("inf"), 4.0]):
        assert gain_per_layer(np.array(v)) == float("inf"), v


def test_stable_band_longest_majority_run():
    stds = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    regs = [
        ["vanishing"] * 3,
        ["stable", "stable", "vanishing"],
        ["stable"] * 3,
        ["stable", "diverged", "diverged"],
        ["stable"] * 3,
    ]
    band = stable_band(stds, regs)
    assert (band["lo"], band["hi"]) == (1e-2, 1e-1)
    assert band["stable_stds"] == [1e-2, 1e-1, 10.0]
    assert band["fraction_stable"]["1"] == pytest.approx(1 / 3)
    none = stable_band([1.0, 2.0], [["diverged"], ["vanishing"]])
    assert none["lo"] is None and none["stable_stds"] == []
    half = stable_band([1.0], [["stable", "vanishing"]])  # exactly half is not a majority
    assert half["lo"] is None
    for unsorted in ([2.0, 1.0], [1.0, 1.0], [1.0, 3.0, 2.0]):
        with pytest.raises(ValueError, match="strictly increasing"):
            stable_band(unsorted, [["stable"]] * len(unsorted))


def test_mean_ci_matches_manual_t_interval():
    x = np.array([0.3, 0.5, 0.4, 0.8, 0.55, 0.61])
    n = len(x)
    mean = x.sum() / n
    s = math.sqrt(((x - mean) ** 2).sum() / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    ci = mean_ci(x)
    assert ci.mean == pytest.approx(mean)
    assert (ci.lo, ci.hi) == pytest.approx((mean - half, mean + half))
    lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi))
    assert mean_ci([1.0, float("nan"), 3.0]).n == 2


def test_paired_comparison_against_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.2, 10)
    b = a + rng.normal(0.3, 0.1, 10)
    res = paired_comparison(a, b)
    assert res["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert res["diff"]["mean"] == pytest.approx(np.mean(a - b))
    lo, hi = stats.t.interval(0.95, 9, loc=np.mean(a - b), scale=stats.sem(a - b))
    assert (res["diff"]["lo"], res["diff"]["hi"]) == pytest.approx((lo, hi))
    assert res["n_pairs"] == 10


def test_five_seeds_cannot_reach_p_below_005():
    a = np.arange(5.0)
    b = a + np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # every pair favours a: the most extreme case
    p = paired_comparison(a, b)["wilcoxon_p"]
    assert p == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert p == pytest.approx(0.0625)
    assert min_wilcoxon_p(5) == pytest.approx(0.0625)
    assert min_wilcoxon_p(10) == pytest.approx(2 / 1024)


def test_steps_to_target_and_area():
    steps = np.array([0, 10, 20, 30])
    losses = np.array([2.0, 1.0, 0.5, 0.25])
    assert steps_to_target(steps, losses, 0.5) == 20
    assert steps_to_target(steps, losses, 0.1) == float("inf")
    # trapezoids: (2+1)/2*10 + (1+.5)/2*10 + (.5+.25)/2*10 = 26.25, over 30 steps
    assert curve_area(steps, losses) == pytest.approx(26.25 / 30)
    # two records: one trapezoid, the mean of its ends; one record: no span, no area
    assert curve_area(np.array([0, 10]), np.array([2.0, 1.0])) == pytest.approx(1.5)
    assert math.isnan(curve_area(np.array([5]), np.array([1.0])))
    assert math.isnan(curve_area(steps, np.array([2.0, 1.0, float("nan"), 0.25])))
    assert math.isnan(curve_area(steps, np.array([2.0, float("inf"), 0.5, 0.25])))  # not inf
    assert curve_area(steps + 100, losses) == pytest.approx(26.25 / 30)  # the span, not the end


def test_compare_summary_verdicts():
    rows = []
    for seed in range(6):
        for scheme, steps in (("k", 10 + seed), ("x", 20 + seed)):
            rows.append(
                {
                    "activation": "relu",
                    "scheme": scheme,
                    "seed": seed,
                    "steps_to_target": steps,
                    "reached_target": True,
                    "loss_auc": steps / 100,
                    "final_test_loss": 0.1,
                    "final_test_acc": 0.9,
                    "diverged_step": -1,
                }
            )
    res = compare_summary(rows, "k", "x")["relu"]
    assert res["verdict"] == "supported"  # 6/6 faster: p = 2/64 < 0.05
    assert res["steps_to_target"]["wilcoxon_p"] == pytest.approx(
        stats.wilcoxon([10 + s for s in range(6)], [20 + s for s in range(6)]).pvalue
    )
    res = compare_summary(
        [dict(r, scheme={"k": "x", "x": "k"}[r["scheme"]]) for r in rows], "k", "x"
    )["relu"]
    assert res["verdict"] == "contradicted: x converges faster"
    five = [r for r in rows if r["seed"] < 5]  # 5/5 faster, yet p = 0.0625
    assert (
        compare_summary(five, "k", "x")["relu"]["verdict"]
        == "not supported: k ahead in the mean, not significant"
    )
    mixed = [
        dict(
            r,
            steps_to_target=r["steps_to_target"]
            + (25 if r["scheme"] == "k" and r["seed"] % 2 else 0),
        )
        for r in rows
    ]  # k: 10, 36, 12, 38, 14, 40 (mean 25) vs x: 20..25 (22.5): steps worse, AUC better
    assert compare_summary(mixed, "k", "x")["relu"]["verdict"] == "not supported"


def test_stable_band_tie_goes_to_the_lower_run():
    from hf_init.mlp.analysis import stable_band

    band = stable_band(
        [1.0, 2.0, 3.0, 4.0, 5.0], [["stable"], ["vanishing"], ["stable"], ["diverged"], ["stable"]]
    )
    assert (band["lo"], band["hi"]) == (1.0, 1.0)
    assert band["stable_stds"] == [1.0, 3.0, 5.0]


def test_paired_counts_do_not_count_ties_as_wins():
    from hf_init.mlp.analysis import paired_comparison

    res = paired_comparison(
        [1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 4.0, 4.0]
    )  # a - b: 0 (tie), -1, -1, +1
    assert res["a_better_count"] == 2 and res["n_pairs"] == 4
    higher = paired_comparison([1.0, 2.0, 3.0, 5.0], [1.0, 3.0, 4.0, 4.0], lower_is_better=False)
    assert higher["a_better_count"] == 1  # only +1 (accuracy-like: higher is better)
    # a pair with a non-finite value is no pair: neither counted nor tested
    nan = paired_comparison([1.0, float("nan"), 3.0], [2.0, 0.0, 4.0])
    assert (nan["n_pairs"], nan["a_better_count"]) == (2, 2)


def test_verdict_needs_both_speed_metrics_significant():
    """6 seeds (smallest two-sided Wilcoxon p 2/2^6 = 0.031): steps to target lower on every seed
    (p = 0.031 < 0.05), loss AUC lower in the mean only (signs mixed, p > 0.05): not supported."""
    from scipy import stats

    from hf_init.mlp.analysis import compare_summary

    a_steps, b_steps = [10, 20, 30, 40, 50, 60], [15, 27, 33, 49, 52, 71]
    a_auc, b_auc = [0.5, 0.9, 0.4, 0.8, 0.3, 0.7], [0.6, 0.8, 0.5, 0.7, 0.6, 0.8]
    assert stats.wilcoxon(a_steps, b_steps).pvalue < 0.05 < stats.wilcoxon(a_auc, b_auc).pvalue
    rows = []
    for scheme, steps, auc in (("a", a_steps, a_auc), ("b", b_steps, b_auc)):
        for seed, (s, u) in enumerate(zip(steps, auc)):
            rows.append(
                {
                    "activation": "relu",
                    "scheme": scheme,
                    "seed": seed,
                    "steps_to_target": s,
                    "reached_target": True,
                    "loss_auc": u,
                    "final_test_loss": u,
                    "final_test_acc": 0.5,
                    "diverged_step": -1,
                }
            )
    verdict = compare_summary(rows, "a", "b")["relu"]["verdict"]
    assert verdict == "not supported: a ahead in the mean, not significant"


def test_compare_rows_read_each_members_first_and_last_records():
    """Two members over three record steps, by hand: member 0 reaches the target loss at step
    10, member 1 never does (censored at last step + 1); initial and final values are the first
    and last record of that member's column; the area is the trapezoid mean."""
    from types import SimpleNamespace

    record = SimpleNamespace(
        record_steps=np.array([0, 10, 20]),
        train_loss=np.array([[2.3, 2.3], [0.4, 2.0], [0.2, 1.8]]),
        test_loss=np.array([[2.3, 2.3], [0.5, 2.1], [0.3, 1.9]]),
        test_acc=np.array([[0.1, 0.1], [0.8, 0.2], [0.9, 0.3]]),
        diverged_step=np.array([-1, 15]),
    )
    run = SimpleNamespace(record=record, member_keys=[{"scheme": "a"}, {"scheme": "b"}])
    a, b = compare_rows(run, target_loss=0.5)
    assert a == {
        "scheme": "a",
        "steps_to_target": 10,
        "reached_target": True,
        "loss_auc": pytest.approx(((2.3 + 0.4) / 2 * 10 + (0.4 + 0.2) / 2 * 10) / 20),
        "initial_train_loss": 2.3,
        "final_train_loss": 0.2,
        "final_test_loss": 0.3,
        "final_test_acc": 0.9,
        "diverged_step": -1,
    }
    assert (b["steps_to_target"], b["reached_target"]) == (21, False)
    assert (b["final_train_loss"], b["final_test_loss"], b["final_test_acc"]) == (1.8, 1.9, 0.3)
    assert b["diverged_step"] == 15


def test_sweep_rows_read_each_members_records_by_hand():
    """Two sweep members over three record steps: initial and final values are the first and
    last records of the member's column, the gain is the geometric mean ratio of its step-0
    pre-activation variances (first hidden layer to logits), the gradient std the square root of
    its first layer's step-0 weight-gradient variance, and the regime follows from those."""
    from types import SimpleNamespace

    record = SimpleNamespace(
        # (records, members, layers): member 0 quarters each layer, member 1 keeps it
        # later records differ (training moved them): only step 0's are read
        preact_var=np.array([[[1.0, 0.25, 0.0625], [2.0, 2.0, 2.0]]])
        * [[[1.0]], [[3.0]], [[5.0]]]
        * [[[1.0, 1.0, 1.0]], [[1.0, 1.0, 2.0]], [[1.0, 1.0, 7.0]]],
        grad_weight_var=np.array([[[4e-4, 1.0], [9e-4, 1.0]]]) * [[[1.0]], [[4.0]], [[9.0]]],
        train_loss=np.array([[2.3, 2.3], [2.2, 1.0], [2.25, 0.1]]),
        test_loss=np.array([[2.3, 2.3], [2.2, 1.1], [2.28, 0.2]]),
        train_acc=np.array([[0.1, 0.1], [0.12, 0.6], [0.11, 0.97]]),
        test_acc=np.array([[0.1, 0.1], [0.1, 0.5], [0.09, 0.93]]),
        diverged_step=np.array([-1, -1]),
    )
    run = SimpleNamespace(record=record, member_keys=[{"std": 0.1}, {"std": 1.0}])
    vanishing, stable = sweep_rows(run, n_classes=10)
    assert vanishing == {
        "std": 0.1,
        "initial_train_loss": 2.3,
        "final_train_loss": 2.25,
        "final_test_loss": 2.28,
        "final_train_acc": 0.11,
        "final_test_acc": 0.09,
        "gain_per_layer_init": pytest.approx(0.25),
        "grad_std_layer1_init": pytest.approx(0.02),
        "regime": "vanishing",  # 2.25 > 0.9 ln 10 and the signal shrinks
        "diverged_step": -1,
    }
    assert (stable["final_train_acc"], stable["final_test_acc"]) == (0.97, 0.93)
    assert stable["gain_per_layer_init"] == pytest.approx(1.0)
    assert stable["grad_std_layer1_init"] == pytest.approx(0.03)
    assert stable["regime"] == "stable"


def test_mean_ci_of_no_value_and_of_one_value():
    """No finite value: all NaN and n 0; one: its mean and no interval (a t-interval needs two)."""
    none = mean_ci([float("nan")])
    assert none.n == 0 and all(math.isnan(v) for v in (none.mean, none.lo, none.hi))
    one = mean_ci([2.5, float("inf")])
    assert (one.mean, one.n) == (2.5, 1) and math.isnan(one.lo) and math.isnan(one.hi)


def test_compare_summary_counts_divergences_from_step_0_and_censored_runs():
    """Per scheme: members that diverged (a diverged_step of 0, exploded at init, counts; -1 is
    no divergence) and runs that never reached the target (censored), counted by hand."""
    from hf_init.mlp.analysis import compare_summary

    diverged = {"a": [-1, 0, 7, -1], "b": [-1, -1, -1, 3]}
    reached = {"a": [True, False, False, True], "b": [True, True, False, True]}
    rows = [
        {"activation": "relu", "scheme": s, "seed": seed, "steps_to_target": 10 + seed,
         "reached_target": reached[s][seed], "loss_auc": 0.1 * (seed + 1),
         "final_test_loss": 0.2, "final_test_acc": 0.8, "diverged_step": diverged[s][seed]}
        for s in ("a", "b")
        for seed in range(4)
    ]  # fmt: skip
    res = compare_summary(rows, "a", "b")["relu"]
    assert res["diverged"] == {"a": 2, "b": 1}
    assert res["steps_to_target"]["censored"] == {"a": 2, "b": 1}


def test_paired_comparison_p_from_two_pairs_on_and_none_when_every_difference_is_zero():
    """Two pairs are enough for scipy's Wilcoxon p (0.5 when both favour one side); one pair, or
    differences all exactly 0, give NaN without a warning (scipy would divide 0 by 0). A constant
    difference of +1 is a difference: p = 0.25 with three pairs."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_comparison([2.0, 3.0], [1.0, 2.0])["wilcoxon_p"] == pytest.approx(
            stats.wilcoxon([2.0, 3.0], [1.0, 2.0]).pvalue
        )
        assert paired_comparison([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])["wilcoxon_p"] == pytest.approx(
            0.25
        )
        for a, b in (([1.0], [2.0]), ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])):
            res = paired_comparison(a, b)
            assert math.isnan(res["wilcoxon_p"]) and res["n_pairs"] == len(a)


def test_compare_verdict_at_a_mean_difference_of_exactly_zero_or_a_fraction_of_a_step():
    """Ahead means a mean difference below 0, behind above 0, in both speed metrics. Twelve seeds
    where steps-to-target differ by -66, 1, ..., 11 (mean exactly 0, yet scipy's Wilcoxon p is
    0.034) and a's loss AUC is worse in every seed: a is not behind, so not contradicted; with
    a's AUC better instead it is not ahead either. Behind by half a step and a little AUC in
    every seed (both significant): contradicted."""
    from hf_init.mlp.analysis import compare_summary

    steps_diff = [-66.0, *range(1, 12)]
    assert stats.wilcoxon(steps_diff).pvalue < 0.05 and np.mean(steps_diff) == 0

    def verdict(steps_a, auc_a, alpha=0.05):
        rows = [
            {"activation": "relu", "scheme": s, "seed": seed,
             "steps_to_target": 100.0 + (steps_a[seed] if s == "a" else 0.0),
             "reached_target": True, "loss_auc": 1.0 + (auc_a[seed] if s == "a" else 0.0),
             "final_test_loss": 0.2, "final_test_acc": 0.8, "diverged_step": -1}
            for s in ("a", "b") for seed in range(len(steps_a))
        ]  # fmt: skip
        return compare_summary(rows, "a", "b", alpha)["relu"]["verdict"]

    worse_auc = [0.01 * (i + 1) for i in range(12)]
    assert verdict(steps_diff, worse_auc) == "not supported"
    assert verdict(steps_diff, [-x for x in worse_auc]) == "not supported"
    half_step = [0.5 + 0.01 * i for i in range(12)]
    assert verdict(half_step, worse_auc) == "contradicted: b converges faster"
    # behind in both but not significant (two seeds: p = 0.5): not contradicted
    assert verdict([1.0, 2.0], [0.1, 0.2]) == "not supported"
    # significance is p < alpha: five seeds all ahead give p = 2 / 2^5 = 0.0625, which is not
    # below a level of exactly 0.0625 (and is below 0.07)
    ahead = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert (
        verdict(ahead, ahead, alpha=0.0625) == "not supported: a ahead in the mean, not significant"
    )
    assert verdict(ahead, ahead, alpha=0.07) == "supported"
