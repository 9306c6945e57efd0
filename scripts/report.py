"""One shareable report from result folders: report.html (self-contained: figures embedded, opens
with no server and no network) and report.md (figures in report_files/ next to it).

    python scripts/report.py outputs/init_study            # a whole study (into the study folder)
    python scripts/report.py outputs/pretrain_tiny --output_dir /tmp/rep   # one pretraining run
    python scripts/report.py outputs/init_study outputs/mlp_sweep outputs/mlp_init_compare \\
        --output_dir rep

Each RUN_OR_STUDY_DIR is a scripts/pretrain.py run folder, a folder of such runs
(scripts/init_study.py), or an MLP study folder (scripts/mlp_sweep.py, scripts/mlp_init_compare.py).
Sections: configs side by side, loss and perplexity, Q/K/V variance and attention figures per
scheme, the equilibration table, the paper's claims with their statistics, and the MLP results.
--output_dir defaults to the first folder given.
"""

import argparse
import sys

from hf_init.core.cli import fail_cleanly, one_line_errors


def main(argv=None):
    parser = one_line_errors(
        argparse.ArgumentParser(
            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    parser.add_argument("folders", nargs="+", metavar="RUN_OR_STUDY_DIR")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="where report.html / report.md go (default: the first folder)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from hf_init.report import write_report

    for path in write_report(args.folders, args.output_dir or args.folders[0]):
        print(path)


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
