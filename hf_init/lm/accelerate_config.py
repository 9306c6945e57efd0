"""``python -m hf_init.lm.accelerate_config``: the set-up step that writes accelerate's default
config (``accelerate config default``, in accelerate's cache folder, which follows ``HF_HOME``),
so that a plain ``accelerate launch scripts/pretrain.py`` prints no "values were not passed" block.

Without a GPU the config says ``use_cpu: false`` (accelerate would otherwise pick a CPU thread
count itself and print that block; the scripts choose the CPU there, in
:func:`hf_init.lm.args.parse_args`); with one it is exactly ``accelerate config default``'s. An
existing default config is left as it is.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def write_default_config() -> tuple[Path, bool]:
    """Write accelerate's default config if there is none; ``(path, written)``."""
    from accelerate.commands.config.config_args import default_yaml_config_file
    from accelerate.commands.config.default import write_basic_config

    from hf_init.core.outputs import write_json

    path = Path(default_yaml_config_file)
    if path.exists():
        return path, False
    with tempfile.TemporaryDirectory() as tmp:
        write_basic_config(mixed_precision="no", save_location=str(Path(tmp, "config.json")))
        config = json.loads(Path(tmp, "config.json").read_text())
    if config.get("use_cpu") and config.get("distributed_type") == "NO":
        config["use_cpu"] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, config)  # JSON is YAML: accelerate reads it either way
    return path, True


def main() -> int:
    path, written = write_default_config()
    print(f"accelerate default config {'written to' if written else 'already at'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
