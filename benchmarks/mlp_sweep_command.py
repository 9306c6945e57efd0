"""The whole ``scripts/mlp_sweep.py`` command (start-up, training, every output) against the plain
loop as a command of its own: a Python process that loads the same data and trains the same
members one at a time (``nn.Sequential`` + ``torch.optim.SGD``, torch's defaults; from
``benchmarks/ensemble_speedup.py``) and writes nothing.

    python benchmarks/mlp_sweep_command.py --width 256            # the sweep's defaults otherwise
    python benchmarks/mlp_sweep_command.py --width 256 --repeats 3 --seeds 2

Flags are the sweep's (``python scripts/mlp_sweep.py --help``; ``--output_dir`` is a temporary
folder) plus ``--repeats`` (default 3). Each repeat runs both commands as child
processes, the one that goes first alternating. Reported: the sweep command's wall time (its
whole process: start-up, training, every output), the plain loop's training alone (timed inside
its process, first step included) and its whole process, their medians over repeats, and the
median and range of the per-repeat speedups: plain loop training / sweep command (the strict
one: the command's start-up and outputs count, the plain loop's do not) and plain loop command /
sweep command. ``--phases``: one sweep command, with the time it spent before training (start-up),
training and after (outputs), from the lines it prints.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMES = ("sweep command", "plain loop training", "plain loop command")


def plain_loop(argv: list[str]) -> None:
    """The plain loop's process: the sweep's data and members (every std x seed of every depth,
    the sweep's weight draws), trained one member at a time."""
    from ensemble_speedup import one_at_a_time

    from hf_init.mlp.args import SweepArguments, parse
    from hf_init.mlp.model import MLPShape, ensemble_weights, standard_normal_draws
    from hf_init.mlp.training import minibatch_order
    from hf_init.theory.recursions import scheme_weight_stds

    data_args, model, run_args, sweep = parse(SweepArguments, argv)
    run_args.apply_threads()
    device = run_args.torch_device()
    data = data_args.load()
    cfg = model.train_config(sweep.record_every, sweep.probe_size, run_args.dtype)
    batches = minibatch_order(len(data.y_train), cfg.batch_size, cfg.epochs, cfg.data_seed)
    seeds = list(range(sweep.seeds))
    seconds = 0.0
    for depth in sweep.depths or [model.depth]:
        shape = MLPShape(data.n_features, model.width, depth, data.n_classes, sweep.activation)
        stds = [scheme_weight_stds("normal", shape.widths(), std=s) for s in sweep.stds]
        weights = ensemble_weights(
            standard_normal_draws(shape, seeds),
            [k for _ in stds for k in range(len(seeds))],
            [per_layer for per_layer in stds for _ in seeds],
        )
        seconds += one_at_a_time(shape, weights, data, batches, cfg.lr, cfg.momentum, device)
    print(f"plain loop training {seconds:.3f} s")


def timed(command: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a child process; its failure is this benchmark's."""
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def main(argv: list[str]) -> None:
    repeats, phases = 3, False
    if "--repeats" in argv:
        i = argv.index("--repeats")
        repeats = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    if "--phases" in argv:
        phases = True
        argv.remove("--phases")
    env_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = env_path
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        out = ["--output_dir", str(Path(tmp, "sweep")), "--overwrite", "true"]
        sweep = [sys.executable, "scripts/mlp_sweep.py", *argv, *out, "--no_progress", "true"]
        plain = [sys.executable, __file__, "--plain_loop", *argv]
        if phases:
            return print_phases(sweep, load)
        print(f"load average before: {load}", flush=True)
        times = {name: [] for name in TIMES}
        for r in range(repeats):
            for side in ("sweep", "plain")[:: 1 if r % 2 == 0 else -1]:
                if side == "sweep":
                    times["sweep command"].append(timed(sweep)[0])
                else:
                    seconds, stdout = timed(plain)
                    times["plain loop command"].append(seconds)
                    train = re.search(r"plain loop training ([\d.]+) s", stdout).group(1)
                    times["plain loop training"].append(float(train))
            print(
                f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
                flush=True,
            )
    print(
        f"\npython scripts/mlp_sweep.py {' '.join(argv)}: {repeats} repeats, "
        f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for name, values in times.items():
        print(f"  {name:<20} median {statistics.median(values):6.1f} s")
    for plain_side in ("plain loop training", "plain loop command"):
        ratios = [p / s for p, s in zip(times[plain_side], times["sweep command"])]
        print(
            f"  {plain_side} / sweep command: median {statistics.median(ratios):.2f}x "
            f"[{min(ratios):.2f}, {max(ratios):.2f}]"
        )


def print_phases(sweep: list[str], load: str) -> None:
    """One sweep command: start-up, training and outputs, from its own 'trained in' line."""
    seconds, stdout = timed(sweep)
    m = re.search(r"trained in ([\d.]+)s \(([\d.]+)s with outputs\)", stdout)
    train, with_outputs = float(m.group(1)), float(m.group(2))
    print(
        f"{' '.join(sweep[1:])}\nload average before {load}: whole command {seconds:.1f} s = "
        f"start-up {seconds - with_outputs:.1f} s + training {train:.1f} s + outputs "
        f"{with_outputs - train:.1f} s"
    )


if __name__ == "__main__":
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        print(__doc__.strip())
    elif sys.argv[1:2] == ["--plain_loop"]:
        plain_loop(sys.argv[2:])
    else:
        main(sys.argv[1:])
