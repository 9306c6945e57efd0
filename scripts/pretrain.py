"""Pretrain a GPT-2 (or, --model_type llama, a Llama) from scratch and record every layer's
Q/K/V weight variance.

    accelerate launch scripts/pretrain.py              # configs/pretrain_tiny.yaml (CPU, minutes)
    accelerate launch scripts/pretrain.py configs/llama_tiny.yaml       # its Llama twin
    accelerate launch scripts/pretrain.py configs/gpt2_small.yaml --init_scheme xavier_normal
    python scripts/pretrain.py configs/pretrain_tiny.yaml --max_steps 50 --output_dir outputs/try

The first argument may be a YAML config (keys = the flags below). It is applied on top of the
built-in default, configs/pretrain_tiny.yaml (shipped in the package as hf_init/configs/), so keys
it leaves out keep their default; flags override both. The run folder gets the model and tokenizer
(save_pretrained), variance.jsonl, figures/, TensorBoard events (runs/) and run_info.json.
"""

import sys
import time

_STARTED = time.time()

from hf_init.core.cli import fail_cleanly  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        from hf_init.lm.args import help_text

        print(__doc__.strip() + "\n\n" + help_text())
        return 0
    from hf_init.lm.pretrain import run

    run(argv, started=_STARTED)


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
