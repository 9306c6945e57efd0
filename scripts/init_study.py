"""The init-scheme study in one command: one GPT-2 pretraining config over init schemes x seeds
(x optional learning rates, schedules, warm-up lengths and optimizers), sharing data, tokenizer
and seeds, then the report.

    python scripts/init_study.py          # 6 schemes x 5 seeds on a CPU (time: docs/findings.md)
    python scripts/init_study.py hf_init/configs/init_study_long.yaml      # 1200-step runs
    python scripts/init_study.py hf_init/configs/init_study_coupling.yaml  # schedule x optimizer
    python scripts/init_study.py hf_init/configs/init_study_lr.yaml        # LR sensitivity
    python scripts/init_study.py --schemes gpt2 --lr_scheduler_types cosine constant_with_warmup \
        --warmups 15 150 --optimizers adamw_torch "sgd:momentum=0.9,lr=0.3"
    accelerate launch scripts/init_study.py --pretrain_config hf_init/configs/gpt2_small.yaml \
        --output_dir outputs/init_study_124m    # the 124M model on GPUs

The first argument may be a YAML config (keys = the study flags: schemes, seeds, learning_rates,
lr_scheduler_types, warmups, optimizers, run_flags, pretrain_config, output_dir, report); the
built-in default is hf_init/configs/init_study.yaml. Any other flag (e.g. --max_steps 30
--n_embd 64) is passed to every pretraining run on top of --pretrain_config (default
hf_init/configs/init_study_pretrain.yaml) and the YAML's run_flags. A scheme is a name of
hf_init.core.schemes or normal:STD (every weight N(0, STD^2), no residual scaling). An optimizer
is NAME[:key=value,...]: a Trainer --optim, its lr and weight_decay, and --optim_args.

Writes into --output_dir: study.json, tokenizer/ (trained once), one folder per run (a complete
scripts/pretrain.py run folder, its TensorBoard curves and HParams entry under runs/; a run that
diverges keeps diverged.json instead of run_info.json and the study goes on), and report.html /
report.md (scripts/report.py rebuilds them from the folders). Runs that ended (finished or
diverged) are skipped: re-running the same command continues the study.
`tensorboard --logdir OUTPUT_DIR` overlays every run.
"""

import sys
import time

_STARTED = time.time()

from hf_init.core.cli import fail_cleanly  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from hf_init.lm.study import run_study

    run_study(argv)
    print(f"wall time {time.time() - _STARTED:.0f} s")


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
