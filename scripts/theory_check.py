"""Variance-propagation theory next to measurement at initialization.

Builds plain MLPs (activations x std = multiples of the critical std) and GPT-2s (schemes,
with and without the 1/sqrt(2 n_layer) residual scaling), measures them at init (averaged over
seeds and a batch of real inputs: standardized sklearn digits; byte tokens of the Python docs),
and writes to OUTPUT_DIR the files of OUTPUTS below.

    python scripts/theory_check.py [config.yaml] --output_dir runs/theory_check --activations relu tanh
"""

import sys
import time
from pathlib import Path

from transformers import HfArgumentParser

from hf_init.core.cli import fail_cleanly, parse_yaml_and_cli
from hf_init.theory.check import TheoryCheckArguments

# what this script writes (with --overwrite these are kept until the new files are written)
OUTPUTS = {
    "theory_check.jsonl": "records: predicted vs measured per network, quantity and layer (hf_init.theory.check)",
    "mlp_forward.png": "pre-activation variance per layer, theory line vs measured points",
    "mlp_gradient.png": "gradient variance per layer",
    "gpt2_residual.png": "residual-stream growth per scheme",
    "gpt2_branches.png": "measured/predicted of the attention and MLP branches",
    "verdict.txt": "the verdict printed at the end",
}


def main(argv=None):
    (args,), _ = parse_yaml_and_cli(
        HfArgumentParser((TheoryCheckArguments,), description=__doc__),
        sys.argv[1:] if argv is None else argv,
    )

    from hf_init.core.outputs import check_output_dir, existing_outputs, kept_until_success
    from hf_init.core.records import write_records
    from hf_init.theory import check as C
    from hf_init.theory import measurement as P
    from hf_init.theory import plots

    out = Path(args.output_dir)
    check_output_dir(out, args.overwrite)  # any entry counts: refuse a folder that is not empty
    t0 = time.time()
    records = []
    x = P.digits_inputs(args.batch if args.batch < 1797 else None)
    seeds = list(range(args.seeds))
    for act in args.activations:
        for mult in args.std_multiples:
            records += C.mlp_check_records(
                act, mult, x, args.width, args.depth, seeds, args.k_sigma
            )
        print(f"mlp {act}: done ({time.time() - t0:.0f}s)", flush=True)
    probe = P.GPT2Probe(
        P.byte_token_batch(args.gpt2_batch, args.gpt2_seq_len),
        list(range(args.gpt2_seeds)),
        args.gpt2_n_layer,
        args.gpt2_n_embd,
        args.gpt2_n_head,
    )
    for scheme in args.gpt2_schemes:
        for scaling in (True, False):
            records += C.gpt2_check_records(scheme, scaling, probe)
        print(f"gpt2 {scheme}: done ({time.time() - t0:.0f}s)", flush=True)

    with kept_until_success(out, existing_outputs(out, tuple(OUTPUTS))):
        out.mkdir(parents=True, exist_ok=True)
        rows = C.read_check_rows(write_records(out / "theory_check.jsonl", records))
        if args.activations:
            plots.plot_mlp(rows, "forward", out / "mlp_forward.png")
            plots.plot_mlp(rows, "gradient", out / "mlp_gradient.png")
        if args.gpt2_schemes:
            plots.plot_gpt2(rows, out / "gpt2_residual.png")
            plots.plot_gpt2_branches(rows, out / "gpt2_branches.png")
        lines = C.verdict(rows) + C.VERDICT_NOTES
        (out / "verdict.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
