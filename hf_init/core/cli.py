"""What every script shares: arguments parsed one way (a script's dataclasses filled from its
built-in YAML, the user's YAML, then the flags: :func:`parse_yaml_and_cli`) and bad input ending
in one ``error:`` line and a non-zero exit (:func:`fail_cleanly`).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

# the shipped YAML configs (the repository's configs/ links here)
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit status 2."""


class RunStopped(RuntimeError):
    """A run that stopped before the end on purpose (diverged, interrupted): its message is printed
    as one line and the script exits with ``code`` (1 for a diverged run, 128 + signal number for
    an interrupt), without a traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def one_line_errors(parser):
    """Make an ``argparse`` parser raise :class:`UsageError` on a bad flag (one line via
    :func:`fail_cleanly`) instead of printing its usage block and exiting."""

    def _raise(message: str):
        raise UsageError(f"{message} (see --help)")

    parser.error = _raise
    return parser


def fail_cleanly(main: Callable[[], object]) -> int:
    """Run ``main`` and return its exit status: bad input (a ValueError such as UsageError, a
    missing or existing file) becomes one ``error:`` line and status 2, a stopped run its line and
    code, Ctrl-C status 130. Other errors still raise (they are bugs)."""
    try:
        result = main()
    except (UsageError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(str(err), file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (library errors can run to pages)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


YAML_SUFFIXES = (".yaml", ".yml")


def source_fields(module: str, name: str) -> list[tuple[str, str, str]]:
    """``(name, default, help)`` of the fields of dataclass ``name`` in ``module``, read from its
    source with :mod:`ast`, so that ``--help`` imports nothing (transformers' ``TrainingArguments``
    takes seconds to import). ``_`` names are left out, as ``HfArgumentParser`` leaves them out."""
    top, _, rest = module.partition(".")
    folder = importlib.util.find_spec(top).submodule_search_locations[0]  # runs no __init__
    source = Path(folder, *rest.split(".")).with_suffix(".py").read_text(encoding="utf-8")
    cls = next(n for n in ast.parse(source).body if getattr(n, "name", None) == name)
    out = []
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or node.target.id.startswith("_"):
            continue
        kw = {"default": node.value}
        if isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith("field"):
            kw = {k.arg: k.value for k in node.value.keywords}  # field(default=, metadata=)
        meta = kw.get("metadata", ast.Dict([], []))
        helps = [v for k, v in zip(meta.keys, meta.values) if getattr(k, "value", None) == "help"]
        text = getattr(helps[0], "value", "") if helps else ""
        default = kw.get("default")
        out.append((node.target.id, "None" if default is None else ast.unparse(default), text))
    return out


def read_yaml_config(path: str | os.PathLike) -> dict:
    """The mapping in a YAML file (an empty file is an empty mapping)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UsageError(
            f"config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}"
        ) from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise UsageError(
            f"config file {str(path)!r} must hold a mapping of option: value, "
            f"got {type(cfg).__name__}"
        )
    return cfg


def parse_yaml_and_cli(parser, argv: list[str], default_config: str | os.PathLike | None = None):
    """Parse ``[config.yaml] [--flag value ...]`` into the parser's dataclasses, in three layers:

    1. ``default_config``, the script's built-in YAML (if any), always applied first;
    2. the user's YAML, if the first argument ends in ``.yaml``/``.yml``, on top of it (keys it
       does not set keep the built-in values);
    3. the command-line flags, on top of both.

    Returns ``(dataclasses, config_path)``: the user's YAML if given, else ``default_config``.
    Unknown YAML keys (in either file) and bad flags raise :class:`UsageError` (one line).
    """
    argv = list(argv)
    user_config = argv.pop(0) if argv and argv[0].endswith(YAML_SUFFIXES) else None
    # argparse prints usage and exits on a bad flag; make it one clear line instead
    one_line_errors(parser)
    parser.allow_abbrev = False  # read at parse time: --max_step is not --max_steps
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    for path in (default_config, user_config):
        if path is None:
            continue
        cfg = read_yaml_config(path)
        unknown = sorted(k for k in cfg if k not in actions)
        if unknown:
            raise UsageError(
                f"unknown key(s) in {str(path)!r}: {', '.join(unknown)} "
                f"(valid keys are the script's --flags; see --help)"
            )
        for key in cfg:
            actions[key].required = False
        # numbers as strings: argparse then applies the flag's own type (int vs float) to them, as
        # it does to strings (PyYAML reads 3e-4 as one)
        parser.set_defaults(
            **{
                k: (str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for k, v in cfg.items()
            }
        )
    _, remaining = parser.parse_known_args(argv)  # refused before any dataclass is built
    if remaining:
        raise UsageError(unknown_argument(remaining, parser))
    parsed = parser.parse_args_into_dataclasses(args=argv)
    return tuple(parsed), user_config if user_config is not None else default_config


def unknown_argument(remaining: list[str], parser) -> str:
    """The one line for arguments ``parser`` does not know: the first ``--flag`` among them with
    the closest flag it does know, or all of them if none is a flag."""
    import difflib

    def spelled(flag: str) -> str:  # --max-steps and --max_steps are one flag
        return "--" + flag[2:].split("=", 1)[0].replace("-", "_")

    flags = {spelled(o) for a in parser._actions for o in a.option_strings if o.startswith("--")}
    names = [spelled(t) for t in remaining if t.startswith("--")]
    if not names:
        return f"unknown argument(s): {' '.join(remaining)} (see --help for valid flags)"
    close = difflib.get_close_matches(names[0], sorted(flags), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown argument {names[0]} ({hint}see --help for valid flags)"
