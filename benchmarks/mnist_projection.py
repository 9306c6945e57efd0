"""Projected wall time of the full-scale MNIST std sweep (60,000 training images, width 512,
16 stds x 5 seeds = 80 members per depth, 4 depths, 30 epochs, batch 64) on this machine's
device, from a short run of each depth's ensemble.

    python benchmarks/mnist_projection.py               # synthetic MNIST-shaped data, auto device
    python benchmarks/mnist_projection.py --mnist_dir ~/data/mnist --device cuda --dtype tf32

Per depth it times the training step ``train_ensemble`` runs (members that diverge stay in,
masked: an upper bound) and one record at full scale (evaluation timed on --eval_examples and
scaled to the 70,000 examples, plus the probe statistics); projection = steps x step time +
records x record time. Without --mnist_dir the data are synthetic and MNIST-shaped (MNIST cannot
be downloaded offline; a step's time does not depend on the pixel values). Figures:
docs/benchmarks.md ("MNIST at full scale").
"""

import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from hf_init.core.cli import UsageError, fail_cleanly


@dataclass
class ProjectionArguments:
    depths: list[int] = field(
        default_factory=lambda: [2, 4, 8, 16], metadata={"help": "the sweep's depths"}
    )
    seeds: int = field(
        default=5, metadata={"help": "seeds per std (16 stds: the sweep's default grid)"}
    )
    steps: int = field(default=4, metadata={"help": "timed training steps per depth"})
    eval_examples: int = field(
        default=2048,
        metadata={
            "help": "examples a record's full-split evaluation is timed "
            "on (scaled to both full splits)"
        },
    )


def synthetic_mnist(n_train: int, n_test: int = 10000, seed: int = 0):
    """MNIST-shaped stand-in: uint8-like pixels standardised with the training statistics (as
    ``load_tabular`` does), labels 0..9. Not MNIST, and named so."""
    from hf_init.mlp.data import TabularData, standardise

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, 784), generator=g, dtype=torch.uint8).numpy()
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    xtr, xte = standardise(x[:n_train], x[n_train:])
    return TabularData(
        "synthetic_mnist",
        f"synthetic MNIST-shaped data (not MNIST): {n_train} train / {n_test} test",
        torch.from_numpy(xtr),
        y[:n_train],
        torch.from_numpy(xte),
        y[n_train:],
        10,
    )


def main(argv=None):
    from hf_init.mlp.args import parse
    from hf_init.mlp.model import Ensemble, MLPShape, ensemble_weights, standard_normal_draws
    from hf_init.mlp.study import log_grid
    from hf_init.mlp.training import MM_DTYPE, _evaluate, _layer_stats, _step, make_optimizer

    data_args, model_args, run_args, proj = parse(
        ProjectionArguments,
        list(argv if argv is not None else sys.argv[1:]),
        __doc__,
        width=512,
        mnist_train_size=60000,
    )
    if proj.steps < 1 or proj.seeds < 1 or proj.eval_examples < 1:
        raise UsageError("--steps, --seeds and --eval_examples must be >= 1")
    for depth in proj.depths:
        MLPShape(1, 1, depth, 1)
    run_args.apply_threads()
    device = run_args.torch_device()
    if data_args.mnist_dir:
        data = data_args.load()
    else:
        data = synthetic_mnist(data_args.mnist_train_size)
    data = data.to(device)
    cfg = model_args.train_config(record_every=10**9, probe_size=256, dtype=run_args.dtype)
    stds = log_grid(1e-4, 10.0, 3)
    seeds = list(range(proj.seeds))
    M = len(stds) * len(seeds)
    steps_per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    load0 = os.getloadavg()
    print(
        f"{data.description}; width {model_args.width}, {M} members per depth "
        f"({len(stds)} stds x {len(seeds)} seeds), depths {proj.depths}; "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps, batch {cfg.batch_size}"
    )
    print(
        f"device {device} ({run_args.dtype}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads; "
        f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
    )
    print(f"{'depth':>5} {'step s':>9} {'record s':>9} {'GFLOP/step':>10} {'GFLOP/s':>8}")
    per_epoch_s, every20_s, train_s = 0.0, 0.0, 0.0
    for depth in proj.depths:
        shape = MLPShape(data.n_features, model_args.width, depth, data.n_classes)
        weights = ensemble_weights(
            standard_normal_draws(shape, seeds),
            [k for _ in stds for k in range(len(seeds))],
            [[s] * shape.n_layers for s in stds for _ in seeds],
        )

        model = Ensemble(shape, weights).to(device)
        params = list(model.weights) + list(model.biases)
        opt = make_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum)
        alive = torch.ones(M, dtype=torch.bool, device=device)
        bad_step, loss_row, buffers = (
            torch.full((M,), -1, device=device),
            torch.empty(M, device=device),
            {},
        )
        g = torch.Generator().manual_seed(0)
        batches = [
            torch.randint(0, len(data.y_train), (cfg.batch_size,), generator=g).to(device)
            for _ in range(1 + proj.steps)
        ]
        for i, idx in enumerate(batches):
            if i == 1:  # step 0 warmed up: the step's buffers are made, kernels chosen
                sync()
                t0 = time.perf_counter()
            # what train_ensemble runs per step (members that diverge stay in, masked)
            _step(
                model,
                params,
                opt,
                data.x_train.index_select(0, idx),
                data.y_train.index_select(0, idx),
                MM_DTYPE[cfg.dtype],
                alive,
                bad_step,
                loss_row,
                i,
                buffers,
            )
        sync()
        step_s = (time.perf_counter() - t0) / proj.steps
        sync()
        t0 = time.perf_counter()
        n_eval = min(proj.eval_examples, len(data.y_train))
        _evaluate(model, data.x_train[:n_eval], data.y_train[:n_eval])
        sync()
        t1 = time.perf_counter()
        _layer_stats(model, data.x_train[:256], data.y_train[:256])
        sync()
        record_s = (
            (t1 - t0) * (len(data.y_train) + len(data.y_test)) / n_eval + time.perf_counter() - t1
        )
        fans = shape.layer_fans()
        flops = M * sum(
            2 * cfg.batch_size * fi * fo * (3 if l else 2) for l, (fi, fo) in enumerate(fans)
        )
        rate = flops / step_s / 1e9 if step_s else 0
        print(
            f"{depth:>5} {step_s:>9.4f} {record_s:>9.3f} {flops / 1e9:>10.1f} {rate:>8.1f}",
            flush=True,
        )
        train_s += total_steps * step_s
        per_epoch_s += total_steps * step_s + (cfg.epochs + 1) * record_s
        every20_s += total_steps * step_s + (total_steps // 20 + 2) * record_s
    load1 = os.getloadavg()
    print(
        f"projected full-scale sweep on {device}: training alone {_hours(train_s)}; "
        f"with a record every epoch (--record_every {steps_per_epoch}) {_hours(per_epoch_s)}; "
        f"with the default --record_every 20 {_hours(every20_s)}"
    )
    print(f"load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


def _hours(seconds: float) -> str:
    return f"{seconds:,.0f} s = {seconds / 3600:.2f} h"


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
