"""The arguments of the two MLP study scripts (``scripts/mlp_sweep.py``,
``scripts/mlp_init_compare.py``), parsed the one way (:func:`hf_init.core.cli.parse_yaml_and_cli`:
a YAML config, then ``--flag`` overrides). The flags both scripts take are declared once
(:class:`TabularDataArguments`, :class:`MLPModelArguments`, :class:`MLPRunArguments`); each script
adds its own (:class:`SweepArguments`, :class:`CompareArguments`). Every dataclass checks its
fields in ``__post_init__``, so bad input stops before any data is read or anything written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_init.core.cli import UsageError
from hf_init.mlp.model import MLPShape, check_activation
from hf_init.mlp.study import check_controlled_schemes, log_grid
from hf_init.mlp.training import OPTIMIZERS, TrainConfig


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


def _as_list(value, flag: str, convert=str) -> list:
    """A list flag's value as a non-empty list (a YAML scalar is a list of one)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise UsageError(f"{flag} is empty; give one or more values, space-separated")
    try:
        return [convert(v) for v in values]
    except (TypeError, ValueError):
        raise UsageError(f"{flag} must be {convert.__name__} values, got {values}") from None


@dataclass
class TabularDataArguments:
    dataset: str = _help("wine | digits (offline stand-in for MNIST) | mnist", default="digits")
    split_seed: int = _help("train/test split (wine, digits) and MNIST subset", default=0)
    mnist_dir: str | None = _help(
        "folder with the MNIST IDX files (optionally .gz) or parquet", default=None
    )
    mnist_train_size: int = _help("random subset of MNIST's 60k training images", default=10000)

    def load(self):
        """The :class:`~hf_init.mlp.data.TabularData` these arguments name."""
        from hf_init.mlp.data import load_tabular

        return load_tabular(
            self.dataset,
            split_seed=self.split_seed,
            mnist_dir=self.mnist_dir,
            mnist_train_size=self.mnist_train_size,
        )


@dataclass
class MLPModelArguments:
    """The MLP and how it is trained (shared by both studies)."""

    depth: int = _help("hidden layers", default=4)
    width: int = _help("units per hidden layer", default=64)
    optimizer: str = _help(f"{' | '.join(OPTIMIZERS)} (sgd with momentum)", default="sgd")
    lr: float | None = _help("default 0.01 for sgd, 1e-3 for adam", default=None)
    momentum: float = _help("sgd momentum", default=0.9)
    epochs: int = _help("passes over the training split", default=30)
    batch_size: int = _help("minibatch size (every member sees the same minibatches)", default=64)

    def __post_init__(self):
        MLPShape(1, self.width, self.depth, 1)  # checks depth and width
        if self.lr is None:
            self.lr = 1e-3 if self.optimizer == "adam" else 0.01
        # checks optimizer and lr (the study's own fields are checked with it)
        self.train_config(1, 1)

    def train_config(self, record_every: int, probe_size: int, dtype="float32") -> TrainConfig:
        """The :class:`~hf_init.mlp.training.TrainConfig` of these arguments."""
        return TrainConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            epochs=self.epochs,
            batch_size=self.batch_size,
            record_every=record_every,
            probe_size=probe_size,
            dtype=dtype,
        )

    def describe(self) -> str:
        """The optimizer part of a study's one-line setup."""
        return (
            f"{self.optimizer} lr {self.lr:g}"
            + (f" momentum {self.momentum:g}" if self.optimizer == "sgd" else "")
            + f", batch {self.batch_size}, {self.epochs} epochs"
        )


