"""The MLPs of the studies: their shape, M of them stacked as one :class:`Ensemble`, and the
shared standard-normal draws their initial weights are made of.

An MLP of ``depth`` hidden layers of ``width`` units maps ``n_in`` features to ``n_out`` logits
through ``depth + 1`` linear layers (weights (out, in) as in ``nn.Linear``, biases zero at init)
with the activation after every hidden layer and none after the output layer. Activations are
those of :data:`hf_init.theory.recursions.ACTIVATIONS` (what the variance theory supports),
mapped to torch once, in :data:`TORCH_ACTIVATIONS`.

The :class:`Ensemble` holds M such MLPs (members: every (std or scheme) x seed of a study) as
stacked tensors, weights (M, out, in) and biases (M, out), and runs them all with batched
matmuls (``torch.baddbmm``). Training it: :mod:`hf_init.mlp.training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from hf_init.theory.recursions import ACTIVATIONS

# theory's activation names -> torch functions (the one table; the theory module has the formulas)
TORCH_ACTIVATIONS = {
    "relu": torch.relu,
    "linear": lambda z: z,
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact, erf
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's gelu_new
    "silu": F.silu,  # the gate of Llama's SwiGLU
}
assert tuple(TORCH_ACTIVATIONS) == ACTIVATIONS, (
    "every activation of the theory needs a torch function"
)


def check_activation(name: str) -> None:
    if name not in TORCH_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True)
class MLPShape:
    """n_in -> depth x [Linear(width) + activation] -> Linear(n_out)."""

    n_in: int
    width: int
    depth: int
    n_out: int
    activation: str = "relu"

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1 (hidden layers), got {self.depth}")
        for name in ("width", "n_in", "n_out"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_activation(self.activation)

    @property
    def n_layers(self) -> int:
        """Linear layers, the output layer included: depth + 1."""
        return self.depth + 1

    def widths(self) -> list[int]:
        """Units of every layer, input to logits: [n_in, width x depth, n_out] (the ``widths``
        of :func:`hf_init.theory.recursions.scheme_weight_stds`)."""
        return [self.n_in] + [self.width] * self.depth + [self.n_out]

    def layer_fans(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of each linear layer, input to output."""
        dims = self.widths()
        return [(dims[i], dims[i + 1]) for i in range(self.n_layers)]


class Activation(nn.Module):
    """One activation of :data:`TORCH_ACTIVATIONS` as a module (for :func:`build_mlp`)."""

    def __init__(self, name: str):
        super().__init__()
        check_activation(name)
        self.name = name

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return TORCH_ACTIVATIONS[self.name](z)

    def extra_repr(self) -> str:
        return self.name


