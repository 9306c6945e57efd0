"""Deliberate bugs in the statistics, analysis and metric code, and whether the tests catch them.

Each mutant below is (id, file, exact original snippet, replacement, tests). For every mutant
the tool copies the repository to a temporary folder, replaces the snippet (it must occur
exactly once in the file; if the file moved, every .py file under hf_init/ is searched for it),
runs the mutant's tests there with PYTHONPATH pointing at the copy, and records

    caught   the tests failed (or errored) on the mutant
    missed   the tests passed: a bug the suite does not see
    stale    the snippet exists nowhere any more (code changed: update the table)

    python tools/mutate.py                 # every mutant, 2 at a time; prints a markdown table
    python tools/mutate.py --only M05 M12  # some of them
    python tools/mutate.py --list          # the table, nothing run
    python tools/mutate.py --check         # each snippet once in its named file, each test there

Exit status 0 when every non-stale mutant is caught (with --check: when all match), 1 otherwise.
mutmut / cosmic-ray were not used: each mutant runs its named test files (seconds to a minute),
where those tools run the whole suite (minutes here) per mutant over hundreds of generated
mutants; tools/mutate_random.py draws mutants at random over all of hf_init/ instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ANALYSIS = [
    "tests/mlp/test_mlp_analysis.py",
    "tests/mlp/test_mlp_analysis.py::test_stable_band_tie_goes_to_the_lower_run",
    "tests/mlp/test_mlp_analysis.py::test_paired_counts_do_not_count_ties_as_wins",
    "tests/mlp/test_mlp_analysis.py::test_verdict_needs_both_speed_metrics_significant",
]
TOLERANCE = ["tests/theory/test_theory.py::test_theory_check_tolerance_is_k_sigma_over_sqrt_seeds"]
SWEEP = ["tests/mlp/test_mlp_scripts.py::test_sweep_end_to_end_and_refuses_to_overwrite"]
COMPARE = ["tests/mlp/test_mlp_scripts.py::test_compare_end_to_end"]
STUDY = [
    "tests/mlp/test_mlp_study.py::test_compare_results_from_curves",
    "tests/mlp/test_mlp_study.py::test_compare_summary_statistics_match_scipy",
]
THEORY = ["tests/theory/test_theory.py"]
CALLBACKS = ["tests/lm/test_recorders.py"]
VARIANCE = ["tests/lm/test_pretrain.py::test_variance_table_summary_on_hand_made_records"]
METRIC = ["tests/lm/test_pretrain.py::test_next_token_accuracy_on_hand_made_logits"]
FREEZE = ["tests/mlp/test_mlp.py"]
MLP_STUDY, FIG = "tests/mlp/test_mlp_study.py", "tests/core/test_figures.py"
PRETRAIN = "tests/lm/test_pretrain.py"
INSPECT = ["tests/lm/test_modeling.py::test_inspect_init_table_matches_hand_computation"]

# (id, file, original, replacement, tests)
MUTANTS = [
    # hf_init/core/moments.py: population moments and the fused-weight split
    (
        "M01",
        "hf_init/core/moments.py",
        "var = ((x - mean) ** 2).mean()",
        "var = ((x - mean) ** 2).sum() / (n - 1)",
        INSPECT + CALLBACKS,
    ),
    # hf_init/core/moments.py: the one engine of every recorded moment
    ("M02", "hf_init/core/moments.py", "mean_sq = q / n", "mean_sq = q / (n - 1)", CALLBACKS),
    (
        "M03",
        "hf_init/core/moments.py",
        "var = (mean_sq - mean * mean).clamp(min=0.0)",
        "var = (mean_sq + mean * mean).clamp(min=0.0)",
        CALLBACKS,
    ),
    (
        "M04",
        "hf_init/lm/families.py",
        "return dict(zip(self.parts, weight.chunk(len(self.parts), dim=1)))",
        "return dict(zip(self.parts, weight.chunk(len(self.parts), dim=1)[::-1]))",
        INSPECT + CALLBACKS,
    ),
    # hf_init/metrics: next-token accuracy
    (
        "M05",
        "hf_init/lm/metrics/next_token_accuracy/next_token_accuracy.py",
        "pred, ref = np.asarray(pred[:-1]), np.asarray(ref[1:])",
        "pred, ref = np.asarray(pred), np.asarray(ref)",
        METRIC,
    ),
    (
        "M06",
        "hf_init/lm/metrics/next_token_accuracy/next_token_accuracy.py",
        "keep = ref != -100",
        "keep = ref >= -100",
        METRIC,
    ),
    # hf_init/lm/recorders.py: what is written per record
    (
        "M07",
        "hf_init/lm/recorders.py",
        '{"var": var, "mean": mean, "rms": rms,',
        '{"var": rms, "mean": mean, "rms": var,',
        CALLBACKS,
    ),
    (
        "M08",
        "hf_init/lm/recorders.py",
        "gvar, grms = (g[layer][i][1], g[layer][i][2])",
        "gvar, grms = (g[layer][i][2], g[layer][i][1])",
        CALLBACKS,
    ),
    # hf_init/lm/variance.py: the pretraining summary
    (
        "M09",
        "hf_init/lm/variance.py",
        "reached = np.abs(change) >= np.abs(total) / 2",
        "reached = np.abs(change) >= np.abs(total) / 4",
        VARIANCE,
    ),
    (
        "M10",
        "hf_init/lm/variance.py",
        '"ratio": end / start if start > 0',
        '"ratio": start / end if start > 0',
        VARIANCE,
    ),
    (
        "M11",
        "hf_init/lm/variance.py",
        "return np.nanmax(v, axis=0) / np.nanmin(v, axis=0)",
        "return np.nanmax(v, axis=0) / np.nanmean(v, axis=0)",
        VARIANCE,
    ),
    # hf_init/mlp/analysis.py: regimes, band, paired statistics, verdict
    (
        "M12",
        "hf_init/mlp/analysis.py",
        "gain = gain_per_layer(rec.preact_var[0, m])",
        "gain = gain_per_layer(rec.preact_var[-1, m])",
        SWEEP,
    ),
    (
        "M13",
        "hf_init/mlp/analysis.py",
        "return float(np.exp((np.log(v[-1]) - np.log(v[0])) / (v.size - 1)))",
        "return float(np.exp((np.log(v[-1]) - np.log(v[0])) / v.size))",
        ANALYSIS,
    ),
    (
        "M14",
        "hf_init/mlp/analysis.py",
        "if final_loss < thresholds.learned_fraction * chance and not exploded_init:",
        "if final_loss < thresholds.learned_fraction * chance:",
        ANALYSIS,
    ),
    (
        "M15",
        "hf_init/mlp/analysis.py",
        "(math.isfinite(gain) and gain > 1.0)",
        "(math.isfinite(gain) and gain < 1.0)",
        ANALYSIS,
    ),
    (
        "M16",
        "hf_init/mlp/analysis.py",
        "ok = [f > 0.5 for f in frac]",
        "ok = [f >= 0.5 for f in frac]",
        ANALYSIS,
    ),
    (
        "M17",
        "hf_init/mlp/analysis.py",
        "if i - cur > best[1] - best[0]:",
        "if i - cur >= best[1] - best[0]:",
        ANALYSIS,
    ),
    (
        "M18",
        "hf_init/mlp/analysis.py",
        "return min(1.0, 2.0 / 2**n)",
        "return min(1.0, 1.0 / 2**n)",
        ANALYSIS,
    ),
    (
        "M19",
        "hf_init/mlp/analysis.py",
        "half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)",
        "half = float(stats.t.ppf(0.5 + confidence / 2, n)",
        ANALYSIS,
    ),
    (
        "M20",
        "hf_init/mlp/analysis.py",
        'significant = all(m["wilcoxon_p"] < alpha for m in speed)',
        'significant = any(m["wilcoxon_p"] < alpha for m in speed)',
        ANALYSIS,
    ),
    (
        "M21",
        "hf_init/mlp/analysis.py",
        "        elif better:",
        "        elif not worse:",
        ANALYSIS + COMPARE,
    ),
    (
        "M22",
        "hf_init/mlp/analysis.py",
        "return float(steps[hit[0]]) if hit.size",
        "return float(steps[hit[-1]]) if hit.size",
        ANALYSIS,
    ),
    (
        "M23",
        "hf_init/mlp/analysis.py",
        "return float(np.trapezoid(losses, steps) / (steps[-1] - steps[0]))",
        "return float(np.trapezoid(losses, steps))",
        ANALYSIS,
    ),
    (
        "M24",
        "hf_init/mlp/analysis.py",
        '"steps_to_target": s if math.isfinite(s) else last + 1,',
        '"steps_to_target": s if math.isfinite(s) else last,',
        STUDY,
    ),
    (
        "M25",
        "hf_init/mlp/analysis.py",
        '"a_better_count": int(np.sum(d < 0 if lower_is_better else d > 0)),',
        '"a_better_count": int(np.sum(d <= 0 if lower_is_better else d > 0)),',
        ANALYSIS,
    ),
    # hf_init/theory/recursions.py: the recursion
    (
        "M26",
        "hf_init/theory/recursions.py",
        "return math.sqrt(2.0 / fan_in)",
        "return math.sqrt(1.0 / fan_in)",
        THEORY,
    ),
    (
        "M27",
        "hf_init/theory/recursions.py",
        "return q / 2.0, np.full_like(q, 0.5)",
        "return q / 2.0, np.full_like(q, 1.0)",
        THEORY,
    ),
    (
        "M28",
        "hf_init/theory/recursions.py",
        "g[:, l] = w2[l + 1] * widths[l + 2] * e_dphi2[:, l] * g[:, l + 1]",
        "g[:, l] = w2[l + 1] * widths[l + 1] * e_dphi2[:, l] * g[:, l + 1]",
        THEORY,
    ),
    (
        "M29",
        "hf_init/theory/recursions.py",
        "q_relvar[:, l] = (1 + 2.0 / n) * (1 + s_relvar[:, l]) - 1",
        "q_relvar[:, l] = (1 + 1.0 / n) * (1 + s_relvar[:, l]) - 1",
        TOLERANCE + THEORY,
    ),
    # hf_init/theory/check.py: the theory check's records and verdict (within tolerance:
    # |relative_error| <= tolerance, counted in the verdict)
    (
        "M30",
        "hf_init/theory/check.py",
        'ok = sum(abs(r["relative_error"]) <= r["tolerance"] for r in rs)',
        'ok = sum(abs(r["relative_error"]) > r["tolerance"] for r in rs)',
        THEORY,
    ),
    (
        "M31",
        "hf_init/theory/check.py",
        '"relative_error": float(m[:, l].mean() / p[l] - 1.0)',
        '"relative_error": float(p[l] / m[:, l].mean() - 1.0)',
        THEORY,
    ),
    (
        "M32",
        "hf_init/theory/check.py",
        "tol = k_sigma * np.sqrt(relvar / len(seeds))",
        "tol = k_sigma * np.sqrt(relvar)",
        TOLERANCE + THEORY,
    ),
    (
        "M33",
        "hf_init/theory/check.py",
        'ok = sum(abs(r["relative_error"]) <= r["tolerance"] for r in rs)',
        "ok = len(rs)",
        THEORY,
    ),
    # hf_init/mlp/training.py: the freeze of a diverged member, the written-out backward
    (
        "M34",
        "hf_init/mlp/training.py",
        '    if alive.device.type != "cpu" or bool(dead.any()):',
        "    if False:",
        FREEZE,
    ),
    (
        "M35",
        "hf_init/mlp/training.py",
        "dz.scatter_add_(1, target, buf.minus_one).mul_(1.0 / B)",
        "dz.scatter_add_(1, target, buf.minus_one)",
        FREEZE,
    ),
    (
        "M36",
        "hf_init/mlp/training.py",
        "dh = torch.bmm(Ws[l].transpose(1, 2), dz, out=buf.dh[l - 1])",
        "dh = torch.bmm(Ws[l], dz, out=buf.dh[l - 1])",
        FREEZE,
    ),
    # the reused float64 workspace: bounded passes, two-pass row variances
    (
        "M37",
        "hf_init/core/moments.py",
        "        x.sub_(x.mean(dim=1, keepdim=True))\n",
        "",
        ["tests/core/test_moments.py"],
    ),
    (
        "M38",
        "hf_init/core/moments.py",
        "x.view(len(chunk), lr, n_blocks, c)",
        "x.view(len(chunk), n_blocks, lr, c).transpose(1, 2)",
        ["tests/core/test_moments.py"],
    ),
    # study outputs and figures: each break is one that the tests of what the scripts write and of
    # the figures must see
    (
        "N01",
        "hf_init/lm/modeling.py",
        "spec = WeightSpec(role, *fans(part.shape, layout), dims.n_layer",
        "spec = WeightSpec(role, *fans(part.shape[::-1], layout), dims.n_layer",
        INSPECT,
    ),
    (
        "N02",
        "hf_init/mlp/study.py",
        "stats = {name: float(getattr(rec, name)[r, m]) for name in SPLIT_STATISTICS}",
        "stats = {name: float(getattr(rec, name.replace('train', 'test'))[r, m])"
        " for name in SPLIT_STATISTICS}",
        [f"{MLP_STUDY}::test_sweep_loss_records"],
    ),
    (
        "N03",
        "hf_init/mlp/analysis.py",
        "{g: rr.count(g) for g in REGIMES if rr.count(g)}",
        "{g: rr.count(g) for g in REGIMES[1:] if rr.count(g)}",
        [f"{MLP_STUDY}::test_sweep_summary_json"],
    ),
    (
        "N04",
        "hf_init/mlp/job.py",
        '"final_test_loss": r["final_test_loss"],',
        '"final_test_loss": r["final_train_loss"],',
        [f"{MLP_STUDY}::test_sweep_tensorboard_hparams"],
    ),
    (
        "N05",
        "hf_init/lm/pretrain.py",
        "if len(set(digests)) != 1:",
        "if len(set(digests)) > 2:",
        [f"{PRETRAIN}::test_tokenizer_mismatch_across_ranks_is_refused_on_every_rank"],
    ),
    (
        "N06",
        "hf_init/core/outputs.py",
        "        for name in found:\n            os.replace(out / name, backup / name)",
        "        for name in [n for n in found if n != 'tb']:\n"
        "            os.replace(out / name, backup / name)",
        [
            f"{MLP_STUDY}::test_sweep_overwrite_replaces_the_previous_study",
            f"{MLP_STUDY}::test_compare_overwrite_replaces_the_previous_study",
        ],
    ),
    (
        "N07",
        "hf_init/mlp/analysis.py",
        '"a_better_count": int(np.sum(d < 0 if lower_is_better else d > 0)),',
        '"a_better_count": int(np.sum(d > 0 if lower_is_better else d < 0)),',
        [f"{MLP_STUDY}::test_compare_summary_statistics_match_scipy"],
    ),
    (
        "N08",
        "hf_init/lm/plots.py",
        "ax.plot(table.steps[ok], values[i][ok]",
        "ax.plot(table.steps[ok], values[0][ok]",
        [f"{FIG}::test_pretrain_variance_figure"],
    ),
    (
        "N09",
        "hf_init/mlp/plots.py",
        'ys = [_nanmean([r[key] for r in sub if r["std"] == s]) for s in stds]',
        'ys = [_nanmean([r[key] for r in rows if r["std"] == s]) for s in stds]',
        [f"{FIG}::test_sweep_metrics_figure"],
    ),
    (
        "N10",
        "hf_init/mlp/plots.py",
        "[c.mean for c in cis]",
        "[c.hi for c in cis]",
        [f"{FIG}::test_compare_curves_figure"],
    ),
    (
        "N11",
        "hf_init/theory/plots.py",
        '[r["predicted"] for r in sel],\n                "-",\n                color=color,',
        '[r["measured"] for r in sel],\n                "-",\n                color=color,',
        [f"{FIG}::test_theory_mlp_forward_figure"],
    ),
    # beyond the paper: depth-aware init, Llama's grouped-query fans, spikes, collapse, reports
    (
        "N12",
        "hf_init/core/schemes.py",
        "return o.initializer_range / math.sqrt(2 * (spec.layer + 1))",
        "return o.initializer_range / math.sqrt(2 * spec.layer + 1)",
        ["tests/core/test_schemes.py::test_every_weight_kind_matches_formula"],
    ),
    (
        "N13",
        "hf_init/lm/families.py",
        '"k": (d, kv),',
        '"k": (d, heads),',
        [
            "tests/lm/test_llama.py::test_layout_table_names_every_stock_weight_with_its_fans",
            "tests/theory/test_theory.py::test_llama_scheme_stds_are_the_built_models",
        ],
    ),
    (
        "N14",
        "hf_init/lm/spikes.py",
        "std = math.sqrt(math.fsum((x - mean) ** 2 for x in last) / window)",
        "std = math.sqrt(math.fsum((x - mean) ** 2 for x in last) / (window - 1))",
        ["tests/lm/test_spikes.py::test_zscores_flags_and_counts_equal_a_hand_computation"],
    ),
    (
        "N15",
        "hf_init/lm/stability.py",
        "return float(np.mean(np.log(np.arange(1, block_size + 1))))",
        "return float(np.mean(np.log(np.arange(2, block_size + 2))))",
        ["tests/lm/test_stability.py::test_uniform_entropy_is_the_mean_of_log_t_plus_one"],
    ),
    (
        "N16",
        "hf_init/report.py",
        "    stem = run.stem\n",
        "    stem = run.path.name\n",
        ["tests/lm/test_llama.py::test_report_on_a_gpt2_and_a_llama_study_compares_the_families"],
    ),
    # gaps the random mutants found (docs/testing.md): figures' colours and which records they
    # draw, the robustness reruns' parameters, a diverged member's gradient, a micro-batch sum
    (
        "N17",
        "hf_init/mlp/plots.py",
        "grid[i, j] = names.index(max(names, key=regs.count))",
        "grid[i, j] = names.index(min(names, key=regs.count))",
        [
            "tests/core/test_figures_hand_made.py::test_phase_diagram_colours_each_cell_by_its_majority_regime"
        ],
    ),
    (
        "N18",
        "hf_init/lm/plots.py",
        'sel = table[(table["role"] == "attn") & '
        'table["statistic"].isin(["logit_std", "entropy"])]',
        'sel = table[table["statistic"].isin(["logit_std", "entropy"])]',
        [
            "tests/core/test_figures_hand_made.py::test_attention_figure_reads_only_attention_records_and_its_axes"
        ],
    ),
    (
        "N19",
        "hf_init/lm/equilibration.py",
        "eq = equilibration_table(frame, early_window * f, tolerance * f, smoothing)",
        "eq = equilibration_table(frame, early_window, tolerance * f, smoothing)",
        [
            "tests/lm/test_equilibration.py::test_robustness_reruns_halve_and_double_the_early_window"
        ],
    ),
    (
        "N20",
        "hf_init/mlp/training.py",
        "ok = torch.isfinite(losses) & torch.isfinite(gsum)",
        "ok = torch.isfinite(losses)",
        [
            "tests/mlp/test_mlp.py::test_a_member_diverges_when_its_loss_or_its_gradient_is_not_finite"
        ],
    ),
    (
        "N21",
        "hf_init/lm/spikes.py",
        "self._loss = loss if self._loss is None else self._loss + loss",
        "self._loss = loss",
        [
            "tests/lm/test_spikes.py::test_step_values_sum_a_steps_micro_batch_losses_and_take_its_norm"
        ],
    ),
    (
        "N22",
        "hf_init/theory/recursions.py",
        "h, pos = 1e-4, q > 0",
        "h, pos = 1e-4, q >= 0",
        [
            "tests/theory/test_theory.py::test_an_all_zero_input_adds_nothing_to_the_batch_but_its_zero"
        ],
    ),
    (
        "N23",
        "hf_init/theory/recursions.py",
        "tau_sum[layer] += tau2.mean()\n    out /= len(ids)\n    return ResidualPrediction("
        "out[0], out[1, 1:], out[2, 1:], out[3, 1:], tau_sum / len(ids))\n\n\ndef _attention",
        "tau_sum[layer] += tau2.max()\n    out /= len(ids)\n    return ResidualPrediction("
        "out[0], out[1, 1:], out[2, 1:], out[3, 1:], tau_sum / len(ids))\n\n\ndef _attention",
        [
            "tests/theory/test_theory.py::test_kernel_predictions_compose_their_branches_block_by_block"
        ],
    ),
    (
        "N24",
        "hf_init/lm/modeling.py",
        "            if isinstance(module, nn.Linear):\n",
        "            if isinstance(module, nn.Linear)"
        " and module.out_features == self.config.vocab_size:\n",
        ["tests/lm/test_modeling.py::test_a_resized_untied_head_is_initialized_as_the_lm_head"],
    ),
    (
        "N25",
        "hf_init/theory/recursions.py",
        "h_relvar = (1 + _excess(e4, e2) / n) * (1 + elast**2 * s_relvar[:, l]) - 1",
        "h_relvar = (1 + _excess(e4, e2) / n) * (1 + s_relvar[:, l]) - 1",
        [
            "tests/theory/test_theory.py::"
            "test_forward_and_backward_fluctuations_written_out_for_a_smooth_activation"
        ],
    ),
    (
        "N26",
        "hf_init/report.py",
        "losses = losses[np.isfinite(losses) & (losses > 0)]",
        "losses = losses[np.isfinite(losses)]",
        [
            "tests/core/test_figures_hand_made.py::"
            "test_report_loss_figure_one_colour_per_group_and_log_only_for_a_wide_span"
        ],
    ),
    (
        "N27",
        "hf_init/lm/equilibration.py",
        'if row["n_seeds"] and row["min_p"] > alpha:',
        'if row["n_seeds"] and row["min_p"] > ALPHA:',
        [
            "tests/lm/test_equilibration.py::"
            "test_sentences_name_the_run_and_the_parameter_that_was_varied_at_the_level_asked"
        ],
    ),
    (
        "N28",
        "hf_init/report.py",
        '.drop_duplicates("step", keep="last")',
        '.drop_duplicates("step")',
        [
            "tests/test_report.py::"
            "test_train_loss_curves_reads_every_logged_point_and_a_resumed_steps_latest_value"
        ],
    ),
]


TEST_ENV = {
    "MPLBACKEND": "Agg",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def copy_tree(dst: Path) -> None:
    """The repository without .git, caches and run outputs, copied to ``dst`` (a mutant's tree)."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "runs", "*.egg-info")
    shutil.copytree(ROOT, dst, ignore=ignore, dirs_exist_ok=True)


def pytest_in_copy(
    copy: Path, tests: list[str], timeout: float, options: tuple[str, ...] = ()
) -> tuple[int | None, str]:
    """``pytest -x`` on ``tests`` inside the copied tree, importing the copy's hf_init, with
    pytest's ``options`` (a marker selection): (exit code, or None on timeout; the first failing
    or erroring test, "" when none)."""
    env = dict(os.environ, PYTHONPATH=str(copy), **TEST_ENV)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *options]
    cmd += tests
    try:
        proc = subprocess.run(
            cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, ""
    # the short summary's "FAILED <node id> - <message>" (a parametrized node id may hold
    # spaces); a captured log line such as "ERROR    datasets...: ..." is no test
    failed = [
        node
        for line in proc.stdout.splitlines()
        if line.startswith(("FAILED ", "ERROR "))
        for node in [line.split(" ", 1)[1].split(" - ", 1)[0]]
        if "::" in node or node.endswith(".py")
    ]
    return proc.returncode, failed[0] if failed else ""


def _locate(copy: Path, file: str, original: str) -> tuple[Path | None, str]:
    """The file holding ``original`` exactly once: the named file, else any hf_init/*.py."""
    named = copy / file
    if named.is_file() and named.read_text().count(original) == 1:
        return named, file
    hits = [
        p for p in sorted((copy / "hf_init").rglob("*.py")) if p.read_text().count(original) == 1
    ]
    if len(hits) == 1:
        return hits[0], str(hits[0].relative_to(copy))
    return None, file


def check(mutants) -> list[str]:
    """What no longer matches the tree, one line each: a snippet not found exactly once in its
    named file, a test file or test function that does not exist."""
    problems = []
    for mid, file, original, _, tests in mutants:
        path = ROOT / file
        n = path.read_text().count(original) if path.is_file() else 0
        if n != 1:
            problems.append(f"{mid}: snippet found {n} times in {file}")
        for test in tests:
            test_file, _, name = test.partition("::")
            source = (ROOT / test_file).read_text() if (ROOT / test_file).is_file() else None
            if source is None:
                problems.append(f"{mid}: no test file {test_file}")
            elif name and f"def {name.split('[')[0]}(" not in source:
                problems.append(f"{mid}: no test {name} in {test_file}")
    return problems


def run_mutant(mutant, timeout: int = 900) -> dict:
    mid, file, original, replacement, tests = mutant
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mid}-") as tmp:
        copy = Path(tmp) / "repo"
        copy_tree(copy)
        path, where = _locate(copy, file, original)
        if path is None:
            return {
                "id": mid,
                "file": file,
                "status": "stale",
                "seconds": 0.0,
                "detail": "snippet not found",
            }
        path.write_text(path.read_text().replace(original, replacement, 1))
        rc, failed = pytest_in_copy(copy, tests, timeout)
    status = "missed" if rc == 0 else "caught"
    if rc is None:
        detail = "timeout"
    else:
        detail = failed or (f"no test failed (rc {rc})" if rc else "")
    return {
        "id": mid,
        "file": where,
        "status": status,
        "seconds": time.perf_counter() - t0,
        "detail": detail,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", nargs="*", default=None, help="mutant ids to run (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    p.add_argument(
        "--check",
        action="store_true",
        help="check that every snippet occurs once in its file and every test exists; run nothing",
    )
    args = p.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only is None or m[0] in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        print(
            f"error: unknown mutant id in {args.only}; known: {', '.join(m[0] for m in MUTANTS)}",
            file=sys.stderr,
        )
        return 2
    if args.check:
        problems = check(chosen)
        print("\n".join(problems) or f"all {len(chosen)} mutants match the tree")
        return 1 if problems else 0
    if args.list:
        for mid, file, original, replacement, tests in chosen:
            print(f"{mid}  {file}\n     - {original}\n     + {replacement}")
            print(f"     tests: {' '.join(tests)}")
        return 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = []
        for r in pool.map(run_mutant, chosen):
            print(
                f"{r['id']} {r['status']:<6} {r['seconds']:5.0f}s {r['file']}  {r['detail']}",
                flush=True,
            )
            results.append(r)
    print("\n| mutant | file | change | result | first failing test |")
    print("|---|---|---|---|---|")
    for (mid, _, original, replacement, _), r in zip(chosen, results):
        change = f"`{original.strip()}` -> `{replacement.strip()}`".replace("|", "\\|")
        change = " ".join(change.split())  # one table line, even for a multi-line snippet
        print(f"| {mid} | {r['file']} | {change} | {r['status']} | {r['detail']} |")
    live = [r for r in results if r["status"] != "stale"]
    caught = sum(r["status"] == "caught" for r in live)
    stale = len(results) - len(live)
    print(f"\ncaught {caught}/{len(live)} mutants" + (f" ({stale} stale)" if stale else ""))
    return 0 if caught == len(live) else 1


if __name__ == "__main__":
    sys.exit(main())
