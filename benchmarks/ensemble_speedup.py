"""The default std sweep (scripts/mlp_sweep.py defaults: digits, 16 stds x 5 seeds, depth 4 x
width 64, SGD lr 0.01 momentum 0.9, batch 64) trained as one vectorised ensemble vs one plain
nn.Sequential at a time with its own torch.optim.SGD, the same members, minibatches and number
of steps, measured side by side in one process. Prints the wall-clock ratio (target >= 5x).

    python benchmarks/ensemble_speedup.py                 # 3 epochs (66 steps) per member
    python benchmarks/ensemble_speedup.py --epochs 30     # the sweep's full budget

Arguments as the studies take them (hf_init.mlp.args: optional YAML config, then --flags), SGD only.

The ensemble side includes everything train_ensemble does per step (divergence checks) plus its
two metric/variance records (at init and at the end); the one-at-a-time side is a bare loop.
"""

import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hf_init.cli import UsageError, fail_cleanly


@dataclass
class BenchmarkArguments:
    seeds: int = field(default=5, metadata={"help": "seeds 0..N-1 per std of the default grid"})


def main(argv=None):
    from hf_init.mlp.args import parse
    from hf_init.mlp.model import Ensemble, MLPShape, build_mlp, ensemble_weights, standard_normal_draws
    from hf_init.mlp.study import log_grid
    from hf_init.mlp.training import minibatch_order, train_ensemble

    data_args, model_args, run_args, bench = parse(BenchmarkArguments, list(argv if argv is not None else sys.argv[1:]),
                                                   __doc__, epochs=3)
    if model_args.optimizer != "sgd":
        raise UsageError(f"--optimizer must be sgd (the one-at-a-time side is plain SGD), got {model_args.optimizer}")
    run_args.apply_threads()
    data = data_args.load()
    shape = MLPShape(data.n_features, model_args.width, model_args.depth, data.n_classes)
    stds = log_grid(1e-4, 10.0, 3)
    seeds = list(range(bench.seeds))
    draws = standard_normal_draws(shape, seeds)
    seed_index = [k for _ in stds for k in range(len(seeds))]
    layer_stds = [[s] * shape.n_layers for s in stds for _ in seeds]
    weights = ensemble_weights(draws, seed_index, layer_stds)
    cfg = model_args.train_config(record_every=10**9, probe_size=256)
    batches = minibatch_order(len(data.y_train), cfg.batch_size, cfg.epochs, cfg.data_seed)
    M = len(seed_index)

    model = Ensemble(shape, weights)
    t0 = time.perf_counter()
    rec = train_ensemble(model, data, cfg, progress=False)
    t_ens = time.perf_counter() - t0

    t0 = time.perf_counter()
    for m in range(M):
        seq = build_mlp(shape)
        with torch.no_grad():
            for l, lin in enumerate(x for x in seq if isinstance(x, torch.nn.Linear)):
                lin.weight.copy_(weights[l][m])
                lin.bias.zero_()
        opt = torch.optim.SGD(seq.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        for idx in batches:
            opt.zero_grad()
            F.cross_entropy(seq(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    t_one = time.perf_counter() - t0

    print(f"{data.description}; {M} members ({len(stds)} stds x {len(seeds)} seeds), depth {shape.depth} x width "
          f"{shape.width}; {len(batches)} steps each; torch threads {torch.get_num_threads()}")
    print(f"ensemble (vectorised):  {t_ens:7.2f} s  ({rec.step_loss.shape[0]} steps, {int((rec.diverged_step >= 0).sum())} members diverged)")
    print(f"one model at a time:    {t_one:7.2f} s")
    print(f"speedup: {t_one / t_ens:.1f}x (target >= 5x)")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
