"""Variance-propagation theory next to measurement at initialization.

Builds plain MLPs (activations x std = multiples of the critical std) and GPT-2s (schemes,
with and without the 1/sqrt(2 n_layer) residual scaling), measures them at init (averaged over
seeds and a batch of real inputs: standardized sklearn digits; byte tokens of the Python docs),
and writes to OUTPUT_DIR:

  theory_check.csv     network, layer, predicted, measured, relative error, tolerance, ...
  mlp_forward.png      pre-activation variance per layer, theory line vs measured points
  mlp_gradient.png     gradient variance per layer
  gpt2_residual.png    residual-stream growth per scheme
  gpt2_branches.png    measured/predicted of the attention and MLP branches
  verdict.txt          the verdict printed at the end

    python scripts/theory_check.py --output_dir runs/theory_check
"""

import argparse
import csv
import sys
import time

from hf_init.cli import fail_cleanly, one_line_errors


def _csv_list(kind):
    def parse(text):
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")
    return parse


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/theory_check")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing output folder")
    p.add_argument("--activations", type=_csv_list(str), default=["relu", "tanh", "gelu", "linear"])
    p.add_argument("--std_multiples", type=_csv_list(float), default=[0.7, 1.0, 1.4],
                   help="hidden-layer std as multiples of theory.critical_std")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--batch", type=int, default=256, help="digits images per forward pass")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--k_sigma", type=float, default=4.0, help="tolerance in finite-width standard deviations")
    p.add_argument("--gpt2_schemes", type=_csv_list(str),
                   default=["gpt2", "kaiming_normal", "xavier_normal", "small_init", "deepnet"])
    p.add_argument("--gpt2_n_layer", type=int, default=12)
    p.add_argument("--gpt2_n_embd", type=int, default=128)
    p.add_argument("--gpt2_n_head", type=int, default=4)
    p.add_argument("--gpt2_seq_len", type=int, default=64)
    p.add_argument("--gpt2_batch", type=int, default=8)
    p.add_argument("--gpt2_seeds", type=int, default=2)
    args = one_line_errors(p).parse_args(argv)

    from hf_init import propagation as P
    from hf_init.outputs import existing_outputs, kept_until_success
    from hf_init.plots import theory as plots

    out = P.check_theory_check_args(args)

    t0 = time.time()
    rows = []
    x = P.digits_inputs(args.batch if args.batch < 1797 else None)
    seeds = list(range(args.seeds))
    for act in args.activations:
        for mult in args.std_multiples:
            rows += P.mlp_check_rows(act, mult, x, args.width, args.depth, seeds, args.k_sigma)
        print(f"mlp {act}: done ({time.time() - t0:.0f}s)", flush=True)
    probe = P.GPT2Probe(P.byte_token_batch(args.gpt2_batch, args.gpt2_seq_len), list(range(args.gpt2_seeds)),
                        args.gpt2_n_layer, args.gpt2_n_embd, args.gpt2_n_head)
    for scheme in args.gpt2_schemes:
        for scaling in (True, False):
            rows += P.gpt2_check_rows(scheme, scaling, probe)
        print(f"gpt2 {scheme}: done ({time.time() - t0:.0f}s)", flush=True)

    with kept_until_success(out, existing_outputs(out, P.THEORY_OUTPUTS)):
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".theory_check.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=P.CHECK_FIELDS)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(out / "theory_check.csv")
        if args.activations:
            plots.plot_mlp(rows, "forward", out / "mlp_forward.png")
            plots.plot_mlp(rows, "gradient", out / "mlp_gradient.png")
        if args.gpt2_schemes:
            plots.plot_gpt2(rows, out / "gpt2_residual.png")
            plots.plot_gpt2_branches(rows, out / "gpt2_branches.png")
        lines = P.verdict(rows) + P.VERDICT_NOTES
        (out / "verdict.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
