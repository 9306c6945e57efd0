"""Logarithmic sweep of the initial weight std of ReLU MLPs: regimes, stability band, depth x std
phase diagram. Every (std, seed) member of a depth trains at once as one vectorised ensemble.

    python scripts/mlp_sweep.py                                   # digits, SGD+momentum
    python scripts/mlp_sweep.py configs/mlp_sweep.yaml --dataset wine --optimizer adam
    python scripts/mlp_sweep.py --dataset mnist --mnist_dir ~/data/mnist --depths 2 4 8

Arguments: an optional YAML config (keys = the flags), then --flags overriding it (--help).
Writes to --output_dir: results.csv (one row per member), records.jsonl (per-layer statistics
and full-split loss/accuracy of every member at every record step), summary.json,
sweep_metrics.png, layer_variance.png, phase_diagram.png, tb/ (TensorBoard, HParams).
"""

import shlex
import sys
import time
from pathlib import Path

from hf_init.core.cli import fail_cleanly

FIGURES = ("sweep_metrics.png", "layer_variance.png", "phase_diagram.png")


def main(argv=None):
    from hf_init.core.outputs import check_output_dir, kept_until_success
    from hf_init.mlp.args import SweepArguments, parse
    from hf_init.mlp.study import STUDY_FILES

    argv = list(argv if argv is not None else sys.argv[1:])
    data_args, model, run_args, sweep = parse(SweepArguments, argv, __doc__)
    stds, depths = sweep.stds, sweep.depths or [model.depth]
    cfg = model.train_config(sweep.record_every, sweep.probe_size, run_args.dtype)
    found = check_output_dir(sweep.output_dir, run_args.overwrite, STUDY_FILES + FIGURES)
    device = run_args.torch_device()
    data = data_args.load().to(device)

    import numpy as np
    import torch

    from hf_init.mlp import plots
    from hf_init.mlp.analysis import sweep_rows, sweep_summary
    from hf_init.mlp.study import TensorBoardRuns, run_sweep, write_study
    from hf_init.theory.recursions import critical_std

    run_args.apply_threads()
    seeds = list(range(sweep.seeds))
    t0 = time.perf_counter()
    runs = run_sweep(
        data,
        stds,
        seeds,
        depths,
        model.width,
        sweep.activation,
        cfg,
        progress=not run_args.no_progress,
    )
    train_s = time.perf_counter() - t0

    rows = [row for run in runs for row in sweep_rows(run, data.n_classes)]
    summary = sweep_summary(rows)
    crit_hidden = critical_std(sweep.activation, model.width)
    crit_first = critical_std(sweep.activation, data.n_features)
    setup = (
        f"{data.description}; MLP {sweep.activation} width {model.width}; {model.describe()} "
        f"({runs[0].steps} steps); {len(seeds)} seeds"
    )
    main_depth = depths[len(depths) // 2]
    figures = {
        "sweep_metrics.png": lambda table, path: plots.sweep_metrics(rows, summary, path, setup),
        "layer_variance.png": lambda table, path: plots.layer_variance(
            table, main_depth, path, setup
        ),
        "phase_diagram.png": lambda table, path: plots.phase_diagram(
            rows, crit_hidden, path, setup
        ),
    }
    assert tuple(figures) == FIGURES
    tb = TensorBoardRuns(
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
    out = Path(sweep.output_dir)
    with kept_until_success(out, found):
        n_tb = write_study(
            out,
            runs,
            rows,
            data_args.dataset,
            figures,
            tb,
            {
                "command": "python scripts/mlp_sweep.py " + " ".join(shlex.quote(a) for a in argv),
                "setup": setup,
                "dataset": data_args.dataset,
                "n_features": data.n_features,
                "n_classes": data.n_classes,
                "stds": stds,
                "seeds": seeds,
                "depths": depths,
                "width": model.width,
                "activation": sweep.activation,
                "optimizer": model.optimizer,
                "lr": model.lr,
                "momentum": model.momentum,
                "epochs": model.epochs,
                "batch_size": model.batch_size,
                "steps": runs[0].steps,
                "chance_loss": data.chance_loss,
                "critical_std_hidden": crit_hidden,
                "critical_std_first_layer": crit_first,
                "band_rule": "a std is stable when > half its seeds are 'stable'; band = longest run of consecutive stable stds",
                "bands": summary,
                "train_seconds": train_s,
                "device": str(device),
                "dtype": run_args.dtype,
                "torch_threads": torch.get_num_threads(),
            },
            t0,
        )
    total_s = time.perf_counter() - t0

    print(setup)
    print(
        f"chance loss ln({data.n_classes}) = {data.chance_loss:.3f}; critical std ({sweep.activation}): "
        f"hidden layers {crit_hidden:.3g}, first layer {crit_first:.3g}"
    )
    for depth in depths:
        band = summary[str(depth)]
        print(
            f"\ndepth {depth}: stable band "
            + (
                f"{band['lo']:.3g} .. {band['hi']:.3g}"
                if band["lo"] is not None
                else "none (no std had a majority of stable seeds)"
            )
            + (
                f"; other stable stds {[f'{s:.3g}' for s in band['stable_stds'] if not band['lo'] <= s <= band['hi']]}"
                if band["lo"] is not None
                and any(not band["lo"] <= s <= band["hi"] for s in band["stable_stds"])
                else ""
            )
        )
        print(
            f"  {'std':>8} {'regimes (seeds)':<34} {'test acc':>8} {'train loss':>10} {'gain/layer':>10}"
        )
        for s in stds:
            sub = [r for r in rows if r["depth"] == depth and r["std"] == s]
            counts = ", ".join(f"{g} {c}" for g, c in band["regime_counts"][f"{s:.3g}"].items())
            acc = (
                np.nanmean([r["final_test_acc"] for r in sub])
                if any(r["diverged_step"] < 0 for r in sub)
                else float("nan")
            )
            loss = (
                np.nanmedian([r["final_train_loss"] for r in sub])
                if any(r["diverged_step"] < 0 for r in sub)
                else float("nan")
            )
            gain = np.nanmedian([r["gain_per_layer_init"] for r in sub])
            print(f"  {s:>8.2e} {counts:<34} {acc:>8.3f} {loss:>10.3g} {gain:>10.3g}")
    print(
        f"\ntrained in {train_s:.1f}s ({total_s:.1f}s with outputs) on {device} ({run_args.dtype}, "
        f"{torch.get_num_threads()} CPU threads); {n_tb} TensorBoard runs; wrote {out}/"
    )
    print(f"  results.csv records.jsonl summary.json {' '.join(FIGURES)} tb/")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