@dataclass
class MLPRunArguments:
    overwrite: bool = _help("replace a study already in --output_dir", default=False)
    no_progress: bool = _help("no progress bar", default=False)
    threads: int = _help(
        "torch CPU threads (default 0 = torch's choice, every core; pin N on a machine shared with "
        "other jobs, see docs/benchmarks.md)",
        default=0,
    )
    device: str = _help(
        "auto | cpu | cuda | cuda:N | mps: where the ensemble and its data live "
        "(auto = the accelerator when present, else cpu)",
        default="auto",
    )
    dtype: str = _help(
        "float32 | tf32 (CUDA) | bfloat16: matmul precision (weights, optimizer and loss stay "
        "float32)",
        default="float32",
    )

    def __post_init__(self):
        from hf_init.mlp.training import DTYPES

        if self.threads < 0:
            raise UsageError(f"--threads must be >= 0 (0 = torch's choice), got {self.threads}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.torch_device()  # checks --device (and --dtype tf32 against it)

    def torch_device(self):
        """The ``torch.device`` --device names (``auto``: CUDA, else MPS, else CPU); UsageError
        for a device this machine does not have."""
        import torch

        spec = self.device.strip().lower()
        if spec == "auto":
            spec = (
                "cuda"
                if torch.cuda.is_available()
                else "mps"
                if torch.backends.mps.is_available()
                else "cpu"
            )
        try:
            device = torch.device(spec)
        except (RuntimeError, ValueError):
            raise UsageError(
                f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            ) from None
        if device.type not in ("cpu", "cuda", "mps"):
            raise UsageError(
                f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                f"--device {self.device}: no CUDA device on this machine; use --device cpu or auto"
            )
        if (
            device.type == "cuda"
            and device.index is not None
            and device.index >= torch.cuda.device_count()
        ):
            raise UsageError(
                f"--device {self.device}: this machine has {torch.cuda.device_count()} "
                "CUDA device(s)"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UsageError(
                f"--device {self.device}: MPS is not available here; use --device cpu or auto"
            )
        if self.dtype == "tf32" and device.type != "cuda":
            raise UsageError(
                f"--dtype tf32 needs a CUDA device (the run is on {device.type}); "
                "use float32 or bfloat16"
            )
        return device

    def apply_threads(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)


@dataclass
class SweepArguments:
    stds: list[str] | None = _help(
        "initial weight stds, space-separated (default: 1e-4..1e1, 3 per decade)", default=None
    )
    depths: list[int] | None = _help(
        "several depths, space-separated -> the phase diagram (replaces --depth)", default=None
    )
    seeds: int = _help("seeds 0..N-1 per std", default=5)
    activation: str = _help("relu | linear | tanh | gelu | gelu_tanh", default="relu")
    record_every: int = _help("steps between variance/metric records", default=20)
    probe_size: int = _help(
        "training examples (the first ones) of the fixed probe batch", default=256
    )
    output_dir: str = _help("where the study is written", default="runs/mlp_sweep")

    def __post_init__(self):
        from hf_init.core.schemes import check_std

        if self.stds is None:
            self.stds = log_grid(1e-4, 10.0, 3)
        self.stds = sorted({check_std(v, "--stds") for v in _as_list(self.stds, "--stds")})
        if self.depths is not None:
            self.depths = _as_list(self.depths, "--depths", int)
            for depth in self.depths:
                MLPShape(1, 1, depth, 1)
        if self.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {self.seeds}")
        check_activation(self.activation)


@dataclass
class CompareArguments:
    schemes: list[str] = _help(
        "the two registry schemes compared, space-separated (normal ones: they rescale "
        "one shared draw)",
        default_factory=lambda: ["kaiming_normal", "xavier_normal"],
    )
    activations: list[str] = _help(
        "relu | linear | tanh | gelu | gelu_tanh, space-separated",
        default_factory=lambda: ["relu", "tanh"],
    )
    seeds: int = _help("seeds 0..N-1 (5 seeds cannot reach Wilcoxon p < 0.05)", default=10)
    record_every: int = _help("steps between loss records (steps-to-target resolution)", default=5)
    target_loss: float | None = _help("default 0.25 x ln(n_classes)", default=None)
    output_dir: str = _help("where the study is written", default="runs/mlp_init_compare")

    def __post_init__(self):
        self.schemes = _as_list(self.schemes, "--schemes")
        self.activations = _as_list(self.activations, "--activations")
        if len(self.schemes) != 2:
            raise UsageError(f"--schemes needs exactly two schemes, got {len(self.schemes)}")
        check_controlled_schemes(self.schemes)
        if self.schemes[0] == self.schemes[1]:
            raise UsageError(f"--schemes needs two different schemes, got {self.schemes[0]} twice")
        if self.seeds < 2:
            raise UsageError(f"--seeds must be >= 2 for a paired test, got {self.seeds}")
        for act in self.activations:
            check_activation(act)
        if self.target_loss is not None and not self.target_loss > 0:
            raise UsageError(f"--target_loss must be > 0, got {self.target_loss}")


def parse(study_class, argv: list[str], description: str | None = None, **defaults):
    """``(data, model, run, study)`` arguments of a study script from ``[config.yaml] [--flags]``.
    ``description``: the script's ``--help`` text; ``defaults``: a script's own defaults for
    shared flags (the YAML and the flags still override them)."""
    import argparse

    from transformers import HfArgumentParser

    from hf_init.core.cli import parse_yaml_and_cli

    parser = HfArgumentParser(
        (TabularDataArguments, MLPModelArguments, MLPRunArguments, study_class),
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(**defaults)
    parsed, _ = parse_yaml_and_cli(parser, argv)
    return parsed
