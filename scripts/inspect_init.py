"""Build a GPT-2 or Llama model with an init scheme and print the measured std of each weight
kind next to the scheme's formula.

    python scripts/inspect_init.py [config.yaml] --init_scheme kaiming_normal --n_layer 12
    python scripts/inspect_init.py --model_type llama --n_head 4 --n_kv_head 2 --init_scheme deepnet

A weight kind the scheme gives a different std in each block (``depth_scaled``) is printed per
block as ``role.layer`` (0-based).
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_init.core.cli import fail_cleanly, parse_yaml_and_cli
from hf_init.core.schemes import SCHEMES
from hf_init.lm.families import FAMILIES
from hf_init.lm.modeling import build_model, init_report


@dataclass
class InspectArguments:
    model_type: str = field(default="gpt2", metadata={"help": f"one of: {', '.join(FAMILIES)}"})
    init_scheme: str = field(default="gpt2", metadata={"help": f"one of: {', '.join(SCHEMES)}"})
    init_std: float | None = field(
        default=None, metadata={"help": "std of every weight (scheme `normal`)"}
    )
    n_layer: int = 12
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int | None = field(
        default=None, metadata={"help": "llama: key/value heads (default: n_head; must divide it)"}
    )
    n_inner: int | None = field(
        default=None,
        metadata={"help": "MLP width (default: gpt2 4 n_embd, llama 8/3 n_embd up to 256s)"},
    )
    vocab_size: int = 1024
    seed: int = 0


def main(argv=None):
    (args,), _ = parse_yaml_and_cli(
        HfArgumentParser((InspectArguments,), description=__doc__),
        sys.argv[1:] if argv is None else argv,
    )
    import torch

    torch.manual_seed(args.seed)
    model = build_model(
        model_type=args.model_type,
        init_scheme=args.init_scheme,
        init_std=args.init_std,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        n_kv_head=args.n_kv_head,
        n_inner=args.n_inner,
        vocab_size=args.vocab_size,
    )
    print(
        f"{args.model_type} scheme {args.init_scheme}: {args.n_layer} layers x {args.n_embd}, "
        f"seed {args.seed}"
    )
    print(
        f"{'weight':<12} {'fan_in':>7} {'fan_out':>7} {'measured std':>13} {'scheme std':>11} "
        f"{'ratio':>7}"
    )
    for r in init_report(model):
        print(
            f"{r['weight']:<12} {r['fan_in']:>7} {r['fan_out']:>7} {r['measured_std']:>13.6f} "
            f"{r['scheme_std']:>11.6f} {r['measured_std'] / r['scheme_std']:>7.4f}"
        )


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
