"""GPT-2 and Llama models whose weights follow an init scheme named on their config.

The config stays a stock ``GPT2Config``/``LlamaConfig`` with extra attributes ``init_scheme``,
``init_std``, ``init_fan_mode``, ``init_nonlinearity``, ``init_gain``; the model subclasses the
stock causal LM, overrides only ``_init_weights`` and saves as the stock class, so stock
``AutoModelForCausalLM`` loads a checkpoint without ``trust_remote_code``.

transformers 5.x initializes a fresh model leaf module by leaf module, each ``PreTrainedModel``
(the body too) by its own ``_init_weights``, and skips a parameter flagged ``_is_hf_initialized``
(loaded by ``from_pretrained``). So the body is built as a scheme class too, every rule lives on
a leaf (``Conv1D``, ``Linear``, ``Embedding``, norms), and a leaf's role (q, k, v part of GPT-2's
fused ``c_attn``, residual projection...) is read from its name through
:mod:`hf_init.lm.families`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedModel,
)
from transformers import initialization as hf_init_fns
from transformers.models.gpt2.modeling_gpt2 import GPT2PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.pytorch_utils import Conv1D

from hf_init.core.moments import moments
from hf_init.core.schemes import (
    SchemeOptions,
    WeightSpec,
    check_applies,
    check_std,
    fans,
    get_scheme,
)
from hf_init.lm.families import GPT2, LLAMA, Weight, family_of, get_family, llama_mlp_width

STOCK_ARCHITECTURE = GPT2.stock_architecture
DEFAULT_SCHEME = "gpt2"
# config attribute -> SchemeOptions field
_OPTION_ATTRS = {
    "init_std": "std",
    "initializer_range": "initializer_range",
    "init_fan_mode": "fan_mode",
    "init_nonlinearity": "nonlinearity",
    "init_gain": "gain",
}
# the shared size names (GPT-2's) -> LlamaConfig's
_LLAMA_NAMES = {
    "n_layer": "num_hidden_layers",
    "n_embd": "hidden_size",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "n_inner": "intermediate_size",
    "n_positions": "max_position_embeddings",
    "attn_pdrop": "attention_dropout",
}
# GPT2Config settings a Llama model has no counterpart for (refused, not silently ignored)
_GPT2_ONLY = (
    {f.name for f in dataclasses.fields(GPT2Config)}
    - {f.name for f in dataclasses.fields(LlamaConfig)}
    - set(_LLAMA_NAMES)
)


def scheme_options(config) -> SchemeOptions:
    """The scheme options recorded on ``config`` (validated)."""
    kwargs = {}
    for attr, field_name in _OPTION_ATTRS.items():
        value = getattr(config, attr, None)
        if value is not None:
            kwargs[field_name] = value
    return SchemeOptions(**kwargs)


def validate_init_config(config) -> None:
    """Raise ValueError if the config names an unknown scheme, one that does not apply to its
    model family, or a bad option."""
    scheme = get_scheme(getattr(config, "init_scheme", DEFAULT_SCHEME))
    check_applies(scheme.name, family_of(config).model_type)
    options = scheme_options(config)
    if scheme.needs_std and options.std is None:
        raise ValueError(f"init scheme {scheme.name!r} needs init_std (a finite number > 0)")


def _check_shape(size_kwargs: dict) -> None:
    """One clear ValueError for sizes (GPT-2's names) transformers would reject obscurely (or
    not at all)."""
    for key in ("n_layer", "n_embd", "n_head", "n_kv_head", "n_inner", "vocab_size", "n_positions"):
        value = size_kwargs.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    n_embd, n_head = size_kwargs.get("n_embd", 768), size_kwargs.get("n_head", 12)
    if n_embd % n_head:
        raise ValueError(f"n_head ({n_head}) must divide n_embd ({n_embd})")
    n_kv_head = size_kwargs.get("n_kv_head")
    if n_kv_head is not None and n_head % n_kv_head:
        raise ValueError(f"n_kv_head ({n_kv_head}) must divide n_head ({n_head})")


def check_llama_initializer_range(value: float | None) -> None:
    """LlamaConfig's upper limit on initializer_range (1; a std is > 0 anyway), as one ValueError
    line instead of its multi-line strict-dataclass error; None = the default."""
    if value is not None and not 0 < value <= 1:
        raise ValueError(f"initializer_range must be in (0, 1] for a Llama, got {value}")


def _llama_kwargs(size_kwargs: dict) -> dict:
    """``LlamaConfig`` keyword arguments from GPT-2's names: the sizes GPT2Config would default
    to, key/value heads = heads, the MLP width by Llama's convention (:func:`llama_mlp_width`)."""
    kwargs = dict(size_kwargs)
    for name in ("resid_pdrop", "embd_pdrop"):
        if kwargs.pop(name, 0.0):
            raise ValueError(
                f"{name}: a Llama model has no residual or embedding dropout "
                "(attention dropout only: attn_pdrop)"
            )
    gpt2_only = sorted(_GPT2_ONLY & set(kwargs))
    if gpt2_only:
        raise ValueError(f"{gpt2_only[0]} is a GPT-2 setting; a Llama model has none")
    check_llama_initializer_range(kwargs.get("initializer_range"))
    gpt2_defaults = GPT2Config()
    for name in ("n_layer", "n_embd", "n_head", "n_positions"):
        kwargs.setdefault(name, getattr(gpt2_defaults, name))
    for ours, theirs in _LLAMA_NAMES.items():
        value = kwargs.pop(ours, None)
        if value is not None:
            kwargs[theirs] = value
    kwargs.setdefault("num_key_value_heads", kwargs["num_attention_heads"])
    kwargs.setdefault("intermediate_size", llama_mlp_width(kwargs["hidden_size"]))
    return kwargs


