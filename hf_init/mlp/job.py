"""The two MLP study jobs behind ``scripts/mlp_sweep.py`` and ``scripts/mlp_init_compare.py``:
check the output folder, load the data, train the study's ensembles, write the study
(:func:`hf_init.mlp.study.write_study`) and print its summary.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hf_init.core.outputs import check_output_dir, kept_until_success
from hf_init.mlp import plots
from hf_init.mlp.analysis import (
    compare_rows,
    compare_summary,
    min_wilcoxon_p,
    sweep_rows,
    sweep_summary,
)
from hf_init.mlp.args import (
    CompareArguments,
    MLPModelArguments,
    MLPRunArguments,
    SweepArguments,
    TabularDataArguments,
)
from hf_init.mlp.study import STUDY_FILES, TensorBoardRuns, run_compare, run_sweep, write_study
from hf_init.theory.recursions import critical_std

SWEEP_FIGURES = ("sweep_metrics.png", "layer_variance.png", "phase_diagram.png")
COMPARE_FIGURES = ("compare_curves.png",)
COMPARE_REPORTED = ("steps_to_target", "loss_auc", "final_test_loss", "final_test_acc")
BAND_RULE = (
    "a std is stable when > half its seeds are 'stable'; "
    "band = longest run of consecutive stable stds"
)
COMPARE_NOTES = (
    "normal schemes only: each seed's single standard-normal draw is rescaled by each scheme's "
    "std; kaiming uses the activation's gain, fan_in; steps_to_target censored at steps+1 when "
    "never reached; 95% intervals: t-distribution over seeds; p: two-sided Wilcoxon signed-rank "
    "on the paired seeds"
)


def _open_study(data_args: TabularDataArguments, run_args: MLPRunArguments, output_dir, figures):
    """(what the output folder already holds, the device, the data on it), in that order so a
    refused folder or device stops before the data is read; then the thread count is set."""
    found = check_output_dir(output_dir, run_args.overwrite, STUDY_FILES + figures)
    device = run_args.torch_device()
    data = data_args.load().to(device)
    run_args.apply_threads()
    return found, device, data


def _run_facts(run_args: MLPRunArguments, device, train_s: float) -> dict:
    """Where and how fast a study trained (the end of its summary.json)."""
    return {
        "train_seconds": train_s,
        "device": str(device),
        "dtype": run_args.dtype,
        "torch_threads": torch.get_num_threads(),
    }


def _trained_line(train_s, total_s, device, run_args, n_tb, out) -> str:
    return (
        f"\ntrained in {train_s:.1f}s ({total_s:.1f}s with outputs) on {device} "
        f"({run_args.dtype}, {torch.get_num_threads()} CPU threads); {n_tb} TensorBoard runs; "
        f"wrote {out}/"
    )


# --- the std sweep -------------------------------------------------------------------------


def sweep_job(
    data_args: TabularDataArguments,
    model: MLPModelArguments,
    run_args: MLPRunArguments,
    sweep: SweepArguments,
    command: str,
) -> None:
    """Train every (depth, std, seed) member, write the sweep study into ``sweep.output_dir``
    and print each depth's stable band and regimes."""
    depths = sweep.depths or [model.depth]
    cfg = model.train_config(sweep.record_every, sweep.probe_size, run_args.dtype)
    found, device, data = _open_study(data_args, run_args, sweep.output_dir, SWEEP_FIGURES)
    seeds = list(range(sweep.seeds))
    t0 = time.perf_counter()
    progress = not run_args.no_progress
    runs = run_sweep(data, sweep.stds, seeds, depths, model.width, sweep.activation, cfg, progress)
    train_s = time.perf_counter() - t0
    rows = [row for run in runs for row in sweep_rows(run, data.n_classes)]
    summary = sweep_summary(rows)
    facts = {
        "command": command,
        **_sweep_facts(data_args, data, model, sweep, depths, seeds, runs[0].steps, summary),
        **_run_facts(run_args, device, train_s),
    }
    setup, crit_hidden = facts["setup"], facts["critical_std_hidden"]
    figures = _sweep_figures(rows, summary, figure_depth(depths), crit_hidden, setup)
    out = Path(sweep.output_dir)
    with kept_until_success(out, found):
        tb = _sweep_tensorboard(model, data_args)
        n_tb = write_study(out, runs, rows, data_args.dataset, figures, tb, facts, t0)
    total_s = time.perf_counter() - t0
    print(setup)
    print(
        f"chance loss ln({data.n_classes}) = {data.chance_loss:.3f}; critical std "
        f"({sweep.activation}): hidden layers {crit_hidden:.3g}, "
        f"first layer {facts['critical_std_first_layer']:.3g}"
    )
    _print_bands(summary, rows, depths, sweep.stds)
    print(_trained_line(train_s, total_s, device, run_args, n_tb, out))
    print(f"  results.csv records.jsonl summary.json {' '.join(SWEEP_FIGURES)} tb/")


