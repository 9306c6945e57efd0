"""Coord check (microsoft/mup's): is an init scheme width-stable?

Trains a GPT-2 per (scheme, width, seed) for a few AdamW steps on the built-in corpus and records,
per layer and step, the RMS of the residual stream, the attention logits and the MLP output (and
of the embeddings and the output logits); then fits ln RMS against ln width: flat = width-stable.

    python scripts/coord_check.py                          # every shipped scheme, widths 64..512
    python scripts/coord_check.py --schemes gpt2 xavier_normal --widths 64 128 256 --steps 10

The first argument may be a YAML config (keys = the flags below). Writes to --output_dir
records.jsonl, slopes.csv, slopes.md and figures/; docs/coord_check.md says how to read them.
"""

import sys
import time
from pathlib import Path

from transformers import HfArgumentParser

from hf_init.coord_check.study import CoordCheckArguments
from hf_init.core.cli import fail_cleanly, parse_yaml_and_cli

# what this script writes (with --overwrite_output_dir kept until the new ones are written)
OUTPUTS = {
    "records.jsonl": "rms per (scheme, width, seed, step, layer, role) and the loss per step",
    "slopes.csv": "slope of ln RMS against ln width per (scheme, role, layer, step), verdict",
    "slopes.md": "the same slopes as one table per scheme",
    "figures": "coord_check_<scheme>.png: RMS against width per activation, a line per step",
}


def main(argv=None):
    (args,), _ = parse_yaml_and_cli(
        HfArgumentParser((CoordCheckArguments,), description=__doc__),
        sys.argv[1:] if argv is None else argv,
    )

    import torch

    from hf_init.coord_check import study
    from hf_init.coord_check.plots import figure_path, plot_scheme
    from hf_init.core.outputs import check_output_dir, kept_until_success, write_atomic, write_csv
    from hf_init.core.records import read_records, write_records

    out = Path(args.output_dir)
    found = check_output_dir(out, args.overwrite_output_dir, OUTPUTS, "--overwrite_output_dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    records = study.run_coord_check(args)

    with kept_until_success(out, found):
        out.mkdir(parents=True, exist_ok=True)
        frame = read_records(write_records(out / "records.jsonl", records))
        rows = study.slope_table(frame, args.slope_threshold)
        write_csv(out / "slopes.csv", rows)
        table = study.slopes_markdown(rows, args.slope_threshold)
        write_atomic(out / "slopes.md", lambda f: f.write(table))
        tables = study.rms_tables(frame)
        for scheme in args.schemes:
            plot_scheme(tables, scheme, rows, figure_path(out / "figures", scheme))
    print("\n".join(study.summary_lines(rows)))
    print(f"wrote {out} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
