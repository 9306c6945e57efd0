"""Variance-propagation theory next to measurement at initialization.

Builds plain MLPs (activations x std = multiples of the critical std), GPT-2s (schemes, with
and without the 1/sqrt(2 n_layer) residual scaling) and pre-RMSNorm Llamas (schemes), measures
them at init (averaged over seeds and a batch of real inputs: standardized sklearn digits; byte
tokens of the Python docs), and writes to OUTPUT_DIR theory_check.jsonl (predicted vs measured
per network, quantity and layer), mlp_forward.png, mlp_gradient.png, gpt2_residual.png,
gpt2_branches.png, llama_residual.png, llama_branches.png and verdict.txt (the verdict printed
at the end).

    python scripts/theory_check.py [config.yaml] --output_dir runs/theory_check --activations relu
"""

import sys

from transformers import HfArgumentParser

from hf_init.core.cli import fail_cleanly, parse_yaml_and_cli
from hf_init.theory.check import TheoryCheckArguments, run_theory_check


def main(argv=None):
    (args,), _ = parse_yaml_and_cli(
        HfArgumentParser((TheoryCheckArguments,), description=__doc__),
        sys.argv[1:] if argv is None else argv,
    )
    run_theory_check(args)


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
