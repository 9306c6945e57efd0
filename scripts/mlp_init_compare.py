"""Controlled Kaiming (fan-in) vs Xavier comparison on MLPs: for each seed both schemes start
from the same standard-normal draw, rescaled by each scheme's per-layer std, and see the same
minibatches; ReLU by default, tanh as the control where Xavier should do well.

    python scripts/mlp_init_compare.py                              # digits, relu + tanh, 10 seeds
    python scripts/mlp_init_compare.py configs/mlp_init_compare.yaml \\
        --dataset wine --activations relu

Arguments: an optional YAML config (keys = the flags), then --flags overriding it (--help).
Writes to --output_dir: results.csv (one row per member), records.jsonl (per-layer statistics
and full-split loss/accuracy of every member at every record step), summary.json,
compare_curves.png, tb/.
"""

import shlex
import sys

from hf_init.core.cli import fail_cleanly


def main(argv=None):
    from hf_init.mlp.args import CompareArguments, parse

    argv = list(argv if argv is not None else sys.argv[1:])
    data_args, model, run_args, study = parse(CompareArguments, argv, __doc__)
    from hf_init.mlp.job import compare_job

    command = "python scripts/mlp_init_compare.py " + shlex.join(argv)
    compare_job(data_args, model, run_args, study, command)


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
