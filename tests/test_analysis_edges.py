"""Edge cases that tools/mutate.py showed no other test pinned down: ties in the stable band and
in the paired counts, and the theory check's finite-width tolerance written out by hand."""

import math

import pytest


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


def test_theory_check_tolerance_is_k_sigma_over_sqrt_seeds(theory_out):
    """First MLP layer, forward: the input is fixed, so the per-input relative variance of
    E[z_1^2] over weight draws is exactly 2 / n (a mean of n squared Gaussians); over S seeds the
    tolerance is k_sigma * sqrt(2 / (n S)) = 4 * sqrt(2 / (64 * 2)) = 0.5 for every activation."""
    from hf_init.theory.check import read_check_rows

    rows = [
        r
        for r in read_check_rows(theory_out / "theory_check.jsonl")
        if r["network"].startswith("mlp-")
    ]
    first = [r for r in rows if r["quantity"] == "forward" and r["layer"] == 1]
    assert len(first) == 4  # relu, tanh x 2 std multiples
    for r in first:
        assert float(r["tolerance"]) == pytest.approx(4 * math.sqrt(2 / (64 * 2)), rel=1e-12), r
    # deeper layers add the fluctuation of the layer below: strictly wider
    for r in rows:
        if r["quantity"] == "forward" and r["layer"] != 1:
            assert float(r["tolerance"]) > 0.5


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
