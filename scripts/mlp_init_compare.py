"""Controlled Kaiming (fan-in) vs Xavier comparison on MLPs: for each seed both schemes start
from the same standard-normal draw, rescaled by each scheme's per-layer std, and see the same
minibatches; ReLU by default, tanh as the control where Xavier should do well.

    python scripts/mlp_init_compare.py                              # digits, relu + tanh, 10 seeds
    python scripts/mlp_init_compare.py configs/mlp_init_compare.yaml --dataset wine --activations relu

Arguments: an optional YAML config (keys = the flags), then --flags overriding it (--help).
Writes to --output_dir: results.csv (one row per member), records.jsonl (per-layer statistics
and full-split loss/accuracy of every member at every record step), summary.json,
compare_curves.png, tb/.
"""

import shlex
import sys
import time
from pathlib import Path

from hf_init.core.cli import fail_cleanly

FIGURES = ("compare_curves.png",)


def main(argv=None):
    from hf_init.core.outputs import check_output_dir, kept_until_success
    from hf_init.mlp.args import CompareArguments, parse
    from hf_init.mlp.study import STUDY_FILES

    argv = list(argv if argv is not None else sys.argv[1:])
    data_args, model, run_args, study = parse(CompareArguments, argv, __doc__)
    a, b = study.schemes
    cfg = model.train_config(study.record_every, 256, run_args.dtype)
    found = check_output_dir(study.output_dir, run_args.overwrite, STUDY_FILES + FIGURES)
    device = run_args.torch_device()
    data = data_args.load().to(device)
    target = study.target_loss if study.target_loss is not None else 0.25 * data.chance_loss

    import torch

    from hf_init.mlp import plots
    from hf_init.mlp.analysis import compare_rows, compare_summary, min_wilcoxon_p
    from hf_init.mlp.study import TensorBoardRuns, run_compare, write_study

    run_args.apply_threads()
    seeds = list(range(study.seeds))
    t0 = time.perf_counter()
    runs = run_compare(
        data,
        [a, b],
        seeds,
        model.depth,
        model.width,
        study.activations,
        cfg,
        progress=not run_args.no_progress,
    )
    train_s = time.perf_counter() - t0
    rows = [row for run in runs for row in compare_rows(run, target)]
    summary = compare_summary(rows, a, b)
    steps = runs[0].steps
    setup = (
        f"{data.description}; MLP depth {model.depth} x width {model.width}; {model.describe()} "
        f"({steps} steps); {len(seeds)} seeds"
    )
    figures = {
        "compare_curves.png": lambda table, path: plots.compare_curves(
            table, target, path, f"{a} vs {b}: {setup}"
        )
    }
    assert tuple(figures) == FIGURES
    tb = TensorBoardRuns(
        name=lambda k: f"{k['activation']}_{k['scheme']}_seed{k['seed']}",
        hparams=lambda k: {
            **k,
            "depth": model.depth,
            "width": model.width,
            "optimizer": model.optimizer,
            "lr": model.lr,
        },
        metrics=lambda r: {
            key: r[key]
            for key in ("steps_to_target", "loss_auc", "final_test_loss", "final_test_acc")
        },
    )
    out = Path(study.output_dir)
    with kept_until_success(out, found):
        n_tb = write_study(
            out,
            runs,
            rows,
            data_args.dataset,
            figures,
            tb,
            {
                "command": "python scripts/mlp_init_compare.py "
                + " ".join(shlex.quote(x) for x in argv),
                "setup": setup,
                "schemes": [a, b],
                "activations": study.activations,
                "seeds": seeds,
                "steps": steps,
                "target_loss": target,
                "chance_loss": data.chance_loss,
                "min_possible_wilcoxon_p": min_wilcoxon_p(len(seeds)),
                "notes": (
                    "normal schemes only: each seed's single standard-normal draw is rescaled by each scheme's std; "
                    "kaiming uses the activation's gain, fan_in; steps_to_target censored at steps+1 when never reached; "
                    "95% intervals: t-distribution over seeds; p: two-sided Wilcoxon signed-rank on the paired seeds"
                ),
                "comparison": summary,
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
        f"target loss {target:.3g} (chance ln({data.n_classes}) = {data.chance_loss:.3f}); "
        f"smallest two-sided Wilcoxon p possible with {len(seeds)} seeds: {min_wilcoxon_p(len(seeds)):.3g}"
    )
    for act, res in summary.items():
        print(f"\n{act}: {a} (A) vs {b} (B), mean [95% CI] over seeds")
        for metric in ("steps_to_target", "loss_auc", "final_test_loss", "final_test_acc"):
            r = res[metric]
            fmt = lambda c: f"{c['mean']:.4g} [{c['lo']:.4g}, {c['hi']:.4g}]"  # noqa: E731
            print(
                f"  {metric:<16} A {fmt(r['a']):<28} B {fmt(r['b']):<28} A better in {r['a_better_count']}/{r['n_pairs']}"
                f"  Wilcoxon p {r['wilcoxon_p']:.3g}"
            )
        cens = res["steps_to_target"]["censored"]
        print(
            f"  never reached the target: A {cens[a]}, B {cens[b]}; diverged: A {res['diverged'][a]}, B {res['diverged'][b]}"
        )
        print(
            f"  '{a} converges faster than {b} under {act}' (steps to target and loss AUC): {res['verdict']}"
        )
    print(
        f"\ntrained in {train_s:.1f}s ({total_s:.1f}s with outputs) on {device} ({run_args.dtype}, "
        f"{torch.get_num_threads()} CPU threads); {n_tb} TensorBoard runs; wrote {out}/"
    )


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