def make_config(
    init_scheme: str = DEFAULT_SCHEME,
    init_std: float | None = None,
    init_fan_mode: str = "fan_in",
    init_nonlinearity: str = "relu",
    init_gain: float = 1.0,
    model_type: str = "gpt2",
    **size_kwargs,
) -> GPT2Config | LlamaConfig:
    """A ``GPT2Config`` or ``LlamaConfig`` carrying an init scheme. ``size_kwargs`` use GPT-2's
    names for either family (``n_layer``, ``n_embd``, ``n_head``, ``n_inner``, ``vocab_size``,
    ``n_positions``...); ``n_kv_head`` (Llama) sets the key/value heads. Llama's embeddings are
    untied, as ``LlamaConfig``'s default, unless ``tie_word_embeddings=True``."""
    if init_std is not None:
        init_std = check_std(init_std, "init_std")
    family = get_family(model_type)
    _check_shape(size_kwargs)
    vocab_size = size_kwargs.get("vocab_size", 50257)
    for special in ("bos_token_id", "eos_token_id"):  # GPT-2's default 50256 fits its vocab only
        size_kwargs.setdefault(special, vocab_size - 1)
    init_kwargs = dict(
        init_scheme=init_scheme,
        init_std=init_std,
        init_fan_mode=init_fan_mode,
        init_nonlinearity=init_nonlinearity,
        init_gain=init_gain,
    )
    if family is LLAMA:
        config = LlamaConfig(**init_kwargs, **_llama_kwargs(size_kwargs))
    else:
        n_kv_head = size_kwargs.pop("n_kv_head", None)
        if n_kv_head is not None and n_kv_head != size_kwargs.get("n_head", GPT2Config().n_head):
            raise ValueError(f"n_kv_head ({n_kv_head}): GPT-2 has no grouped-query attention")
        config = GPT2Config(**init_kwargs, **size_kwargs)
    validate_init_config(config)
    return config


def _leaf_layout(module: nn.Module) -> str:
    if isinstance(module, Conv1D):
        return "conv1d"
    return "embedding" if isinstance(module, nn.Embedding) else "linear"


