"""Logarithmic sweep of the initial weight std of ReLU MLPs: regimes, stability band, depth x std
phase diagram. Every (std, seed) member of a depth trains at once as one vectorised ensemble.

    python scripts/mlp_sweep.py                                   # digits, SGD+momentum
    python scripts/mlp_sweep.py --dataset wine --optimizer adam
    python scripts/mlp_sweep.py --dataset mnist --mnist_dir ~/data/mnist --depths 2 4 8

Writes to --output_dir: results.csv, layer_stats.csv, curves.csv, summary.json,
sweep_metrics.png, layer_variance.png, phase_diagram.png, tb/ (TensorBoard, HParams).
"""

import argparse
import shlex
import sys
import time
from pathlib import Path

from hf_init.cli import fail_cleanly, one_line_errors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", help="wine | digits (offline stand-in for MNIST) | mnist")
    p.add_argument("--split_seed", type=int, default=0, help="train/test split (wine, digits) and MNIST subset")
    p.add_argument("--mnist_dir", default=None, help="folder with the MNIST IDX files (optionally .gz) or parquet")
    p.add_argument("--mnist_train_size", type=int, default=10000, help="random subset of MNIST's 60k training images")
    p.add_argument("--stds", nargs="*", default=None, help="initial weight stds (default: 1e-4..1e1, 3 per decade)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per std")
    p.add_argument("--depth", type=int, default=4, help="hidden layers (ignored when --depths is given)")
    p.add_argument("--depths", nargs="*", type=int, default=None, help="several depths -> the phase diagram")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--activation", default="relu", help="relu | tanh | linear")
    p.add_argument("--optimizer", default="sgd", help="sgd (momentum) | adam")
    p.add_argument("--lr", type=float, default=None, help="default 0.01 for sgd, 1e-3 for adam")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--record_every", type=int, default=20, help="steps between variance/metric records")
    p.add_argument("--probe_size", type=int, default=256)
    p.add_argument("--output_dir", default="runs/mlp_sweep")
    p.add_argument("--overwrite", action="store_true", help="replace a study already in --output_dir")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: more threads were up to 10x slower on a busy machine; 0 = torch's choice)")
    args = one_line_errors(p).parse_args(argv)

    from hf_init.mlp import STUDY_OUTPUTS, check_sweep_args
    from hf_init.outputs import check_output_dir, kept_until_success

    stds, depths, cfg = check_sweep_args(args)
    lr = cfg.lr
    found = check_output_dir(args.output_dir, args.overwrite, STUDY_OUTPUTS)

    from hf_init.data.tabular import load_tabular
    data = load_tabular(args.dataset, split_seed=args.split_seed, mnist_dir=args.mnist_dir,
                        mnist_train_size=args.mnist_train_size)

    import numpy as np
    import torch

    from hf_init.analysis.mlp import sweep_rows, sweep_summary
    from hf_init.mlp import curve_rows, layer_rows, run_sweep, write_tensorboard
    from hf_init.outputs import write_csv, write_json
    from hf_init.plots import mlp as plots
    from hf_init.theory import critical_std

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    runs = run_sweep(data, stds, seeds, depths, args.width, args.activation, cfg, progress=not args.no_progress)
    train_s = time.perf_counter() - t0

    rows, lrows, crows = [], [], []
    for run in runs:
        rows += sweep_rows(run, data.n_classes)
        lrows += layer_rows(run.record, run.member_keys)
        crows += curve_rows(run.record, run.member_keys)
    summary = sweep_summary(rows)
    crit_hidden = critical_std(args.activation, args.width)
    crit_first = critical_std(args.activation, data.n_features)
    setup = (f"{data.description}; MLP {args.activation} width {args.width}; {args.optimizer} lr {lr:g}"
             + (f" momentum {args.momentum:g}" if args.optimizer == "sgd" else "")
             + f", batch {args.batch_size}, {args.epochs} epochs ({runs[0].record.step_loss.shape[0]} steps); "
             f"{len(seeds)} seeds")
    out = Path(args.output_dir)
    with kept_until_success(out, found):
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "results.csv", [{"dataset": args.dataset, **r} for r in rows])
        write_csv(out / "layer_stats.csv", lrows)
        write_csv(out / "curves.csv", crows)
        main_depth = depths[len(depths) // 2]
        plots.sweep_metrics(rows, summary, out / "sweep_metrics.png", setup)
        plots.layer_variance(lrows, main_depth, out / "layer_variance.png", setup)
        plots.phase_diagram(rows, crit_hidden, out / "phase_diagram.png", setup)
        n_tb = 0
        for run in runs:
            by_member = [r for r in rows if r["depth"] == run.shape.depth]
            names = [f"depth{k['depth']}_std{k['std']:.2e}_seed{k['seed']}" for k in run.member_keys]
            hp = [{**k, "width": args.width, "optimizer": args.optimizer, "lr": lr, "dataset": args.dataset}
                  for k in run.member_keys]
            metrics = [{"final_train_loss": r["final_train_loss"], "final_test_loss": r["final_test_loss"],
                        "final_test_acc": r["final_test_acc"], "diverged": float(r["diverged_step"] >= 0),
                        "stable": float(r["regime"] == "stable")} for r in by_member]
            n_tb += write_tensorboard(out / "tb", run.record, run.member_keys, names, hp, metrics)
        total_s = time.perf_counter() - t0
        write_json(out / "summary.json", {
            "command": "python scripts/mlp_sweep.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
            "setup": setup,
            "dataset": args.dataset, "n_features": data.n_features, "n_classes": data.n_classes,
            "stds": stds, "seeds": seeds, "depths": depths, "width": args.width, "activation": args.activation,
            "optimizer": args.optimizer, "lr": lr, "momentum": args.momentum, "epochs": args.epochs,
            "batch_size": args.batch_size, "steps": int(runs[0].record.step_loss.shape[0]),
            "chance_loss": data.chance_loss,
            "critical_std_hidden": crit_hidden, "critical_std_first_layer": crit_first,
            "band_rule": "a std is stable when > half its seeds are 'stable'; band = longest run of consecutive stable stds",
            "bands": summary, "train_seconds": train_s, "total_seconds": total_s, "tensorboard_runs": n_tb,
        })

    print(setup)
    print(f"chance loss ln({data.n_classes}) = {data.chance_loss:.3f}; critical std sqrt(2/fan_in): "
          f"hidden layers {crit_hidden:.3g}, first layer {crit_first:.3g}")
    for depth in depths:
        band = summary[str(depth)]
        print(f"\ndepth {depth}: stable band "
              + (f"{band['lo']:.3g} .. {band['hi']:.3g}" if band["lo"] is not None else "none (no std had a majority of stable seeds)")
              + (f"; other stable stds {[f'{s:.3g}' for s in band['stable_stds'] if not band['lo'] <= s <= band['hi']]}"
                 if band["lo"] is not None and any(not band['lo'] <= s <= band['hi'] for s in band["stable_stds"]) else ""))
        print(f"  {'std':>8} {'regimes (seeds)':<34} {'test acc':>8} {'train loss':>10} {'gain/layer':>10}")
        for s in stds:
            sub = [r for r in rows if r["depth"] == depth and r["std"] == s]
            counts = ", ".join(f"{g} {c}" for g, c in band["regime_counts"][f"{s:.3g}"].items())
            acc = np.nanmean([r["final_test_acc"] for r in sub]) if any(r["diverged_step"] < 0 for r in sub) else float("nan")
            loss = np.nanmedian([r["final_train_loss"] for r in sub]) if any(r["diverged_step"] < 0 for r in sub) else float("nan")
            gain = np.nanmedian([r["gain_per_layer_init"] for r in sub])
            print(f"  {s:>8.2e} {counts:<34} {acc:>8.3f} {loss:>10.3g} {gain:>10.3g}")
    print(f"\ntrained in {train_s:.1f}s ({total_s:.1f}s with outputs); {n_tb} TensorBoard runs; wrote {out}/")
    print(f"  results.csv layer_stats.csv curves.csv summary.json sweep_metrics.png layer_variance.png phase_diagram.png tb/")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
