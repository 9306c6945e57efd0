"""Every count, size, rate and threshold a user can pass, tested at its boundary from both sides:
the value nearest the boundary that is accepted is accepted (and, where cheap, gives the value an
independent computation gives, e.g. ``critical_std("relu", 1) == sqrt(2)``), and the value
nearest the boundary that is refused is refused with the check's own one-line message.

Why: random mutation testing found that off-by-one changes to these checks survived the suite,
e.g. ``attention_probe_blocks < 0`` -> ``< 1`` (a user's 0 would be refused) or ``fan_in < 1`` ->
``< 2`` (``critical_std("relu", 1)`` would be refused). Most checks had a test of the refused side
only, which a check made stricter still passes. Each row of :data:`BOUNDS` names the check it
covers (file:line when written) and is tested twice: accepted at ``ok``, refused at ``bad``.

Integers: ``ok`` is the bound itself, ``bad`` one past it. Floats: ``ok`` is the bound (``>= 0``)
or the smallest float above it (``> 0``: :data:`TINY`), ``bad`` the bound (``> 0``) or the
float just past it (``-TINY``, ``math.nextafter(1.0, 2.0)``). Everything runs in-process: the
dataclasses are built, the functions called; nothing trains.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hf_init.coord_check.study import CoordCheckArguments, token_batches
from hf_init.core.cli import UsageError
from hf_init.core.schemes import WeightSpec, check_std
from hf_init.lm.args import ModelArguments, RunArguments, check_training_arguments
from hf_init.lm.data.args import DataArguments
from hf_init.lm.modeling import make_config
from hf_init.lm.recorders import StepRecorder
from hf_init.lm.spikes import SpikeDetector
from hf_init.lm.study import StudyArguments, parse_optimizer, parse_scheme
from hf_init.mlp.args import CompareArguments, MLPRunArguments, SweepArguments
from hf_init.mlp.model import MLPShape
from hf_init.mlp.training import TrainConfig
from hf_init.theory import recursions as T
from hf_init.theory.check import TheoryCheckArguments

TINY = math.ulp(0.0)  # the smallest float > 0 (5e-324)
BELOW_ONE = math.nextafter(1.0, 0.0)  # the largest float < 1
ABOVE_ONE = math.nextafter(1.0, 2.0)  # the smallest float > 1
SAME = object()  # Bound.expect: the call returns the value passed


@dataclass(frozen=True)
class Bound:
    """One side of one check: ``call(ok)`` returns ``expect`` (``ok`` itself by default),
    ``call(bad)`` raises ``error`` whose message contains ``message`` (literal text)."""

    where: str  # the check, file:line
    what: str
    call: Callable[[Any], Any]
    ok: Any
    bad: Any
    message: str
    error: type = ValueError
    expect: Any = SAME

    @property
    def id(self) -> str:
        return f"{self.where} {self.what} {self.ok!r}|{self.bad!r}"


def field_of(cls, name: str, **fixed) -> Callable[[Any], Any]:
    """value -> ``cls(**fixed, name=value).name`` (the dataclass keeps what it accepted)."""

    def call(value):
        return getattr(cls(**{**fixed, name: value}), name)

    return call


def usage(where, cls, name, ok, bad, message, **fixed) -> Bound:
    """A dataclass field refused with UsageError."""
    return Bound(where, name, field_of(cls, name, **fixed), ok, bad, message, UsageError)


def value_error(where, cls, name, ok, bad, message, **fixed) -> Bound:
    """A dataclass field refused with ValueError."""
    return Bound(where, name, field_of(cls, name, **fixed), ok, bad, message, ValueError)


# --- hf_init/lm/args.py, hf_init/lm/modeling.py -------------------------------------------------

TRAINING_DEFAULTS = dict(  # TrainingArguments' fields that check_training_arguments reads
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    gradient_accumulation_steps=1,
    learning_rate=5e-5,
    weight_decay=0.0,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_epsilon=1e-8,
    max_grad_norm=1.0,
    warmup_steps=0,
    max_steps=10,
    num_train_epochs=3.0,
    report_to=[],
)


def trainer_field(name: str, **fixed) -> Callable[[Any], Any]:
    def call(value):
        args = SimpleNamespace(**{**TRAINING_DEFAULTS, **fixed, name: value})
        check_training_arguments(args)
        return getattr(args, name)

    return call


def training(name, ok, bad, message, where="lm/args.py:203", **fixed) -> Bound:
    """A check of :func:`~hf_init.lm.args._check_finite` (line 203: the low bound, 204: high)."""
    return Bound(where, name, trainer_field(name, **fixed), ok, bad, message)


def config_size(name: str) -> Callable[[Any], Any]:
    return lambda v: getattr(make_config(n_layer=1, n_embd=8, n_head=1, **{name: v}), name)


def llama_initializer_range(value):
    config = make_config(model_type="llama", n_layer=1, n_embd=8, n_head=1, initializer_range=value)
    return config.initializer_range


LM_ARGS = [
    usage("lm/args.py:69", ModelArguments, "dropout", 0.0, -TINY, "dropout must be in [0, 1), got"),
    usage(
        "lm/args.py:69",
        ModelArguments,
        "dropout",
        BELOW_ONE,
        1.0,
        "dropout must be in [0, 1), got 1.0",
    ),
    *(
        value_error(
            "lm/modeling.py:101",
            ModelArguments,
            name,
            1,
            0,
            f"{name} must be an integer >= 1, got 0",
            n_head=1,
        )
        for name in ("n_layer", "n_embd", "n_head", "n_kv_head", "n_inner")
    ),
    *(
        Bound(
            "lm/modeling.py:101",
            f"make_config {name}",
            config_size(name),
            1,
            0,
            f"{name} must be an integer >= 1, got 0",
        )
        for name in ("vocab_size", "n_positions")
    ),
    *(  # a size must be an int: YAML's `n_layer: yes` is the bool True, `n_layer: 2.0` a float
        Bound(
            "lm/modeling.py:_check_shape type",
            f"make_config n_layer {type(bad).__name__}",
            lambda v: make_config(n_layer=v, n_embd=8, n_head=1).n_layer,
            2,
            bad,
            f"n_layer must be an integer >= 1, got {bad!r}",
        )
        for bad in (True, 2.0)
    ),
    Bound(
        "lm/modeling.py:check_llama_initializer_range",
        "llama initializer_range high",
        llama_initializer_range,
        1.0,
        ABOVE_ONE,
        f"initializer_range must be in (0, 1] for a Llama, got {ABOVE_ONE}",
    ),
    Bound(
        "lm/modeling.py:check_llama_initializer_range",
        "llama initializer_range low",
        llama_initializer_range,
        TINY,
        0.0,
        "initializer_range must be in (0, 1] for a Llama, got 0.0",
    ),
    value_error(  # at parse time, before any data or tokenizer work
        "lm/args.py:ModelArguments",
        ModelArguments,
        "initializer_range",
        1.0,
        ABOVE_ONE,
        f"initializer_range must be in (0, 1] for a Llama, got {ABOVE_ONE}",
        model_type="llama",
    ),
    usage(
        "lm/args.py:143", RunArguments, "variance_steps", 1, 0, "variance_steps must be >= 1, got 0"
    ),
    usage(
        "lm/args.py:145",
        RunArguments,
        "attention_probe_blocks",
        0,
        -1,
        "attention_probe_blocks must be >= 0, got -1",
    ),
    usage(
        "lm/args.py:149",
        RunArguments,
        "attention_probe_steps",
        1,
        0,
        "attention_probe_steps must be >= 1, got 0",
    ),
    usage(
        "lm/args.py:153",
        RunArguments,
        "spike_window",
        2,
        1,
        "spike_window must be >= 2 steps, got 1",
    ),
    usage(
        "lm/args.py:155",
        RunArguments,
        "spike_threshold",
        TINY,
        0.0,
        "spike_threshold must be a finite number > 0, got 0.0",
    ),
    *(
        Bound("lm/args.py:177", name, trainer_field(name), 1, 0, f"{name} must be >= 1, got 0")
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        )
    ),
    *(
        training(name, 0.0, -TINY, f"{name} must be a finite number >= 0, got {-TINY}")
        for name in ("learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm")
    ),
    *(
        training(name, 0.0, -TINY, f"{name} must be a finite number >= 0 and < 1, got {-TINY}")
        for name in ("adam_beta1", "adam_beta2")
    ),
    *(
        training(
            name,
            BELOW_ONE,
            1.0,
            f"{name} must be a finite number >= 0 and < 1, got 1.0",
            where="lm/args.py:204",
        )
        for name in ("adam_beta1", "adam_beta2")
    ),
    Bound(
        "lm/args.py:185",
        "warmup_steps",
        trainer_field("warmup_steps"),
        0,
        -1,
        "warmup_steps must be >= 0, got -1",
    ),
    Bound(
        "lm/args.py:187",
        "max_steps",
        trainer_field("max_steps"),
        1,
        0,
        "max_steps must be >= 1 (or -1: train for num_train_epochs), got 0",
    ),
    Bound(
        "lm/args.py:188",
        "max_steps -1",
        trainer_field("max_steps"),
        -1,
        -2,
        "max_steps must be >= 1 (or -1: train for num_train_epochs), got -2",
    ),
    Bound(
        "lm/args.py:192",
        "num_train_epochs with max_steps -1",
        trainer_field("num_train_epochs", max_steps=-1),
        TINY,
        0.0,
        "num_train_epochs must be a finite number > 0, got 0.0",
    ),
]

# --- hf_init/lm/data/, hf_init/lm/study.py, hf_init/lm/recorders.py, hf_init/lm/spikes.py ------


def bpe_size(vocab_size):
    from hf_init.lm.data.tokenizer import train_bpe_tokenizer

    # 256 byte symbols + <|endoftext|> = 257 entries: no room for a merge, whatever the text
    return len(train_bpe_tokenizer(["hello hello world hello"], vocab_size))


def zscore_after_two(window):
    """The loss z-score of 5 after the values 1 and 3: (5 - 2) / 1 = 3 over a window of 2."""
    detector = SpikeDetector(window, 6.0)
    detector.update(0, 1.0, 1.0)
    detector.update(1, 3.0, 3.0)
    return detector.update(2, 5.0, 5.0).loss_zscore


LM_DATA_AND_RUNS = [
    usage(
        "lm/data/args.py:140",
        DataArguments,
        "validation_split_percentage",
        1,
        0,
        "--validation_split_percentage must be between 1 and 99, got 0",
    ),
    usage(
        "lm/data/args.py:140",
        DataArguments,
        "validation_split_percentage",
        99,
        100,
        "--validation_split_percentage must be between 1 and 99, got 100",
    ),
    usage(
        "lm/data/args.py:145",
        DataArguments,
        "block_size",
        1,
        0,
        "--block_size must be a positive number of tokens, got 0",
    ),
    *(
        usage(
            "lm/data/args.py:157",
            DataArguments,
            name,
            1,
            0,
            f"--{name} must be a positive integer, got 0",
        )
        for name in (
            "max_train_documents",
            "max_train_samples",
            "max_eval_samples",
            "tokenizer_train_documents",
            "group_batch_size",
            "preprocessing_num_workers",
        )
    ),
    usage(  # the BPE's size, checked before any data is read
        "lm/data/args.py:DataArguments",
        DataArguments,
        "vocab_size",
        257,
        256,
        "--vocab_size must be >= 257 (256 byte symbols + the end-of-text token), got 256",
    ),
    Bound(
        "lm/data/tokenizer.py:40",
        "train_bpe_tokenizer vocab_size",
        bpe_size,
        257,
        256,
        "vocab_size must be an integer >= 257 (256 byte symbols + <|endoftext|>), got 256",
    ),
    usage(
        "lm/study.py:122",
        StudyArguments,
        "threads",
        0,
        -1,
        "threads must be >= 0 (0 = torch's choice), got -1",
    ),
    usage("lm/study.py:124", StudyArguments, "seeds", 1, 0, "seeds must be >= 1, got 0"),
    usage(
        "lm/study.py:132",
        StudyArguments,
        "learning_rates",
        [TINY],
        [0.0],
        "learning_rates must be finite and > 0, got 0.0",
    ),
    usage(
        "lm/study.py:141", StudyArguments, "warmups", [0], [-1], "warmups must be >= 0, got [-1]"
    ),
    Bound(
        "lm/study.py:165",
        "parse_scheme std",
        lambda std: parse_scheme(f"normal:{std}"),
        TINY,
        0,
        "the std in scheme 'normal:0' must be finite and > 0",
        UsageError,
        expect=("normal", TINY),
    ),
    Bound(
        "lm/study.py:203",
        "optimizer lr (strict)",
        lambda lr: parse_optimizer(f"sgd:lr={lr}")[1],
        TINY,
        0,
        "lr in optimizer 'sgd:lr=0' must be a finite number > 0, got 0",
        UsageError,
        expect=["--optim", "sgd", "--learning_rate", repr(TINY)],
    ),
    Bound(
        "lm/study.py:203",
        "optimizer weight_decay",
        lambda wd: parse_optimizer(f"sgd:weight_decay={wd}")[1],
        0,
        -TINY,
        f"weight_decay in optimizer 'sgd:weight_decay={-TINY}' must be a finite number >= 0",
        UsageError,
        expect=["--optim", "sgd", "--weight_decay", "0.0"],
    ),
    Bound(
        "lm/recorders.py:134",
        "StepRecorder every",
        lambda every: StepRecorder(every=every).every,
        1,
        0,
        "recording interval must be >= 1 step, got 0",
    ),
    Bound(
        "lm/spikes.py:80",
        "SpikeDetector window",
        zscore_after_two,
        2,
        1,
        "spike window must be >= 2 values, got 1",
        expect=3.0,
    ),
    Bound(
        "lm/spikes.py:82",
        "SpikeDetector threshold",
        lambda threshold: SpikeDetector(2, threshold).threshold,
        TINY,
        0.0,
        "spike threshold must be a finite number > 0, got 0.0",
    ),
]

# --- hf_init/coord_check/study.py, hf_init/theory/check.py ---------------------------------------

THEORY_CHECK_FIT = dict(gpt2_n_head=1, llama_n_kv_head=1)  # so every size may be 1

STUDY_ARGS = [
    *(
        usage(
            "coord_check/study.py:386",
            CoordCheckArguments,
            name,
            1,
            0,
            f"--{name} must be >= 1, got 0",
        )
        for name in ("n_layer", "head_dim", "seeds", "batch_size", "seq_len")
    ),
    *(
        usage(
            "coord_check/study.py:389",
            CoordCheckArguments,
            name,
            low,
            low - 1,
            f"--{name} must be >= {low}, got {low - 1}",
        )
        for name, low in (("steps", 0), ("threads", 0), ("vocab_size", 257))
    ),
    usage(
        "coord_check/study.py:391",
        CoordCheckArguments,
        "widths",
        [64, 128],
        [64, 64],
        "--widths needs at least two different widths, got [64, 64]",
    ),
    usage(
        "coord_check/study.py:widths >= 1",
        CoordCheckArguments,
        "widths",
        [1, 2],
        [0, 1],
        "--widths must be >= 1, got 0",
        head_dim=1,
    ),
    usage(
        "coord_check/study.py:widths multiples",
        CoordCheckArguments,
        "widths",
        [32, 64],
        [32, 48],
        "--widths must be multiples of --head_dim 32, got 48",
        head_dim=32,
    ),
    *(
        usage(
            "coord_check/study.py:400",
            CoordCheckArguments,
            name,
            TINY,
            0.0,
            f"--{name} must be finite and > 0, got 0.0",
        )
        for name in ("learning_rate", "slope_threshold")
    ),
    Bound(
        "coord_check/study.py:132",
        "token_batches seq_len",
        lambda seq_len: token_batches(np.arange(5), 1, 1, seq_len, 0).tolist(),
        4,
        5,
        "seq_len must be below the corpus' 5 tokens, got 5",
        UsageError,
        expect=[[[0, 1, 2, 3]]],
    ),
    *(
        usage(
            "theory/check.py:376",
            TheoryCheckArguments,
            name,
            1,
            0,
            f"--{name} must be >= 1, got 0",
            **THEORY_CHECK_FIT,
        )
        for name in (
            "width",
            "depth",
            "batch",
            "seeds",
            "gpt2_n_layer",
            "gpt2_n_embd",
            "gpt2_n_head",
            "gpt2_seq_len",
            "gpt2_batch",
            "gpt2_seeds",
            "llama_n_kv_head",
        )
    ),
    usage(
        "theory/check.py:383",
        TheoryCheckArguments,
        "std_multiples",
        [TINY],
        [0.0],
        "--std_multiples must be finite and > 0, got 0.0",
    ),
    usage(
        "theory/check.py:383",
        TheoryCheckArguments,
        "k_sigma",
        TINY,
        0.0,
        "--k_sigma must be finite and > 0, got 0.0",
    ),
]

# --- hf_init/theory/ -----------------------------------------------------------------------------

GPT2_STDS = {role: 0.02 for role in T.GPT2_STD_ROLES}
LLAMA_STDS = {role: 0.02 for role in T.LLAMA_STD_ROLES}
SIZES = dict(n_layer=1, n_embd=1, seq_len=1)


def residual(predict, stds, name):
    """(blocks + 1, embedding output, positions averaged) of a one-block, one-position model."""

    def call(value):
        p = predict(stds, **{**SIZES, name: value})
        return len(p.residual), float(p.residual[0]), float(p.attn_positions[0])

    return call


def kernel(predict, stds, **extra):
    """The embedding output of one sequence of ``seq_len`` copies of token 0."""
    return lambda seq_len: float(
        predict(stds, 1, 8, np.zeros((1, seq_len), dtype=np.int64), **extra).residual[0]
    )


def linear_q(**kwargs):
    """q of a width-1 linear net with std 1: bias_std^2 + input second moment."""
    return T.propagate(
        activation="linear", **{"widths": (1, 1), "weight_std": 1.0, **kwargs}
    ).q.tolist()


def byte_corpus_length() -> int:
    """The length of the bytes byte_token_batch draws its windows from."""
    from pydoc_data.topics import topics

    return len("\n".join(topics[k] for k in sorted(topics)).encode("utf-8"))


N_BYTES = byte_corpus_length()
BYTES_MESSAGE = f"batch and seq_len must be >= 1 and seq_len < {N_BYTES}"


def byte_shape(**kwargs):
    from hf_init.theory.measurement import byte_token_batch

    return tuple(byte_token_batch(**{"batch": 1, "seq_len": 1, **kwargs}).shape)


def digits_shape(n):
    from hf_init.theory.measurement import digits_inputs

    return tuple(digits_inputs(n).shape)


THEORY = [
    Bound(
        "theory/recursions.py:157",
        "gaussian_expectation q",
        lambda q: float(T.gaussian_expectation(lambda z: z * z + 1.0, q)),
        0.0,
        -TINY,
        "variances must be finite and >= 0",
        expect=1.0,  # z = 0 surely
    ),
    Bound(
        "theory/recursions.py:239",
        "critical_std relu fan_in",
        lambda n: T.critical_std("relu", n),
        1,
        0,
        "fan_in must be >= 1, got 0",
        expect=math.sqrt(2.0),  # He: sqrt(2 / fan_in)
    ),
    Bound(
        "theory/recursions.py:241",
        "critical_std tanh sigma_b",
        lambda sb: T.critical_std("tanh", 4, sigma_b=sb),
        0.0,
        -TINY,
        f"sigma_b must be a finite number >= 0, got {-TINY!r}",
        expect=0.5,  # 1 / sqrt(fan_in) without bias
    ),
    Bound(
        "theory/recursions.py:253",
        "critical_std gelu q",
        lambda q: T.critical_std("gelu", 1, q=q),
        1e-8,
        0.0,
        "q must be a finite number > 0, got 0.0",
        expect=2.0,  # gelu(z) ~ z / 2 for small z: std -> 2 / sqrt(fan_in)
    ),
    Bound(
        "theory/recursions.py:359",
        "weight_stds",
        lambda std: T.weight_stds(std, (3, 3)).tolist(),
        TINY,
        0.0,
        "weight stds must be finite numbers > 0",
        expect=[TINY],
    ),
    Bound(
        "theory/recursions.py:401",
        "propagate widths >= 1",
        lambda widths: linear_q(widths=widths),
        (1, 1),
        (1, 0),
        "widths must list n_0..n_L (at least 2 entries, all >= 1), got (1, 0)",
        expect=[1.0],
    ),
    Bound(
        "theory/recursions.py:401",
        "propagate widths count",
        lambda widths: linear_q(widths=widths),
        (1, 1),
        (1,),
        "widths must list n_0..n_L (at least 2 entries, all >= 1), got (1,)",
        expect=[1.0],
    ),
    Bound(
        "theory/recursions.py:404",
        "propagate bias_std",
        lambda sb: linear_q(bias_std=sb),
        0.0,
        -TINY,
        f"bias_std must be a finite number >= 0, got {-TINY!r}",
        expect=[1.0],
    ),
    Bound(
        "theory/recursions.py:propagate output_grad_var",
        "propagate output_grad_var",
        lambda v: T.propagate((1, 1), "linear", 1.0, output_grad_var=v).grad_var.tolist(),
        0.0,
        -TINY,
        f"output_grad_var must be a finite number >= 0, got {-TINY!r}",
        expect=[0.0],
    ),
    Bound(
        "theory/recursions.py:407",
        "propagate input_second_moment",
        lambda m0: linear_q(input_second_moment=m0),
        0.0,
        -TINY,
        "input_second_moment must be finite and >= 0",
        expect=[0.0],
    ),
    *(
        Bound(
            "theory/recursions.py:612",
            f"gpt2_residual_variance {name}",
            residual(T.gpt2_residual_variance, GPT2_STDS, name),
            1,
            0,
            "n_layer, n_embd and seq_len must be >= 1",
            expect=(2, 2 * 0.02**2, 1.0),  # wte^2 + wpe^2; one position to attend to
        )
        for name in SIZES
    ),
    *(
        Bound(
            "theory/recursions.py:846",
            f"llama_residual_variance {name}",
            residual(T.llama_residual_variance, LLAMA_STDS, name),
            1,
            0,
            "n_layer, n_embd and seq_len must be >= 1",
            expect=(2, 0.02**2, 1.0),  # embed^2 (no position table)
        )
        for name in SIZES
    ),
    Bound(
        "theory/recursions.py:695",
        "gpt2_residual_kernel seq_len",
        kernel(T.gpt2_residual_kernel, GPT2_STDS),
        1,
        0,
        "token_ids must be (batch, seq_len)",
        expect=2 * 0.02**2,
    ),
    *(
        Bound(
            f"theory/recursions.py:{predict.__name__} sizes",
            f"{predict.__name__} {name}",
            lambda v, predict=predict, stds=stds, extra=extra, name=name: len(
                predict(
                    stds, **{"n_layer": 1, "n_embd": 8, name: v}, token_ids=[[0]], **extra
                ).residual
            ),
            1,
            0,
            "n_layer and n_embd must be >= 1",
            expect=2,  # the embedding output and one block's
        )
        for predict, stds, extra in (
            (T.gpt2_residual_kernel, GPT2_STDS, {}),
            (T.llama_residual_kernel, LLAMA_STDS, {"n_head": 1}),
        )
        for name in ("n_layer", "n_embd")
    ),
    Bound(
        "theory/recursions.py:903",
        "llama_residual_kernel seq_len",
        kernel(T.llama_residual_kernel, LLAMA_STDS, n_head=1),
        1,
        0,
        "token_ids must be (batch, seq_len)",
        expect=0.02**2,
    ),
    Bound(
        "theory/measurement.py:235",
        "digits_inputs n low",
        digits_shape,
        1,
        0,
        "n must be in 1..1797, got 0",
        expect=(1, 64),
    ),
    Bound(
        "theory/measurement.py:235",
        "digits_inputs n high",
        digits_shape,
        1797,
        1798,
        "n must be in 1..1797, got 1798",
        expect=(1797, 64),
    ),
    Bound(
        "theory/measurement.py:249",
        "byte_token_batch batch",
        lambda b: byte_shape(batch=b),
        1,
        0,
        BYTES_MESSAGE,
        expect=(1, 1),
    ),
    Bound(
        "theory/measurement.py:249",
        "byte_token_batch seq_len low",
        lambda t: byte_shape(seq_len=t),
        1,
        0,
        BYTES_MESSAGE,
        expect=(1, 1),
    ),
    Bound(
        "theory/measurement.py:249",
        "byte_token_batch seq_len high",
        lambda t: byte_shape(seq_len=t),
        N_BYTES - 1,
        N_BYTES,
        BYTES_MESSAGE,
        expect=(1, N_BYTES - 1),
    ),
]

# --- hf_init/mlp/, hf_init/core/schemes.py -------------------------------------------------------


def wine(**kwargs):
    """(train rows, test rows) of the wine split (178 rows, 3 classes, stratified)."""
    from hf_init.mlp.data import load_tabular

    data = load_tabular("wine", **kwargs)
    return len(data.x_train), len(data.x_test)


MLP_AND_SCHEMES = [
    value_error(
        "mlp/model.py:56",
        MLPShape,
        "depth",
        1,
        0,
        "depth must be >= 1 (hidden layers), got 0",
        n_in=1,
        width=1,
        n_out=1,
    ),
    *(
        value_error(
            "mlp/model.py:59",
            MLPShape,
            name,
            1,
            0,
            f"{name} must be >= 1, got 0",
            **{"n_in": 1, "width": 1, "depth": 1, "n_out": 1},
        )
        for name in ("width", "n_in", "n_out")
    ),
    value_error(
        "mlp/training.py:88",
        TrainConfig,
        "lr",
        TINY,
        0.0,
        "lr must be a finite number > 0, got 0.0",
    ),
    *(
        value_error("mlp/training.py:91", TrainConfig, name, 1, 0, f"{name} must be >= 1, got 0")
        for name in ("epochs", "batch_size", "record_every", "probe_size")
    ),
    value_error(
        "mlp/training.py:momentum low",
        TrainConfig,
        "momentum",
        0.0,
        -TINY,
        f"momentum must be in [0, 1), got {-TINY}",
    ),
    value_error(
        "mlp/training.py:momentum high",
        TrainConfig,
        "momentum",
        BELOW_ONE,
        1.0,
        "momentum must be in [0, 1), got 1.0",
    ),
    Bound(
        "mlp/data.py:275",
        "load_tabular test_fraction low",
        lambda f: wine(test_fraction=f),
        0.02,  # sklearn needs a test row per class: 178 x 0.02 -> 4 >= 3
        0.0,
        "test_fraction must be in (0, 1), got 0.0",
        expect=(178 - math.ceil(0.02 * 178), math.ceil(0.02 * 178)),
    ),
    Bound(
        "mlp/data.py:275",
        "load_tabular test_fraction high",
        lambda f: wine(test_fraction=f),
        0.98,  # and a training row per class: 178 - ceil(174.44) = 3
        1.0,
        "test_fraction must be in (0, 1), got 1.0",
        expect=(178 - math.ceil(0.98 * 178), math.ceil(0.98 * 178)),
    ),
    Bound(
        "mlp/data.py:277",
        "load_tabular mnist_train_size",
        lambda size: sum(wine(mnist_train_size=size)),
        1,
        0,
        "mnist_train_size must be >= 1, got 0",
        expect=178,  # not MNIST: the size is checked, then unused
    ),
    usage(
        "mlp/args.py:119",
        MLPRunArguments,
        "threads",
        0,
        -1,
        "--threads must be >= 0 (0 = torch's choice), got -1",
        device="cpu",
    ),
    usage("mlp/args.py:206", SweepArguments, "seeds", 1, 0, "--seeds must be >= 1, got 0"),
    usage(
        "mlp/args.py:235",
        CompareArguments,
        "seeds",
        2,
        1,
        "--seeds must be >= 2 for a paired test, got 1",
    ),
    usage(
        "mlp/args.py:239",
        CompareArguments,
        "target_loss",
        TINY,
        0.0,
        "--target_loss must be > 0, got 0.0",
    ),
    *(
        value_error(
            "core/schemes.py:55",
            WeightSpec,
            name,
            1,
            0,
            "fans and n_layer must be >= 1, got WeightSpec(",
            **{"role": "linear", "fan_in": 1, "fan_out": 1},
        )
        for name in ("fan_in", "fan_out", "n_layer")
    ),
    value_error(
        "core/schemes.py:57",
        WeightSpec,
        "layer",
        0,
        -1,
        "layer must be in [0, n_layer), got WeightSpec(",
        role="attn_proj",
        fan_in=1,
        fan_out=1,
        n_layer=3,
    ),
    value_error(
        "core/schemes.py:57",
        WeightSpec,
        "layer",
        2,
        3,
        "layer must be in [0, n_layer), got WeightSpec(",
        role="attn_proj",
        fan_in=1,
        fan_out=1,
        n_layer=3,
    ),
    Bound(
        "core/schemes.py:98",
        "check_std",
        check_std,
        TINY,
        0.0,
        "init_std must be a finite number > 0, got 0.0",
    ),
]

BOUNDS = [*LM_ARGS, *LM_DATA_AND_RUNS, *STUDY_ARGS, *THEORY, *MLP_AND_SCHEMES]
IDS = [b.id for b in BOUNDS]


def test_every_row_is_named_once():
    assert len(set(IDS)) == len(IDS), sorted(i for i in IDS if IDS.count(i) > 1)


@pytest.mark.parametrize("bound", BOUNDS, ids=IDS)
def test_the_value_at_the_boundary_is_accepted(bound):
    expect = bound.ok if bound.expect is SAME else bound.expect
    got = bound.call(bound.ok)
    numbers = expect if isinstance(expect, (list, tuple)) else [expect]
    if all(isinstance(x, (int, float)) for x in numbers):
        assert got == pytest.approx(expect, rel=1e-6, abs=0.0)
    else:  # strings, nested lists: exactly
        assert got == expect


@pytest.mark.parametrize("bound", BOUNDS, ids=IDS)
def test_the_value_just_past_it_is_refused(bound):
    with pytest.raises(bound.error, match=re.escape(bound.message)) as err:
        bound.call(bound.bad)
    assert "\n" not in str(err.value)  # one line
