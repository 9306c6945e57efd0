"""The default std sweep (scripts/mlp_sweep.py defaults: digits, 16 stds x 5 seeds, depth 4 x
width 64, SGD lr 0.01 momentum 0.9, batch 64) trained as one vectorised ensemble vs one plain
nn.Sequential at a time with its own torch.optim.SGD, the same members, minibatches and number
of steps, measured side by side in one process. Prints the wall-clock ratio (target >= 5x).

    python benchmarks/ensemble_speedup.py                 # 3 epochs (66 steps) per member
    python benchmarks/ensemble_speedup.py --epochs 30     # the sweep's full budget

The ensemble side includes everything train_ensemble does per step (divergence checks) plus its
two metric/variance records (at init and at the end); the one-at-a-time side is a bare loop.
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from hf_init.cli import fail_cleanly


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: more threads were up to 10x slower on a busy machine; 0 = torch's choice)")
    args = p.parse_args(argv)

    from hf_init.data.tabular import load_tabular
    from hf_init.mlp.model import Ensemble, MLPShape, build_mlp, ensemble_weights, standard_normal_draws
    from hf_init.mlp.study import log_grid
    from hf_init.mlp.training import TrainConfig, minibatch_order, train_ensemble

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_tabular(args.dataset)
    shape = MLPShape(data.n_features, args.width, args.depth, data.n_classes)
    stds = log_grid(1e-4, 10.0, 3)
    seeds = list(range(args.seeds))
    draws = standard_normal_draws(shape, seeds)
    seed_index = [k for _ in stds for k in range(len(seeds))]
    layer_stds = [[s] * shape.n_layers for s in stds for _ in seeds]
    weights = ensemble_weights(draws, seed_index, layer_stds)
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, epochs=args.epochs, batch_size=64, record_every=10**9)
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

    print(f"{data.description}; {M} members ({len(stds)} stds x {len(seeds)} seeds), depth {args.depth} x width "
          f"{args.width}; {len(batches)} steps each; torch threads {torch.get_num_threads()}")
    print(f"ensemble (vectorised):  {t_ens:7.2f} s  ({rec.step_loss.shape[0]} steps, {int((rec.diverged_step >= 0).sum())} members diverged)")
    print(f"one model at a time:    {t_one:7.2f} s")
    print(f"speedup: {t_one / t_ens:.1f}x (target >= 5x)")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