class SchemeInitMixin:
    """``_init_weights`` that applies ``config.init_scheme`` to every leaf module."""

    config: GPT2Config | LlamaConfig

    def _weight_of(self, module: nn.Module) -> tuple[Weight, int | None] | None:
        """(the family table's entry of ``module``, its block index or None), None when unlisted."""
        family = family_of(self.config)
        # Looked up afresh each call (a few hundred modules: cheap), so a module replaced
        # since construction is never matched by a stale name.
        name = next((n for n, m in self.named_modules() if m is module), None)
        if name is None:
            # Not attached yet: resize_token_embeddings initializes the new table or (untied)
            # head before swapping it in, sized for the new vocabulary while the config still
            # holds the old one -- so the head is known by its kind, not by its size.
            if isinstance(module, nn.Embedding):
                return family.by_role[family.embedding_roles[0]], None
            if isinstance(module, nn.Linear):
                return family.by_role["lm_head"], None
            return None
        return family.weight_of_name(name)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                hf_init_fns.ones_(module.weight)
            if module.bias is not None:
                hf_init_fns.zeros_(module.bias)
            return
        if type(module).__name__.endswith(("RMSNorm", "RotaryEmbedding")):
            # gains 1 and RoPE frequencies: transformers' own rule (it honours loaded weights)
            PreTrainedModel._init_weights(self, module)
            return
        if not isinstance(module, (Conv1D, nn.Linear, nn.Embedding)):
            return
        if getattr(module, "bias", None) is not None:
            hf_init_fns.zeros_(module.bias)
        weight = module.weight
        if getattr(weight, "_is_hf_initialized", False):  # loaded from a checkpoint: keep it
            return
        scheme = get_scheme(getattr(config, "init_scheme", DEFAULT_SCHEME))
        options = scheme_options(config)
        dims = family_of(config).dims(config)
        entry, layer = self._weight_of(module) or (
            Weight("", ("linear",), _leaf_layout(module)),
            None,
        )
        if entry.parts == ("lm_head",) and getattr(config, "tie_word_embeddings", True):
            return  # tied to the token embedding: initialized there
        # a fused weight (c_attn: d -> 3d as [q | k | v]) is initialized part by part, each
        # part as a separate d -> d projection, exactly as an unfused model would be
        for role, part in entry.split(weight).items():
            fan_in, fan_out = fans(part.shape, entry.layout)
            spec = WeightSpec(role, fan_in, fan_out, dims.n_layer, dims.n_embd, layer)
            scheme.init_(part, spec, options)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            weight[module.padding_idx].zero_()


