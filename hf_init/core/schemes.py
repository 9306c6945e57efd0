"""Initialization schemes: one registry name -> one rule for the std of a weight tensor.

Every scheme draws i.i.d. zero-mean entries (normal or uniform), so the std it gives a weight of a
:class:`WeightSpec` (its role and logical fans) describes it fully: :meth:`Scheme.std` returns it,
:meth:`Scheme.init_` draws with it. Fans are logical (:func:`fans`), never the storage layout:
``torch.nn.init.kaiming_*`` reads storage and gets GPT-2's ``Conv1D`` backwards. Biases are 0 and
LayerNorm/RMSNorm gains 1 under every scheme (``hf_init.lm.modeling``). Roles come from
:mod:`hf_init.lm.families`: embeddings and the residual-stream writers (GPT-2's
``attn_proj``/``mlp_proj``, Llama's ``o``/``down``) may get their own std, which a ``per_layer``
scheme also sets from the block the weight sits in (``WeightSpec.layer``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hf_init.lm.families import FAMILIES

# Roles a weight can play: every model family's (hf_init.lm.families; a role name means one thing
# in every family), and "linear" for any plain dense layer (MLP studies, unknown layers).
ROLES = frozenset({*(r for f in FAMILIES.values() for r in f.roles), "linear"})
EMBEDDING_ROLES = frozenset(r for f in FAMILIES.values() for r in f.embedding_roles)
RESIDUAL_ROLES = frozenset(r for f in FAMILIES.values() for r in f.residual_roles)

NONLINEARITY_GAINS = {"relu": math.sqrt(2.0), "linear": 1.0, "tanh": 5.0 / 3.0, "sigmoid": 1.0}
FAN_MODES = ("fan_in", "fan_out")
DISTRIBUTIONS = ("normal", "uniform")


@dataclass(frozen=True)
class WeightSpec:
    """What a weight tensor is: its role, logical fans and the network it sits in.

    ``d_model`` is the residual width (``n_embd``, Llama's ``hidden_size``); for plain MLP layers
    it defaults to ``fan_in``. ``n_layer`` is the number of transformer blocks and ``layer`` the
    0-based block the weight sits in (None outside the blocks): depth-aware schemes read them.
    """

    role: str
    fan_in: int
    fan_out: int
    n_layer: int = 1
    d_model: int | None = None
    layer: int | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(
                f"unknown weight role {self.role!r}; valid roles: {', '.join(sorted(ROLES))}"
            )
        if self.fan_in < 1 or self.fan_out < 1 or self.n_layer < 1:
            raise ValueError(f"fans and n_layer must be >= 1, got {self}")
        if self.layer is not None and not 0 <= self.layer < self.n_layer:
            raise ValueError(f"layer must be in [0, n_layer), got {self}")

    @property
    def width(self) -> int:
        return self.d_model if self.d_model is not None else self.fan_in


@dataclass(frozen=True)
class SchemeOptions:
    """Knobs a scheme may read. On a model config they are the attributes ``init_std``,
    ``initializer_range``, ``init_fan_mode``, ``init_nonlinearity`` and ``init_gain``."""

    std: float | None = None  # `normal` scheme: the std of every weight matrix
    initializer_range: float = 0.02  # `gpt2` scheme and embeddings of fan-based schemes
    fan_mode: str = "fan_in"  # kaiming_*: which fan keeps its variance
    nonlinearity: str = "relu"  # kaiming_*: gain sqrt(2) for relu
    gain: float = 1.0  # xavier_*: multiplies the std

    def __post_init__(self):
        if self.std is not None:
            check_std(self.std, "init_std")
        check_std(self.initializer_range, "initializer_range")
        check_std(self.gain, "init_gain")
        if self.fan_mode not in FAN_MODES:
            raise ValueError(
                f"unknown init_fan_mode {self.fan_mode!r}; valid choices: {', '.join(FAN_MODES)}"
            )
        if self.nonlinearity not in NONLINEARITY_GAINS:
            raise ValueError(
                f"unknown init_nonlinearity {self.nonlinearity!r}; "
                f"valid choices: {', '.join(NONLINEARITY_GAINS)}"
            )


def check_std(value, name: str = "init_std") -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise ValueError."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(as_float) or as_float <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return as_float


def fans(weight_shape: tuple[int, ...] | torch.Size, layout: str) -> tuple[int, int]:
    """Logical (fan_in, fan_out) of a 2-D weight.

    ``layout="linear"``: ``nn.Linear`` storage (out, in). ``layout="conv1d"``: GPT-2
    ``Conv1D`` storage (in, out). ``layout="embedding"``: ``nn.Embedding`` (num, dim), read as
    the linear map one-hot(num) -> dim, so fan_in = num.
    """
    if len(weight_shape) != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight_shape)}")
    a, b = int(weight_shape[0]), int(weight_shape[1])
    if layout == "linear":
        return b, a
    if layout in ("conv1d", "embedding"):
        return a, b
    raise ValueError(f"unknown layout {layout!r}; valid layouts: linear, conv1d, embedding")


StdRule = Callable[[WeightSpec, SchemeOptions], float]


@dataclass(frozen=True)
class Scheme:
    """A named init scheme: a std rule plus the distribution entries are drawn from."""

    name: str
    std_rule: StdRule = field(repr=False)
    distribution: str  # "normal" or "uniform" (uniform on [-sqrt(3) std, sqrt(3) std])
    formula: str  # the variance formula, one line
    reference: str = ""
    needs_std: bool = False  # True when `init_std` must be given
    per_layer: bool = False  # True when blocks at different depths get different stds
    model_types: tuple[str, ...] = ()  # the model families it is defined for; () = every family

    def std(self, spec: WeightSpec, options: SchemeOptions | None = None) -> float:
        """The std this scheme gives a weight of this spec (the exact, not sampled, value)."""
        options = options or SchemeOptions()
        if self.needs_std and options.std is None:
            raise ValueError(f"scheme {self.name!r} needs init_std (a finite number > 0)")
        return float(self.std_rule(spec, options))

    @torch.no_grad()
    def init_(
        self,
        tensor: torch.Tensor,
        spec: WeightSpec,
        options: SchemeOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Fill ``tensor`` in place with i.i.d. zero-mean draws of this scheme's std."""
        std = self.std(spec, options)
        if self.distribution == "normal":
            return tensor.normal_(0.0, std, generator=generator)
        bound = math.sqrt(3.0) * std
        return tensor.uniform_(-bound, bound, generator=generator)


# --- std rules -------------------------------------------------------------------------


def _gpt2(spec: WeightSpec, o: SchemeOptions) -> float:
    if spec.role in RESIDUAL_ROLES:
        return o.initializer_range / math.sqrt(2 * spec.n_layer)
    return o.initializer_range


def _depth_scaled(spec: WeightSpec, o: SchemeOptions) -> float:
    if spec.role not in RESIDUAL_ROLES:
        return o.initializer_range
    if spec.layer is None:
        raise ValueError(
            f"scheme 'depth_scaled' gives each block its own std: the {spec.role} weight needs "
            "its layer index (WeightSpec.layer)"
        )
    return o.initializer_range / math.sqrt(2 * (spec.layer + 1))


def _normal(spec: WeightSpec, o: SchemeOptions) -> float:
    return o.std


def _xavier(spec: WeightSpec, o: SchemeOptions) -> float:
    if spec.role in EMBEDDING_ROLES:  # a lookup table has no meaningful fans: GPT-2's rule
        return o.initializer_range
    return o.gain * math.sqrt(2.0 / (spec.fan_in + spec.fan_out))


def _kaiming(spec: WeightSpec, o: SchemeOptions) -> float:
    if spec.role in EMBEDDING_ROLES:
        return o.initializer_range
    fan = spec.fan_in if o.fan_mode == "fan_in" else spec.fan_out
    return NONLINEARITY_GAINS[o.nonlinearity] / math.sqrt(fan)


def _small_init(spec: WeightSpec, o: SchemeOptions) -> float:
    return math.sqrt(2.0 / (5.0 * spec.width))


def _deepnet(spec: WeightSpec, o: SchemeOptions) -> float:
    if spec.role in EMBEDDING_ROLES:
        return spec.width**-0.5
    beta = (8.0 * spec.n_layer) ** -0.25
    gain = 1.0 if spec.role in ("q", "k") else beta
    return gain * math.sqrt(2.0 / (spec.fan_in + spec.fan_out))


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in [
        Scheme(
            "gpt2",
            _gpt2,
            "normal",
            "Var = r^2 (r = initializer_range); residual writers (GPT-2 attn/mlp c_proj, "
            "Llama o/down) r^2 / (2 n_layer)",
            "Radford et al. 2019, GPT-2; transformers GPT2PreTrainedModel._init_weights",
        ),
        Scheme(
            "depth_scaled",
            _depth_scaled,
            "normal",
            "Var = r^2; residual writers (GPT-2 attn/mlp c_proj, Llama o/down) of block l "
            "(0-based) r^2 / (2 (l + 1))",
            "Zhang, Titov & Sennrich 2019, depth-scaled init (DS-Init), arXiv:1908.11365; "
            "OLMo's `mitchell` init (allenai/OLMo, olmo/initialization.py) scales the output "
            "projections of block l by the same 1 / sqrt(2 (l + 1))",
            per_layer=True,
        ),
        Scheme(
            "normal",
            _normal,
            "normal",
            "Var = init_std^2 for every weight matrix (the sweep's knob)",
            needs_std=True,
        ),
        Scheme(
            "xavier_normal",
            _xavier,
            "normal",
            "Var = gain^2 * 2 / (fan_in + fan_out); embeddings r^2",
            "Glorot & Bengio 2010",
        ),
        Scheme(
            "xavier_uniform",
            _xavier,
            "uniform",
            "Var = gain^2 * 2 / (fan_in + fan_out) (U[-a, a], a = sqrt(3 Var)); embeddings r^2",
            "Glorot & Bengio 2010",
        ),
        Scheme(
            "kaiming_normal",
            _kaiming,
            "normal",
            "Var = g^2 / fan (g = sqrt(2) for relu; fan = fan_in by default); embeddings r^2",
            "He et al. 2015",
        ),
        Scheme(
            "kaiming_uniform",
            _kaiming,
            "uniform",
            "Var = g^2 / fan (U[-a, a], a = sqrt(3 Var)); embeddings r^2",
            "He et al. 2015",
        ),
        Scheme(
            "small_init",
            _small_init,
            "normal",
            "Var = 2 / (5 d) for every weight, d = n_embd (fan_in for a plain MLP)",
            "Nguyen & Salazar 2019, Transformers without Tears, arXiv:1910.05895",
        ),
        Scheme(
            "deepnet",
            _deepnet,
            "normal",
            "Var = b^2 * 2 / (fan_in + fan_out), "
            "b = (8 n_layer)^(-1/4) for V, attn/mlp out, mlp in; b = 1 for Q, K; embeddings 1/d",
            "Wang et al. 2022, DeepNet: Scaling Transformers to 1,000 Layers, arXiv:2203.00555 "
            "(decoder-only beta; DeepNorm's residual alpha is not applied: GPT-2 and Llama "
            "are pre-norm)",
        ),
    ]
}


