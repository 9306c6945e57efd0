"""Build a GPT-2 with an init scheme and print the measured std of each weight kind next to
the scheme's formula.

    python scripts/inspect_init.py --init_scheme kaiming_normal --n_layer 12 --n_embd 128
"""

import argparse
import sys

from hf_init.cli import fail_cleanly, one_line_errors
from hf_init.modeling import build_model, init_report
from hf_init.schemes import SCHEMES


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init_scheme", default="gpt2", help=f"one of: {', '.join(SCHEMES)}")
    p.add_argument("--init_std", type=float, default=None, help="std of every weight (scheme `normal`)")
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = one_line_errors(p).parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    model = build_model(init_scheme=args.init_scheme, init_std=args.init_std, n_layer=args.n_layer,
                        n_embd=args.n_embd, n_head=args.n_head, vocab_size=args.vocab_size)
    print(f"scheme {args.init_scheme}: {args.n_layer} layers x {args.n_embd}, seed {args.seed}")
    print(f"{'weight':<10} {'fan_in':>7} {'fan_out':>7} {'measured std':>13} {'scheme std':>11} {'ratio':>7}")
    for r in init_report(model):
        print(f"{r['role']:<10} {r['fan_in']:>7} {r['fan_out']:>7} {r['measured_std']:>13.6f} "
              f"{r['scheme_std']:>11.6f} {r['measured_std'] / r['scheme_std']:>7.4f}")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
