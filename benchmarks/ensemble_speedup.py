"""The std sweep's vectorised ensemble against the plain way (each member its own
``nn.Sequential`` and ``torch.optim.SGD``), interleaved in one run, next to the batched-matmul
rate this machine reaches at the same shapes.

    python benchmarks/ensemble_speedup.py                          # widths 64 256 512, 30 epochs
    python benchmarks/ensemble_speedup.py --epochs 2 --repeats 2   # a quick check
    python benchmarks/ensemble_speedup.py --widths 64 --threads 1  # pinned threads, both sides

Arguments as the studies take them (hf_init.mlp.args: optional YAML config, then --flags);
--threads pins both sides (default: torch's choice); --device runs both sides there. What each
side runs, and the figures: docs/benchmarks.md ("Ensemble vs one model at a time").
"""

import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_init.core.cli import UsageError, fail_cleanly


@dataclass
class BenchmarkArguments:
    seeds: int = field(
        default=5, metadata={"help": "seeds 0..N-1 per std of the sweep's default grid (16 stds)"}
    )
    widths: list[int] = field(
        default_factory=lambda: [64, 256, 512], metadata={"help": "hidden widths compared"}
    )
    repeats: int = field(default=2, metadata={"help": "interleaved rounds per width"})


def matmul_flops(shape, batch: int, members: int) -> float:
    """Matmul FLOPs of one training step of ``members`` MLPs on a batch: per layer forward
    2*B*fan_in*fan_out, weight gradient the same, input gradient the same except at layer 0."""
    fans = shape.layer_fans()
    per_member = sum(2 * batch * fi * fo * (3 if l else 2) for l, (fi, fo) in enumerate(fans))
    return float(per_member * members)


def batched_matmul_rate(shape, batch: int, members: int, device, seconds: float = 1.0) -> float:
    """GFLOP/s of exactly the products of one ensemble step (:func:`matmul_flops`), run alone."""
    M, B = members, batch
    fans = shape.layer_fans()
    x = torch.randn(B, fans[0][0], device=device)
    ops = []
    for l, (fi, fo) in enumerate(fans):
        w = torch.randn(M, fo, fi, device=device)
        h = torch.randn(M, B, fi, device=device)
        dz = torch.randn(M, B, fo, device=device)
        if l == 0:
            w2 = w.reshape(M * fo, fi)
            dz2 = torch.randn(B, M * fo, device=device)
            ops += [lambda x=x, w2=w2: x @ w2.t(), lambda x=x, dz2=dz2: dz2.t() @ x]
        else:
            ops += [
                lambda h=h, w=w: torch.bmm(h, w.transpose(1, 2)),
                lambda h=h, dz=dz: torch.bmm(dz.transpose(1, 2), h),
                lambda dz=dz, w=w: torch.bmm(dz, w),
            ]
    flops = matmul_flops(shape, B, M)
    for op in ops:  # warm up
        op()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        for op in ops:
            op()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return flops * n / (time.perf_counter() - t0) / 1e9


