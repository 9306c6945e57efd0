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

from hf_init.core.cli import fail_cleanly


def main(argv=None):
    from hf_init.mlp.args import SweepArguments, parse

    argv = list(argv if argv is not None else sys.argv[1:])
    data_args, model, run_args, study = parse(SweepArguments, argv, __doc__)
    from hf_init.mlp.job import sweep_job

    command = "python scripts/mlp_sweep.py " + shlex.join(argv)
    sweep_job(data_args, model, run_args, study, command)


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
