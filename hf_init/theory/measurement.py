"""Measured signal propagation at initialization, the counterpart of
:mod:`hf_init.theory.recursions`.

* :func:`measure_mlp`: a plain fully connected net (same conventions as ``theory``: z_1 = W_1 x
  + b_1, z_l = W_l phi(z_{l-1}) + b_l, no activation after z_L), built fresh for each seed,
  run on a batch of inputs. Per layer it records the pre-activation second moment
  mean(z_l^2) and the gradient second moment mean((dLoss/dz_l)^2), each a *population* mean
  over every entry (batch x units), in float64. The loss is Loss = sum_b <z_L(x_b), v_b> with
  v i.i.d. N(0, 1) drawn independently of the net, so dLoss/dz_L = v (theory's
  ``output_grad_var = 1``); gradients of the hidden layers come from autograd.
* :func:`measure_residual`: a GPT-2 or Llama built by :func:`hf_init.lm.modeling.build_model`,
  in eval mode (no dropout). Forward hooks record, per block, the residual stream after the
  block and what the attention and MLP branches add, each the population second moment over
  batch x positions x coordinates, in float64 (hooks, because the last of transformers'
  ``hidden_states`` has the final norm applied).
* Real inputs, offline: :func:`digits_inputs` (scikit-learn's 8x8 digits, standardized) and
  :func:`byte_token_batch` (UTF-8 bytes of the Python documentation shipped with the standard
  library, as token ids 0..255).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hf_init.lm.families import family_of, get_family
from hf_init.mlp.model import TORCH_ACTIVATIONS
from hf_init.theory.recursions import ACTIVATIONS, weight_stds


@dataclass(frozen=True)
class MLPMeasurement:
    """Per-seed measurements, shape (n_seeds, L): ``q[s, l-1]`` = mean over batch and units of
    z_l^2, ``grad_var[s, l-1]`` = mean of (dLoss/dz_l)^2. Means over seeds as properties."""

    q: np.ndarray
    grad_var: np.ndarray

    @property
    def q_mean(self) -> np.ndarray:
        return self.q.mean(axis=0)

    @property
    def grad_var_mean(self) -> np.ndarray:
        return self.grad_var.mean(axis=0)


def measure_mlp(
    widths: Sequence[int],
    activation: str,
    weight_std,
    inputs: torch.Tensor,
    seeds: Sequence[int] = (0, 1, 2, 3),
    bias_std: float = 0.0,
    scheme_options: dict | None = None,
) -> MLPMeasurement:
    """Measure a fresh MLP per seed on ``inputs`` (B, n_0). ``weight_std``: one std, one per
    layer, or a scheme name (weights then drawn by the scheme itself: normal or uniform)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    widths = tuple(int(n) for n in widths)
    if inputs.ndim != 2 or inputs.shape[1] != widths[0]:
        raise ValueError(f"inputs must be (batch, {widths[0]}), got {tuple(inputs.shape)}")
    if not seeds:
        raise ValueError("need at least one seed")
    stds = weight_stds(
        weight_std, widths, scheme_options
    )  # one resolution rule for theory and measurement
    scheme = None
    if isinstance(weight_std, str):
        from hf_init.core.schemes import SchemeOptions, WeightSpec, get_scheme

        scheme, opts = get_scheme(weight_std), SchemeOptions(**(scheme_options or {}))
    act = TORCH_ACTIVATIONS[activation]
    x = inputs.to(torch.float64)
    qs, gs = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        weights, biases = [], []
        for l in range(len(widths) - 1):
            w = torch.empty(widths[l + 1], widths[l], dtype=torch.float64)
            if scheme is not None:
                scheme.init_(w, WeightSpec("linear", widths[l], widths[l + 1]), opts, generator=gen)
            else:
                w.normal_(0.0, float(stds[l]), generator=gen)
            b = torch.zeros(widths[l + 1], dtype=torch.float64)
            if bias_std > 0:
                b.normal_(0.0, bias_std, generator=gen)
            weights.append(w.requires_grad_())
            biases.append(b)
        v = torch.randn(x.shape[0], widths[-1], dtype=torch.float64, generator=gen)
        zs = []
        h = x
        for w, b in zip(weights, biases):
            z = h @ w.T + b
            zs.append(z)
            h = act(z)
        grads = torch.autograd.grad((zs[-1] * v).sum(), zs[:-1]) if len(zs) > 1 else ()
        qs.append([float((z.detach() ** 2).mean()) for z in zs])
        gs.append([float((g**2).mean()) for g in grads] + [float((v**2).mean())])
    return MLPMeasurement(np.array(qs), np.array(gs))


# --- GPT-2 and Llama -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidualMeasurement:
    """Per-seed population second moments, (n_seeds, n_layer + 1) for ``residual`` (index 0 =
    embeddings) and (n_seeds, n_layer) for the branch outputs ``attn_add`` and ``mlp_add``."""

    residual: np.ndarray
    attn_add: np.ndarray
    mlp_add: np.ndarray