def one_at_a_time(shape, weights, data, batches, lr, momentum, device) -> float:
    """Seconds to train every member alone on ``device``: nn.Sequential + torch.optim.SGD,
    torch's defaults."""
    from hf_init.mlp.model import build_mlp

    data = data.to(device)
    batches = [b.to(device) for b in batches]
    t0 = time.perf_counter()
    for m in range(weights[0].shape[0]):
        seq = build_mlp(shape).to(device)
        with torch.no_grad():
            for l, lin in enumerate(x for x in seq if isinstance(x, torch.nn.Linear)):
                lin.weight.copy_(weights[l][m])
                lin.bias.zero_()
        opt = torch.optim.SGD(seq.parameters(), lr=lr, momentum=momentum)
        for idx in batches:
            opt.zero_grad()
            F.cross_entropy(seq(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv=None):
    from hf_init.mlp.args import parse
    from hf_init.mlp.data import TabularData
    from hf_init.mlp.model import Ensemble, MLPShape, ensemble_weights, standard_normal_draws
    from hf_init.mlp.study import log_grid
    from hf_init.mlp.training import minibatch_order, train_ensemble

    data_args, model_args, run_args, bench = parse(
        BenchmarkArguments, list(argv if argv is not None else sys.argv[1:]), __doc__
    )
    if model_args.optimizer != "sgd":
        raise UsageError(
            "--optimizer must be sgd (the one-at-a-time side is plain SGD), "
            f"got {model_args.optimizer}"
        )
    if bench.repeats < 1 or bench.seeds < 1 or any(w < 1 for w in bench.widths):
        raise UsageError("--repeats, --seeds and every --widths value must be >= 1")
    run_args.apply_threads()
    device = run_args.torch_device()
    data = data_args.load()
    stds = log_grid(1e-4, 10.0, 3)
    seeds = list(range(bench.seeds))
    seed_index = [k for _ in stds for k in range(len(seeds))]
    M = len(seed_index)
    cfg = model_args.train_config(record_every=10**9, probe_size=256, dtype=run_args.dtype)
    batches = minibatch_order(len(data.y_train), cfg.batch_size, cfg.epochs, cfg.data_seed)
    load0 = os.getloadavg()
    print(
        f"{data.description}; {M} members ({len(stds)} stds x {len(seeds)} seeds), "
        f"depth {model_args.depth}; {len(batches)} steps each ({cfg.epochs} epochs); "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads "
        f"({os.cpu_count()} CPUs); ensemble on {device} ({run_args.dtype})"
    )
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(
        f"{'width':>5} {'ensemble s':>20} {'one at a time s':>20} {'speedup':>16} "
        f"{'ens GFLOP/s':>11} {'bmm GFLOP/s':>11} {'of bmm':>6} {'diverged':>8}"
    )
    for width in bench.widths:
        shape = MLPShape(data.n_features, width, model_args.depth, data.n_classes)
        weights = ensemble_weights(
            standard_normal_draws(shape, seeds),
            seed_index,
            [[s] * shape.n_layers for s in stds for _ in seeds],
        )
        # warm-up of both sides (first-call costs: allocator, BLAS and autograd setup), untimed
        small = TabularData(
            data.name,
            data.description,
            data.x_train[:128],
            data.y_train[:128],
            data.x_test[:32],
            data.y_test[:32],
            data.n_classes,
        )
        train_ensemble(
            Ensemble(shape, [w[:2] for w in weights]).to(device),
            small.to(device),
            dataclasses.replace(cfg, epochs=1),
            progress=False,
        )
        one_at_a_time(
            shape, [w[:1] for w in weights], data, batches[:2], cfg.lr, cfg.momentum, device
        )
        t_ens, t_one, diverged = [], [], 0
        for r in range(bench.repeats):
            for side in (0, 1) if r % 2 == 0 else (1, 0):
                if side == 0:
                    model = Ensemble(shape, weights).to(device)
                    t0 = time.perf_counter()
                    rec = train_ensemble(
                        model, data.to(device), cfg, progress=False
                    )  # ends with a host read
                    t_ens.append(time.perf_counter() - t0)
                    diverged = int((rec.diverged_step >= 0).sum())
                    # member-steps the ensemble computed: a diverged member counted up to its
                    # divergence step (dropped at the next host read, at most CHECK_EVERY - 1
                    # steps later)
                    member_steps = int(
                        sum(len(batches) if d < 0 else d + 1 for d in rec.diverged_step)
                    )
                else:
                    t_one.append(
                        one_at_a_time(shape, weights, data, batches, cfg.lr, cfg.momentum, device)
                    )
        flops = matmul_flops(shape, cfg.batch_size, 1) * member_steps
        ens_rate = flops / statistics.median(t_ens) / 1e9
        bmm_rate = batched_matmul_rate(shape, cfg.batch_size, M, device)
        ratios = [o / e for o, e in zip(t_one, t_ens)]
        print(
            f"{width:>5} {_span(t_ens, '.2f'):>20} {_span(t_one, '.2f'):>20} "
            f"{_span(ratios, '.1f'):>16} {ens_rate:>11.1f} {bmm_rate:>11.1f} "
            f"{ens_rate / bmm_rate:>6.0%} {diverged:>8}",
            flush=True,
        )
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(
        "speedup = one at a time / ensemble per repeat (median [min, max]); "
        "targets: >= 7x at width 64, >= 2x at 256; "
        "ensemble GFLOP/s: matmul FLOPs of the member-steps it trained "
        "(a diverged member up to its divergence) / wall time (its two records included)"
    )


def _span(values, fmt: str) -> str:
    """Median [min, max] of ``values`` in format ``fmt``."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
