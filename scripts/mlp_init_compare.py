"""Controlled Kaiming (fan-in) vs Xavier comparison on MLPs: for each seed both schemes start
from the same standard-normal draw, rescaled by each scheme's per-layer std, and see the same
minibatches; ReLU by default, tanh as the control where Xavier should do well.

    python scripts/mlp_init_compare.py                              # digits, relu + tanh, 10 seeds
    python scripts/mlp_init_compare.py --dataset wine --activations relu

Writes to --output_dir: results.csv, curves.csv, summary.json, compare_curves.png, tb/.
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
    p.add_argument("--mnist_train_size", type=int, default=10000)
    p.add_argument("--schemes", nargs=2, default=["kaiming_normal", "xavier_normal"], metavar=("A", "B"),
                   help="the two registry schemes compared (normal ones: they rescale one shared draw)")
    p.add_argument("--activations", nargs="+", default=["relu", "tanh"], help="relu | tanh | linear")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (5 seeds cannot reach Wilcoxon p < 0.05)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--optimizer", default="sgd", help="sgd (momentum) | adam")
    p.add_argument("--lr", type=float, default=None, help="default 0.01 for sgd, 1e-3 for adam")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--record_every", type=int, default=5, help="steps between loss records (steps-to-target resolution)")
    p.add_argument("--target_loss", type=float, default=None, help="default 0.25 x ln(n_classes)")
    p.add_argument("--output_dir", default="runs/mlp_init_compare")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: more threads were up to 10x slower on a busy machine; 0 = torch's choice)")
    args = one_line_errors(p).parse_args(argv)

    from hf_init.mlp import STUDY_OUTPUTS, check_compare_args
    from hf_init.outputs import check_output_dir, kept_until_success

    a, b = args.schemes
    cfg = check_compare_args(args)
    lr = cfg.lr
    found = check_output_dir(args.output_dir, args.overwrite, STUDY_OUTPUTS)

    from hf_init.data.tabular import load_tabular
    data = load_tabular(args.dataset, split_seed=args.split_seed, mnist_dir=args.mnist_dir,
                        mnist_train_size=args.mnist_train_size)
    target = args.target_loss if args.target_loss is not None else 0.25 * data.chance_loss

    import torch

    from hf_init.analysis.mlp import compare_rows, compare_summary, min_wilcoxon_p
    from hf_init.mlp import curve_rows, run_compare, write_tensorboard
    from hf_init.outputs import write_csv, write_json
    from hf_init.plots import mlp as plots

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    runs = run_compare(data, [a, b], seeds, args.depth, args.width, args.activations, cfg, progress=not args.no_progress)
    train_s = time.perf_counter() - t0
    rows, crows = [], []
    for run in runs:
        rows += compare_rows(run, target)
        crows += curve_rows(run.record, run.member_keys)
    summary = compare_summary(rows, a, b)
    steps = int(runs[0].record.step_loss.shape[0])
    setup = (f"{data.description}; MLP depth {args.depth} x width {args.width}; {args.optimizer} lr {lr:g}"
             + (f" momentum {args.momentum:g}" if args.optimizer == "sgd" else "")
             + f", batch {args.batch_size}, {args.epochs} epochs ({steps} steps); {len(seeds)} seeds")
    out = Path(args.output_dir)
    with kept_until_success(out, found):
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "results.csv", [{"dataset": args.dataset, **r} for r in rows])
        write_csv(out / "curves.csv", crows)
        plots.compare_curves(crows, target, out / "compare_curves.png", f"{a} vs {b}: {setup}")
        n_tb = 0
        for run in runs:
            names = [f"{k['activation']}_{k['scheme']}_seed{k['seed']}" for k in run.member_keys]
            hp = [{**k, "depth": args.depth, "width": args.width, "optimizer": args.optimizer, "lr": lr} for k in run.member_keys]
            by = [r for r in rows if r["activation"] == run.member_keys[0]["activation"]]
            metrics = [{key: r[key] for key in ("steps_to_target", "loss_auc", "final_test_loss", "final_test_acc")} for r in by]
            n_tb += write_tensorboard(out / "tb", run.record, run.member_keys, names, hp, metrics)
        total_s = time.perf_counter() - t0
        write_json(out / "summary.json", {
            "command": "python scripts/mlp_init_compare.py " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
            "setup": setup, "schemes": [a, b], "activations": args.activations, "seeds": seeds, "steps": steps,
            "target_loss": target, "chance_loss": data.chance_loss,
            "min_possible_wilcoxon_p": min_wilcoxon_p(len(seeds)),
            "notes": ("normal schemes only: each seed's single standard-normal draw is rescaled by each scheme's std; "
                      "kaiming uses the activation's gain, fan_in; steps_to_target censored at steps+1 when never reached; "
                      "95% intervals: t-distribution over seeds; p: two-sided Wilcoxon signed-rank on the paired seeds"),
            "comparison": summary, "train_seconds": train_s, "total_seconds": total_s,
        })

    print(setup)
    print(f"target loss {target:.3g} (chance ln({data.n_classes}) = {data.chance_loss:.3f}); "
          f"smallest two-sided Wilcoxon p possible with {len(seeds)} seeds: {min_wilcoxon_p(len(seeds)):.3g}")
    for act, res in summary.items():
        print(f"\n{act}: {a} (A) vs {b} (B), mean [95% CI] over seeds")
        for metric in ("steps_to_target", "loss_auc", "final_test_loss", "final_test_acc"):
            r = res[metric]
            fmt = lambda c: f"{c['mean']:.4g} [{c['lo']:.4g}, {c['hi']:.4g}]"  # noqa: E731
            print(f"  {metric:<16} A {fmt(r['a']):<28} B {fmt(r['b']):<28} A better in {r['a_better_count']}/{r['n_pairs']}"
                  f"  Wilcoxon p {r['wilcoxon_p']:.3g}")
        cens = res["steps_to_target"]["censored"]
        print(f"  never reached the target: A {cens[a]}, B {cens[b]}; diverged: A {res['diverged'][a]}, B {res['diverged'][b]}")
        print(f"  '{a} converges faster than {b} under {act}' (steps to target and loss AUC): {res['verdict']}")
    print(f"\ntrained in {train_s:.1f}s ({total_s:.1f}s with outputs); {n_tb} TensorBoard runs; wrote {out}/")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