def _second_moment(t: torch.Tensor) -> float:
    return float((t.detach().to(torch.float64) ** 2).mean())


@torch.no_grad()
def measure_residual_once(
    model, input_ids: torch.Tensor
) -> tuple[list[float], list[float], list[float]]:
    """(residual, attn_add, mlp_add) second moments of one built GPT-2 or Llama on ``input_ids``
    (B, T): the input of the first block (the embeddings), what each block's attention and MLP
    add, and each block's output (before the final norm)."""
    family = family_of(model.config)
    blocks = family.blocks(model)
    attention = family.block_weights[0].path.split(".")[0]  # attn (GPT-2), self_attn (Llama)
    was_training = model.training
    model.eval()
    residual: list[float] = []
    attn: list[float] = []
    mlp: list[float] = []
    hooks = [
        blocks[0].register_forward_pre_hook(lambda m, a: residual.append(_second_moment(a[0])))
    ]
    for block in blocks:
        hooks.append(
            getattr(block, attention).register_forward_hook(
                lambda m, i, o: attn.append(_second_moment(o[0]))
            )
        )
        hooks.append(block.mlp.register_forward_hook(lambda m, i, o: mlp.append(_second_moment(o))))
        hooks.append(
            block.register_forward_hook(
                lambda m, i, o: residual.append(_second_moment(o[0] if isinstance(o, tuple) else o))
            )
        )
    try:
        getattr(model, family.body, model)(input_ids=input_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return residual, attn, mlp


@dataclass(frozen=True)
class ResidualProbe:
    """The model to build (``model_type`` gpt2 or llama, its shape) and what to measure it on:
    token ids ``input_ids`` (B, T, the context length is T) and one model per seed in
    ``seeds``."""

    input_ids: torch.Tensor
    seeds: Sequence[int]
    n_layer: int
    n_embd: int
    n_head: int
    vocab_size: int = 256
    model_type: str = "gpt2"
    n_kv_head: int | None = None  # Llama: key/value heads (default n_head)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def measure_residual(
    scheme: str, probe: ResidualProbe, residual_gain: float = 1.0, **scheme_kwargs
) -> ResidualMeasurement:
    """Build ``probe``'s model with ``scheme`` (``build_model``) once per seed (seeding torch's
    global RNG with ``torch.manual_seed(seed)``, as ``build_model`` draws from it), multiply
    its residual projections (the family's ``residual_roles``) by ``residual_gain`` (to toggle
    GPT-2's 1/sqrt(2 n_layer) scaling, see
    :func:`~hf_init.theory.recursions.gpt2_scheme_stds`) and measure on ``probe.input_ids``."""
    from hf_init.lm.modeling import build_model

    family = get_family(probe.model_type)
    sizes = {"n_kv_head": probe.n_kv_head} if probe.n_kv_head is not None else {}
    rows = ([], [], [])
    for seed in probe.seeds:
        torch.manual_seed(int(seed))
        model = build_model(
            model_type=probe.model_type,
            init_scheme=scheme,
            n_layer=probe.n_layer,
            n_embd=probe.n_embd,
            n_head=probe.n_head,
            vocab_size=probe.vocab_size,
            n_positions=probe.seq_len,
            **sizes,
            **scheme_kwargs,
        )
        if residual_gain != 1.0:
            residual = [
                w.path for w in family.block_weights if set(w.parts) <= set(family.residual_roles)
            ]
            with torch.no_grad():
                for block in family.blocks(model):
                    for path in residual:
                        block.get_submodule(path).weight.mul_(residual_gain)
        for acc, values in zip(rows, measure_residual_once(model, probe.input_ids)):
            acc.append(values)
    return ResidualMeasurement(*(np.array(r) for r in rows))


# --- real inputs, offline ---------------------------------------------------------------


def digits_inputs(n: int | None = None, seed: int = 0) -> torch.Tensor:
    """scikit-learn's 8x8 digits (1797 x 64, ships with the package: offline), each feature
    standardized to mean 0 and population variance 1 over the whole set (constant pixels stay
    0). ``n``: a random subset of that many images (fixed by ``seed``)."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    if n is not None:
        if not 1 <= n <= len(x):
            raise ValueError(f"n must be in 1..{len(x)}, got {n}")
        x = x[np.random.default_rng(seed).choice(len(x), size=n, replace=False)]
    return torch.from_numpy(x)


def byte_token_batch(batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(batch, seq_len) token ids: random windows of the UTF-8 bytes of the Python
    documentation that ships with the standard library (``pydoc_data.topics``), ids 0..255."""
    from pydoc_data.topics import topics

    data = np.frombuffer(
        "\n".join(topics[k] for k in sorted(topics)).encode("utf-8"), dtype=np.uint8
    )
    if seq_len < 1 or batch < 1 or seq_len >= len(data):
        raise ValueError(f"batch and seq_len must be >= 1 and seq_len < {len(data)}")
    starts = np.random.default_rng(seed).integers(0, len(data) - seq_len, size=batch)
    return torch.from_numpy(np.stack([data[s : s + seq_len] for s in starts]).astype(np.int64))