def _sweep_facts(data_args, data, model, sweep, depths, seeds, steps, summary) -> dict:
    """What a sweep's summary.json says of its setup, bands and the critical stds."""
    return {
        "setup": (
            f"{data.description}; MLP {sweep.activation} width {model.width}; "
            f"{model.describe()} ({steps} steps); {len(seeds)} seeds"
        ),
        "dataset": data_args.dataset,
        "n_features": data.n_features,
        "n_classes": data.n_classes,
        "stds": sweep.stds,
        "seeds": seeds,
        "depths": depths,
        "width": model.width,
        "activation": sweep.activation,
        "optimizer": model.optimizer,
        "lr": model.lr,
        "momentum": model.momentum,
        "epochs": model.epochs,
        "batch_size": model.batch_size,
        "steps": steps,
        "chance_loss": data.chance_loss,
        "critical_std_hidden": critical_std(sweep.activation, model.width),
        "critical_std_first_layer": critical_std(sweep.activation, data.n_features),
        "band_rule": BAND_RULE,
        "bands": summary,
    }


def figure_depth(depths: list[int]) -> int:
    """The depth whose per-layer variance figure the sweep draws: the middle one of the swept
    depths in increasing order (the deeper of the two middle ones for an even count), so the
    figure shows a depth at which the regimes have had layers to develop."""
    ordered = sorted(depths)
    return ordered[len(ordered) // 2]


def _sweep_figures(rows, summary, main_depth, crit_hidden, setup) -> dict:
    """The sweep's figures by file name, each drawn from the records table and a path."""
    figures = {
        "sweep_metrics.png": lambda table, path: plots.sweep_metrics(rows, summary, path, setup),
        "layer_variance.png": lambda table, path: plots.layer_variance(
            table, main_depth, path, setup
        ),
        "phase_diagram.png": lambda table, path: plots.phase_diagram(
            rows, crit_hidden, path, setup
        ),
    }
    assert tuple(figures) == SWEEP_FIGURES
    return figures


def _sweep_tensorboard(model: MLPModelArguments, data_args: TabularDataArguments):
    return TensorBoardRuns(
        name=lambda k: f"depth{k['depth']}_std{k['std']:.2e}_seed{k['seed']}",
        hparams=lambda k: {
            **k,
            "width": model.width,
            "optimizer": model.optimizer,
            "lr": model.lr,
            "dataset": data_args.dataset,
        },
        metrics=lambda r: {
            "final_train_loss": r["final_train_loss"],
            "final_test_loss": r["final_test_loss"],
            "final_test_acc": r["final_test_acc"],
            "diverged": float(r["diverged_step"] >= 0),
            "stable": float(r["regime"] == "stable"),
        },
    )


def _band_text(band: dict) -> str:
    """A depth's stable band, and the stable stds outside it."""
    if band["lo"] is None:
        return "none (no std had a majority of stable seeds)"
    text = f"{band['lo']:.3g} .. {band['hi']:.3g}"
    outside = [s for s in band["stable_stds"] if not band["lo"] <= s <= band["hi"]]
    if outside:
        text += f"; other stable stds {[f'{s:.3g}' for s in outside]}"
    return text


def _print_bands(summary: dict, rows: list[dict], depths: list[int], stds: list[float]) -> None:
    """Each depth's band and, per std, its regimes, test accuracy, train loss and gain."""
    for depth in depths:
        band = summary[str(depth)]
        print(f"\ndepth {depth}: stable band " + _band_text(band))
        print(
            f"  {'std':>8} {'regimes (seeds)':<34} {'test acc':>8} {'train loss':>10} "
            f"{'gain/layer':>10}"
        )
        for s in stds:
            sub = [r for r in rows if r["depth"] == depth and r["std"] == s]
            counts = ", ".join(f"{g} {c}" for g, c in band["regime_counts"][f"{s:.3g}"].items())
            trained = any(r["diverged_step"] < 0 for r in sub)
            acc = np.nanmean([r["final_test_acc"] for r in sub]) if trained else float("nan")
            loss = np.nanmedian([r["final_train_loss"] for r in sub]) if trained else float("nan")
            gain = np.nanmedian([r["gain_per_layer_init"] for r in sub])
            print(f"  {s:>8.2e} {counts:<34} {acc:>8.3f} {loss:>10.3g} {gain:>10.3g}")


# --- the controlled scheme comparison ------------------------------------------------------


def compare_job(
    data_args: TabularDataArguments,
    model: MLPModelArguments,
    run_args: MLPRunArguments,
    study: CompareArguments,
    command: str,
) -> None:
    """Train both schemes from the same draws per (activation, seed), write the comparison
    into ``study.output_dir`` and print its paired statistics and verdicts."""
    a, b = study.schemes
    cfg = model.train_config(study.record_every, 256, run_args.dtype)
    found, device, data = _open_study(data_args, run_args, study.output_dir, COMPARE_FIGURES)
    target = study.target_loss if study.target_loss is not None else 0.25 * data.chance_loss
    seeds = list(range(study.seeds))
    progress = not run_args.no_progress
    t0 = time.perf_counter()
    runs = run_compare(
        data, [a, b], seeds, model.depth, model.width, study.activations, cfg, progress=progress
    )
    train_s = time.perf_counter() - t0
    rows = [row for run in runs for row in compare_rows(run, target)]
    summary = compare_summary(rows, a, b)
    steps = runs[0].steps
    setup = (
        f"{data.description}; MLP depth {model.depth} x width {model.width}; {model.describe()} "
        f"({steps} steps); {len(seeds)} seeds"
    )
    facts = {
        "command": command,
        "setup": setup,
        "schemes": [a, b],
        "activations": study.activations,
        "seeds": seeds,
        "steps": steps,
        "target_loss": target,
        "chance_loss": data.chance_loss,
        "min_possible_wilcoxon_p": min_wilcoxon_p(len(seeds)),
        "notes": COMPARE_NOTES,
        "comparison": summary,
        **_run_facts(run_args, device, train_s),
    }
    figures = _compare_figures(target, f"{a} vs {b}: {setup}")
    out = Path(study.output_dir)
    with kept_until_success(out, found):
        tb = _compare_tensorboard(model)
        n_tb = write_study(out, runs, rows, data_args.dataset, figures, tb, facts, t0)
    total_s = time.perf_counter() - t0
    print(setup)
    print(
        f"target loss {target:.3g} (chance ln({data.n_classes}) = {data.chance_loss:.3f}); "
        f"smallest two-sided Wilcoxon p possible with {len(seeds)} seeds: "
        f"{min_wilcoxon_p(len(seeds)):.3g}"
    )
    _print_comparisons(summary, a, b)
    print(_trained_line(train_s, total_s, device, run_args, n_tb, out))


def _compare_figures(target: float, title: str) -> dict:
    """The comparison's figure by file name, drawn from the records table and a path."""
    figures = {
        "compare_curves.png": lambda table, path: plots.compare_curves(table, target, path, title)
    }
    assert tuple(figures) == COMPARE_FIGURES
    return figures


def _compare_tensorboard(model: MLPModelArguments) -> TensorBoardRuns:
    return TensorBoardRuns(
        name=lambda k: f"{k['activation']}_{k['scheme']}_seed{k['seed']}",
        hparams=lambda k: {
            **k,
            "depth": model.depth,
            "width": model.width,
            "optimizer": model.optimizer,
            "lr": model.lr,
        },
        metrics=lambda r: {key: r[key] for key in COMPARE_REPORTED},
    )


def _interval(c: dict) -> str:
    return f"{c['mean']:.4g} [{c['lo']:.4g}, {c['hi']:.4g}]"


def _print_comparisons(summary: dict, a: str, b: str) -> None:
    """Per activation: each metric's intervals and paired test, then the verdict."""
    for act, res in summary.items():
        print(f"\n{act}: {a} (A) vs {b} (B), mean [95% CI] over seeds")
        for metric in COMPARE_REPORTED:
            r = res[metric]
            print(
                f"  {metric:<16} A {_interval(r['a']):<28} B {_interval(r['b']):<28} "
                f"A better in {r['a_better_count']}/{r['n_pairs']}"
                f"  Wilcoxon p {r['wilcoxon_p']:.3g}"
            )
        cens = res["steps_to_target"]["censored"]
        print(
            f"  never reached the target: A {cens[a]}, B {cens[b]}; "
            f"diverged: A {res['diverged'][a]}, B {res['diverged'][b]}"
        )
        print(
            f"  '{a} converges faster than {b} under {act}' (steps to target and loss AUC): "
            f"{res['verdict']}"
        )