def build_mlp(shape: MLPShape) -> nn.Sequential:
    """The plain ``nn.Sequential`` version of one member (the reference the tests compare with)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(shape.layer_fans()):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < shape.depth:
            layers.append(Activation(shape.activation))
    return nn.Sequential(*layers)


def standard_normal_draws(shape: MLPShape, seeds: list[int]) -> list[torch.Tensor]:
    """One standard-normal tensor per (seed, layer): layer l -> (n_seeds, out, in), float32.

    Seed s always gives the same draw whatever else is in the study, so a member's weights
    are ``draw[seed] * std``: members sharing a seed differ only by the scale (the controlled
    comparison of :func:`ensemble_weights`)."""
    per_seed = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        per_seed.append(
            [torch.randn(fan_out, fan_in, generator=g) for fan_in, fan_out in shape.layer_fans()]
        )
    return [torch.stack([ws[layer] for ws in per_seed]) for layer in range(shape.n_layers)]


def ensemble_weights(
    draws: list[torch.Tensor], seed_index: list[int], layer_stds: list[list[float]]
) -> list[torch.Tensor]:
    """Member m's layer-l weight = draws[l][seed_index[m]] * layer_stds[m][l]: one (M, out, in)
    tensor per layer."""
    idx = torch.as_tensor(seed_index, dtype=torch.long)
    stds = torch.as_tensor(layer_stds, dtype=torch.float32)  # (M, L)
    if stds.shape != (len(seed_index), len(draws)):
        raise ValueError(
            f"layer_stds must be (members={len(seed_index)}, layers={len(draws)}), got "
            f"{tuple(stds.shape)}"
        )
    return [draws[l][idx] * stds[:, l].view(-1, 1, 1) for l in range(len(draws))]


class Ensemble(nn.Module):
    """M MLPs of one shape as stacked parameters: ``weights[l]`` (M, out, in), ``biases[l]``
    (M, out)."""

    def __init__(
        self, shape: MLPShape, weights: list[torch.Tensor], biases: list[torch.Tensor] | None = None
    ):
        super().__init__()
        if len(weights) != shape.n_layers:
            raise ValueError(f"expected {shape.n_layers} weight tensors, got {len(weights)}")
        self.shape = shape
        self.n_members = int(weights[0].shape[0])
        for w, (fan_in, fan_out) in zip(weights, shape.layer_fans()):
            if tuple(w.shape) != (self.n_members, fan_out, fan_in):
                raise ValueError(
                    f"weight shape {tuple(w.shape)} != {(self.n_members, fan_out, fan_in)}"
                )
        if biases is None:
            biases = [torch.zeros(self.n_members, w.shape[1]) for w in weights]
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone().float()) for w in weights])
        self.biases = nn.ParameterList([nn.Parameter(b.detach().clone().float()) for b in biases])
        self._act = TORCH_ACTIVATIONS[shape.activation]

    def forward(self, x: torch.Tensor, keep: bool = False):
        """x: (B, n_in), shared by all members -> logits (M, B, n_out). With ``keep=True`` also
        returns the per-layer pre-activations z_l and post-activations h_l (h_l = z_l at the
        output layer), each feature-major, (M, fan_out, B): the tensors autograd differentiates.

        Computed feature-major, z_l^T = W_l h_{l-1}^T + b_l (M, out, B): the weight gradients
        autograd returns, dz^T h, are then contiguous in the weights' own (M, out, in) layout
        (batch-major products give them transposed, and every optimizer pass over a transposed
        gradient is a strided, cache-hostile copy). The first layer is one product for every
        member, (M * out, n_in) x (n_in, B): x is shared, never copied per member."""
        M, B = self.n_members, x.shape[0]
        pre, post = [], []
        h = None  # h_{l-1}^T, (M, in, B)
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            out = w.shape[1]
            if l == 0:
                z = torch.addmm(b.reshape(M * out, 1), w.reshape(M * out, -1), x.t()).view(
                    M, out, B
                )
            else:
                z = torch.baddbmm(b.unsqueeze(2), w, h)
            if l < self.shape.depth and not keep and self.shape.activation == "relu":
                h = torch.relu_(
                    z
                )  # addmm/baddbmm's backward needs their inputs, not z: safe in place
            else:
                h = self._act(z) if l < self.shape.depth else z
            if keep:
                pre.append(z)
                post.append(h)
        logits = h.transpose(1, 2)
        return (logits, pre, post) if keep else logits

    def member_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each member on (x, y): (M,)."""
        logits = self(x)
        return per_member_ce(logits, y)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m as an ``nn.Sequential`` state dict (keys "0.weight", "0.bias", "2.weight",
        ...)."""
        out = {}
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{2 * l}.weight"] = w[m].detach().clone()
            out[f"{2 * l}.bias"] = b[m].detach().clone()
        return out


def per_member_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits (M, B, C), y (B,) -> mean cross-entropy over the batch for each member, (M,)."""
    m, b, c = logits.shape
    return (
        F.cross_entropy(logits.reshape(m * b, c), y.repeat(m), reduction="none").view(m, b).mean(1)
    )