def get_scheme(name: str) -> Scheme:
    """The registered scheme called ``name``; ValueError listing the valid names otherwise."""
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown init scheme {name!r}; valid schemes: {', '.join(SCHEMES)}"
        ) from None


def check_applies(name: str, model_type: str) -> None:
    """ValueError in one line when scheme ``name`` is not defined for the family ``model_type``,
    naming the schemes that are."""
    scheme = get_scheme(name)
    if scheme.model_types and model_type not in scheme.model_types:
        fits = [n for n, s in SCHEMES.items() if not s.model_types or model_type in s.model_types]
        raise ValueError(
            f"init scheme {name!r} does not apply to model_type {model_type!r} (it is defined "
            f"for {', '.join(scheme.model_types)}); schemes for {model_type}: {', '.join(fits)}"
        )


def scheme_std(name: str, spec: WeightSpec, options: SchemeOptions | None = None) -> float:
    """Shortcut: the std the scheme ``name`` gives a weight of ``spec``."""
    return get_scheme(name).std(spec, options)


#: The options (``SchemeOptions`` fields) each scheme's std rule reads; setting any other has no
#: effect on that scheme, so it is refused (:func:`unused_options`), not recorded as if used.
SCHEME_OPTIONS: dict[str, tuple[str, ...]] = {
    "gpt2": ("initializer_range",),
    "depth_scaled": ("initializer_range",),
    "normal": ("std",),
    "xavier_normal": ("gain", "initializer_range"),
    "xavier_uniform": ("gain", "initializer_range"),
    "kaiming_normal": ("fan_mode", "nonlinearity", "initializer_range"),
    "kaiming_uniform": ("fan_mode", "nonlinearity", "initializer_range"),
    "small_init": (),
    "deepnet": (),
}


def unused_options(name: str, options: SchemeOptions) -> list[str]:
    """The ``SchemeOptions`` fields set away from their defaults that scheme ``name`` ignores."""
    used = SCHEME_OPTIONS[get_scheme(name).name]
    default = SchemeOptions()
    return [
        f
        for f in ("std", "initializer_range", "fan_mode", "nonlinearity", "gain")
        if f not in used and getattr(options, f) != getattr(default, f)
    ]