class SavesAsStockMixin:
    """``save_pretrained`` that records the family's stock class in ``architectures``, so stock
    ``AutoModelForCausalLM`` loads the checkpoint without ``trust_remote_code``."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        # PreTrainedModel.save_pretrained records this class's name: overwrite it
        super().save_pretrained(save_directory, *args, **kwargs)
        self.config.architectures = [family_of(self.config).stock_architecture]
        if kwargs.get("is_main_process", True):
            self.config.save_pretrained(save_directory)


class SchemeGPT2Model(SchemeInitMixin, GPT2Model):
    """GPT-2 body whose weights follow ``config.init_scheme``."""


class SchemeGPT2LMHeadModel(SavesAsStockMixin, SchemeInitMixin, GPT2LMHeadModel):
    """GPT-2 causal LM whose weights follow ``config.init_scheme``; saves as plain GPT-2."""

    def __init__(self, config: GPT2Config):
        validate_init_config(config)
        GPT2PreTrainedModel.__init__(self, config)
        self.loss_type = "ForCausalLM"  # not derived from the class name: docs/traps.md
        self.transformer = SchemeGPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()


class SchemeLlamaModel(SchemeInitMixin, LlamaModel):
    """Llama body whose weights follow ``config.init_scheme``."""


class SchemeLlamaForCausalLM(SavesAsStockMixin, SchemeInitMixin, LlamaForCausalLM):
    """Llama causal LM whose weights follow ``config.init_scheme``; saves as plain Llama."""

    def __init__(self, config: LlamaConfig):
        validate_init_config(config)
        LlamaPreTrainedModel.__init__(self, config)
        self.model = SchemeLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


_LM_CLASSES = {GPT2.model_type: SchemeGPT2LMHeadModel, LLAMA.model_type: SchemeLlamaForCausalLM}


def build_model(
    config: GPT2Config | LlamaConfig | None = None, **config_kwargs
) -> SchemeGPT2LMHeadModel | SchemeLlamaForCausalLM:
    """Build a freshly initialized causal LM of the config's family. Pass a config, or
    ``make_config`` keyword arguments."""
    if config is None:
        config = make_config(**config_kwargs)
    elif config_kwargs:
        raise ValueError("pass either a config or config keyword arguments, not both")
    return _LM_CLASSES[family_of(config).model_type](config)


def _config_of(model: nn.Module):
    """The config of a model, wrapped (DDP, FSDP, compiled) or not."""
    return next((m.config for m in model.modules() if hasattr(m, "config")), None)


def iter_weights(model: nn.Module):
    """Yield ``(role, layer index or None, weight part, storage layout)`` for every part of
    every weight :mod:`hf_init.lm.families` lists for the model's family (stock model or ours,
    wrapped or not); fused weights yield one view per part (q, k, v of GPT-2's ``c_attn``)."""
    family = family_of(_config_of(model))
    for name, module in model.named_modules():
        found = family.weight_of_name(name)
        if found and hasattr(module, "weight"):
            entry, layer = found
            for role, part in entry.split(module.weight).items():
                yield role, layer, part, entry.layout


def _varies_with_layer(scheme, spec: WeightSpec, options: SchemeOptions) -> bool:
    """Whether ``scheme`` gives a weight of this kind different stds in different blocks."""
    if not scheme.per_layer or spec.layer is None:
        return False
    layers = range(spec.n_layer)
    return len({scheme.std(dataclasses.replace(spec, layer=i), options) for i in layers}) > 1


def init_report(model: nn.Module) -> list[dict]:
    """Measured vs. scheme std of every weight kind, aggregated over layers.

    One row per role (Q, K, V reported separately; GPT-2 cross-attention parts, if any, pooled
    with their self-attention twins, which have the same fans): the population std over all
    entries of that role in all layers, and the std the config's scheme prescribes for it. A role
    the scheme gives a different std in each block (``per_layer`` schemes) has one row per layer.
    Each row's ``weight`` names it: the role, or ``role.layer`` for a row of one layer.
    """
    config = model.config
    scheme = get_scheme(getattr(config, "init_scheme", DEFAULT_SCHEME))
    options = scheme_options(config)
    dims = family_of(config).dims(config)
    pieces: dict[tuple[str, int | None], list[torch.Tensor]] = {}
    specs: dict[tuple[str, int | None], WeightSpec] = {}
    for role, layer, part, layout in iter_weights(model):
        if role == "lm_head" and getattr(config, "tie_word_embeddings", True):
            continue
        spec = WeightSpec(role, *fans(part.shape, layout), dims.n_layer, dims.n_embd, layer)
        if not _varies_with_layer(scheme, spec, options):
            layer = None  # pooled over layers: the scheme gives every block this std
        pieces.setdefault((role, layer), []).append(part.reshape(-1))
        specs[role, layer] = spec
    rows = []
    for (role, layer), parts in pieces.items():
        spec = specs[role, layer]
        rows.append(
            {
                "weight": role if layer is None else f"{role}.{layer}",
                "role": role,
                "layer": layer,
                "fan_in": spec.fan_in,
                "fan_out": spec.fan_out,
                "measured_std": moments(torch.cat(parts)).var ** 0.5,
                "scheme_std": scheme.std(spec, options),
            }
        )
    return rows
