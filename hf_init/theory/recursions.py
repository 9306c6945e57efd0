"""Variance-propagation theory at initialization (pure functions, numpy only).

Fully connected network
-----------------------
Widths ``n_0, n_1, ..., n_L``. Layer ``l`` (1..L) computes the pre-activation

    z_1 = W_1 x + b_1,        z_l = W_l phi(z_{l-1}) + b_l   (l = 2..L; no activation after z_L)

with ``W_l`` entries i.i.d. zero-mean of variance ``sigma_l^2`` (``sigma_l`` = ``weight_std``,
fan_in ``n_{l-1}``) and ``b_l`` entries i.i.d. zero-mean of variance ``sigma_b^2``.

Forward (mean-field, infinite width): every entry of ``z_l`` is Gaussian with variance

    q_1 = sigma_1^2 * |x|^2 + sigma_b^2 = sigma_1^2 * n_0 * mean_i(x_i^2) + sigma_b^2
    q_l = sigma_l^2 * n_{l-1} * E[phi(z)^2] + sigma_b^2,        z ~ N(0, q_{l-1})

Backward: ``g_l = dLoss/dz_l`` (the gradient with respect to the *pre-activation*). With
``g_{l-1} = phi'(z_{l-1}) * (W_l^T g_l)``, and under the usual assumptions (infinite width; the
backward pass uses weights independent of the forward ones, the "gradient independence
assumption"; ``phi'(z)`` independent of ``W^T g``):

    Var(g_L) = output_grad_var                        (an input: the loss's gradient at the output)
    Var(g_{l-1}) = sigma_l^2 * n_l * E[phi'(z)^2] * Var(g_l),     z ~ N(0, q_{l-1})

(note the *fan-out* n_l of layer l). Measurements match this assumption by back-propagating a
random cotangent ``v ~ N(0, output_grad_var)`` at the output (``Loss = <z_L, v>``), which is
independent of the network; a real loss's output gradient depends on z_L and is not modelled.

All "variances" are second moments ``E[z^2]`` over the weight distribution (zero-mean weights:
the variances). Expectations are closed forms for relu and linear, quadrature otherwise
(:func:`gaussian_expectation`).

Inputs may be given per example (an array of ``mean_i(x_i^2)``): the recursion is then run per
input and the prediction is the *mean over inputs* of the per-input values, which is what a
measurement that averages over a batch sees (for relu/linear the map is linear in q and this
equals the recursion on the mean; for tanh/gelu it does not).

GPT-2 at initialization: :func:`gpt2_residual_variance` (uncorrelated tokens) and
:func:`gpt2_residual_kernel` (covariance across positions); a pre-RMSNorm Llama (RoPE, SwiGLU,
grouped-query attention): :func:`llama_residual_variance` and :func:`llama_residual_kernel`.
Their docstrings list the approximations.

Weight stds may come from a scheme name of :mod:`hf_init.core.schemes`, imported (with torch)
only inside :func:`scheme_weight_stds` / :func:`gpt2_scheme_stds`: this module needs numpy
alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from numpy.polynomial.legendre import leggauss

from hf_init.lm.families import (
    BLOCK_ROLES,
    EMBEDDING_ROLES,
    LLAMA,
    RESIDUAL_ROLES,
    Dims,
    llama_mlp_width,
    role_fans,
)

ACTIVATIONS = ("relu", "linear", "tanh", "gelu", "gelu_tanh", "silu")
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_GELU_TANH_C = math.sqrt(2.0 / math.pi)

# --- activations ------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(np.asarray(z, dtype=float) / math.sqrt(2.0)).astype(float))


def _norm_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / _SQRT_2PI


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # 1 / (1 + e^-z) without overflow


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")


def phi(activation: str, z) -> np.ndarray:
    """The activation: relu max(z, 0); linear z; tanh; gelu z * Phi(z) (exact, erf);
    gelu_tanh 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) (GPT-2's ``gelu_new``); silu
    z * sigmoid(z) (the gate of Llama's SwiGLU MLP)."""
    _check_activation(activation)
    z = np.asarray(z, dtype=float)
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "linear":
        return z
    if activation == "tanh":
        return np.tanh(z)
    if activation == "gelu":
        return z * _norm_cdf(z)
    if activation == "silu":
        return z * _sigmoid(z)
    return 0.5 * z * (1.0 + np.tanh(_GELU_TANH_C * (z + 0.044715 * z**3)))


def dphi(activation: str, z) -> np.ndarray:
    """The derivative phi'(z) (relu: 1 for z > 0, 0 otherwise, as torch does)."""
    _check_activation(activation)
    z = np.asarray(z, dtype=float)
    if activation == "relu":
        return (z > 0).astype(float)
    if activation == "linear":
        return np.ones_like(z)
    if activation == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if activation == "gelu":
        return _norm_cdf(z) + z * _norm_pdf(z)
    if activation == "silu":
        sig = _sigmoid(z)
        return sig * (1.0 + z * (1.0 - sig))
    t = np.tanh(_GELU_TANH_C * (z + 0.044715 * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _GELU_TANH_C * (1.0 + 3 * 0.044715 * z * z)


# --- Gaussian expectations -------------------------------------------------------------

_GH_DEG = 100  # even: no node at 0, so a step at 0 (relu') integrates exactly by symmetry
_GH_MAX_Q = 0.5  # above this variance, switch to the composite rule
_GH_X, _GH_W = hermegauss(_GH_DEG)
_GH_W = _GH_W / _SQRT_2PI  # weights for E over N(0, 1)
_GL_X, _GL_W = leggauss(16)
_X_MAX = 10.0  # |x| > 10 standard deviations carries < 2e-23 of the mass
_COARSE = np.linspace(-_X_MAX, _X_MAX, 41)  # 0.5-std panels
_FINE = np.array(
    [0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0]
)  # in units of the activation's scale (1)


def gaussian_expectation(f: Callable[[np.ndarray], np.ndarray], q) -> np.ndarray:
    """E[f(z)] for z ~ N(0, q), elementwise over an array of variances ``q`` (>= 0).

    ``f`` must act elementwise on arrays. For ``q <= 0.5`` (``_GH_MAX_Q``): Gauss-Hermite
    quadrature (probabilists' Hermite, 100 nodes), exact for polynomials of degree <= 199 and
    accurate to ~1e-12 for tanh/gelu. For ``q > 0.5`` the integrand f(sqrt(q) x) bends on the
    scale 1/sqrt(q) in x, which a global rule resolves poorly, so x in [-10, 10] is cut into
    0.5-wide panels plus panels with boundaries at +-{0.25..8}/sqrt(q) around 0, each integrated
    by 16-point Gauss-Legendre.
    """
    q = np.asarray(q, dtype=float)
    if np.any(q < 0) or not np.all(np.isfinite(q)):
        raise ValueError("variances must be finite and >= 0")
    flat = q.reshape(-1)
    out = np.empty_like(flat)
    small = flat <= _GH_MAX_Q
    if small.any():
        s = np.sqrt(flat[small])[:, None]
        out[small] = f(s * _GH_X[None, :]) @ _GH_W
    if (~small).any():
        s = np.sqrt(flat[~small])
        inner = np.minimum(_FINE[None, :] / s[:, None], _X_MAX)
        edges = np.sort(
            np.concatenate(
                [np.broadcast_to(_COARSE, (len(s), len(_COARSE))), inner, -inner], axis=1
            ),
            axis=1,
        )
        lo, hi = edges[:, :-1], edges[:, 1:]
        half, mid = (hi - lo) / 2.0, (hi + lo) / 2.0
        x = mid[:, :, None] + half[:, :, None] * _GL_X[None, None, :]  # (nq, panels, 16)
        w = half[:, :, None] * _GL_W[None, None, :] * _norm_pdf(x)
        vals = f(s[:, None, None] * x)
        out[~small] = (vals * w).sum(axis=(1, 2))
    return out.reshape(q.shape)


def second_moments(activation: str, q) -> tuple[np.ndarray, np.ndarray]:
    """(E[phi(z)^2], E[phi'(z)^2]) for z ~ N(0, q), elementwise over ``q``.
    Closed forms: relu (q/2, 1/2), linear (q, 1); quadrature otherwise."""
    _check_activation(activation)
    q = np.asarray(q, dtype=float)
    if activation == "relu":
        return q / 2.0, np.full_like(q, 0.5)
    if activation == "linear":
        return q.copy(), np.ones_like(q)
    return (
        gaussian_expectation(lambda z: phi(activation, z) ** 2, q),
        gaussian_expectation(lambda z: dphi(activation, z) ** 2, q),
    )


def fourth_moments(activation: str, q) -> tuple[np.ndarray, np.ndarray]:
    """(E[phi(z)^4], E[phi'(z)^4]) for z ~ N(0, q): relu (3q^2/2, 1/2), linear (3q^2, 1)."""
    _check_activation(activation)
    q = np.asarray(q, dtype=float)
    if activation == "relu":
        return 1.5 * q * q, np.full_like(q, 0.5)
    if activation == "linear":
        return 3.0 * q * q, np.ones_like(q)
    return (
        gaussian_expectation(lambda z: phi(activation, z) ** 4, q),
        gaussian_expectation(lambda z: dphi(activation, z) ** 4, q),
    )


# --- critical std ------------------------------------------------------------------------


def critical_std(activation: str, fan_in: int, *, sigma_b: float = 0.0, q: float = 1.0) -> float:
    """The weight std at which signal propagation is critical, for layers of fan_in ``fan_in``.

    Definition (mean field): the std at which chi_1 = fan_in * std^2 * E[phi'(z)^2] = 1 at the
    fixed point q* of the length map, so that perturbations and gradients neither grow nor
    shrink with depth.

    * relu: sqrt(2 / fan_in) (He et al. 2015); chi_1 = n std^2 / 2 whatever q, so any sigma_b.
    * linear: 1 / sqrt(fan_in); any sigma_b.
    * tanh, sigma_b = 0: 1 / sqrt(fan_in) (fixed point q* = 0, tanh'(0) = 1). At this std q
      still decays, but algebraically (q_l ~ 1/(2 l)), not exponentially. sigma_b > 0: the
      edge of chaos of Poole et al. / Schoenholz et al. 2016, solved numerically on the curve of
      fixed points.
    * gelu, gelu_tanh, silu (sigma_b = 0 only): the zero-bias length map q -> n std^2 E[gelu(z)^2]
      has slope n std^2 r(q), with r(q) = E[gelu(z)^2] / q rising monotonically from 1/4 (q -> 0,
      gelu ~ z/2) to 1/2 (q -> inf, gelu ~ relu); silu alike. So no std keeps every signal scale:
      the nonzero fixed point is *unstable*. The fixed point q* = 0 has chi_1 = 1 at std = 2 /
      sqrt(n), but any finite signal then grows toward the relu rate (factor 2 per layer). The
      definition used here is therefore scale-dependent: the std that makes the given signal scale
      ``q`` (default 1, i.e. unit-variance pre-activations) a fixed point, std = sqrt(q / (n
      E[gelu(z)^2])), z ~ N(0, q). Signals above q grow, below q shrink, slowly near q. Limits:
      2/sqrt(n) for q -> 0, sqrt(2/n) for q -> inf.
    """
    _check_activation(activation)
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    if not (math.isfinite(sigma_b) and sigma_b >= 0):
        raise ValueError(f"sigma_b must be a finite number >= 0, got {sigma_b!r}")
    if activation == "relu":
        return math.sqrt(2.0 / fan_in)
    if activation == "linear":
        return 1.0 / math.sqrt(fan_in)
    if activation == "tanh":
        if sigma_b == 0:
            return 1.0 / math.sqrt(fan_in)
        return math.sqrt(_edge_of_chaos_a(activation, sigma_b) / fan_in)
    if sigma_b != 0:
        raise ValueError(f"critical_std for {activation} is defined here for sigma_b = 0 only")
    if not (math.isfinite(q) and q > 0):
        raise ValueError(f"q must be a finite number > 0, got {q!r}")
    e_phi2, _ = second_moments(activation, np.array([q]))
    return math.sqrt(q / (fan_in * float(e_phi2[0])))


def _edge_of_chaos_a(activation: str, sigma_b: float) -> float:
    """a = n std^2 on the edge of chaos: on the curve of fixed points q* (a(q*) =
    (q* - sigma_b^2) / E[phi^2](q*)), bisect q* for chi_1 = a E[phi'^2](q*) = 1."""
    sb2 = sigma_b * sigma_b

    def chi_minus_1(qs: float) -> tuple[float, float]:
        e2, d2 = second_moments(activation, np.array([qs]))
        a = (qs - sb2) / float(e2[0])
        return a * float(d2[0]) - 1.0, a

    lo, hi = sb2 * (1 + 1e-9), max(1.0, 4 * sb2)
    while chi_minus_1(hi)[0] < 0:  # chi grows along the curve for tanh
        hi *= 2
        if hi > 1e8:
            raise ValueError(f"no edge of chaos found for sigma_b={sigma_b}")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if chi_minus_1(mid)[0] < 0:
            lo = mid
        else:
            hi = mid
    return chi_minus_1(0.5 * (lo + hi))[1]


# --- fully connected propagation ------------------------------------------------------


@dataclass(frozen=True)
class Propagation:
    """Predicted per-layer statistics of a fully connected net at initialization.

    Arrays have one entry per layer l = 1..L (index l-1). ``q`` and ``grad_var`` are means over
    inputs of the per-input predictions; ``*_relvar`` are the first-order finite-width
    relative variances of what one seed measures for one input (see :func:`propagate`).
    """

    widths: tuple[int, ...]
    activation: str
    weight_std: np.ndarray  # (L,)
    bias_std: float
    q: np.ndarray  # E[z_l^2], pre-activation variance
    grad_var: np.ndarray  # E[(dLoss/dz_l)^2]
    q_relvar: np.ndarray
    grad_relvar: np.ndarray
    q_per_input: np.ndarray  # (B, L)
    grad_var_per_input: np.ndarray  # (B, L)

    @property
    def forward_gain(self) -> np.ndarray:
        """q_{l+1} / q_l for l = 1..L-1: the per-layer growth factor of the forward signal."""
        return self.q[1:] / self.q[:-1]

    @property
    def backward_gain(self) -> np.ndarray:
        """Var(g_l) / Var(g_{l+1}) for l = 1..L-1: growth per layer going *backward*."""
        return self.grad_var[:-1] / self.grad_var[1:]

    @property
    def forward_efold_layers(self) -> np.ndarray:
        """Layers until the forward signal changes by a factor e at the local rate: 1/|log gain|
        (inf where the gain is exactly 1)."""
        return efold_layers(self.forward_gain)

    @property
    def backward_efold_layers(self) -> np.ndarray:
        return efold_layers(self.backward_gain)


def efold_layers(gain) -> np.ndarray:
    """1 / |log(gain)|: the number of layers over which a per-layer factor ``gain`` changes a
    variance by a factor e (inf for gain 1)."""
    g = np.asarray(gain, dtype=float)
    with np.errstate(divide="ignore"):
        return 1.0 / np.abs(np.log(g))


def weight_stds(
    weight_std, widths: Sequence[int], scheme_options: Mapping | None = None
) -> np.ndarray:
    """One std per layer from ``weight_std``: a number (every layer), one per layer, or a
    scheme name (:func:`scheme_weight_stds`). ValueError on a wrong count or a std <= 0."""
    return _as_stds(weight_std, len(widths) - 1, widths, scheme_options)


def _as_stds(
    weight_std, n_layers: int, widths: Sequence[int], scheme_options: Mapping | None
) -> np.ndarray:
    if isinstance(weight_std, str):
        return np.asarray(
            scheme_weight_stds(weight_std, widths, **(scheme_options or {})), dtype=float
        )
    stds = (
        np.broadcast_to(np.asarray(weight_std, dtype=float), (n_layers,)).copy()
        if np.ndim(weight_std) == 0
        else np.asarray(weight_std, dtype=float)
    )
    if stds.shape != (n_layers,):
        raise ValueError(
            f"weight_std needs one value or {n_layers} (one per layer), got {stds.shape[0]}"
        )
    if not np.all(np.isfinite(stds)) or np.any(stds <= 0):
        raise ValueError("weight stds must be finite numbers > 0")
    return stds


def _log_elasticity(activation: str, q: np.ndarray, which: int) -> np.ndarray:
    """d log E[f(z)^2] / d log q for f = phi (which=0) or phi' (which=1), by central difference.
    At q = 0 (a zero input without bias) its limit: 1 for phi and 0 for phi' (every activation
    here has phi(0) = 0 and phi'(0) != 0), where the difference would take log 0."""
    q = np.asarray(q, dtype=float)
    out = np.full_like(q, 1.0 if which == 0 else 0.0)
    if activation in ("relu", "linear"):
        return out
    h, pos = 1e-4, q > 0
    up = second_moments(activation, q[pos] * math.exp(h))[which]
    dn = second_moments(activation, q[pos] * math.exp(-h))[which]
    out[pos] = (np.log(up) - np.log(dn)) / (2 * h)
    return out


def propagate(
    widths: Sequence[int],
    activation: str,
    weight_std,
    bias_std: float = 0.0,
    input_second_moment=1.0,
    output_grad_var: float = 1.0,
    scheme_options: Mapping | None = None,
) -> Propagation:
    """Predicted pre-activation and gradient variance of every layer (module docstring).

    ``widths``: (n_0, ..., n_L). ``weight_std``: one std, one per layer, or a scheme name of
    :mod:`hf_init.core.schemes` (``scheme_options``: its options, e.g. ``{"std": 0.1}``).
    ``input_second_moment``: mean_i(x_i^2) of the input, a number or one per example.
    ``output_grad_var``: Var(dLoss/dz_L).

    Finite-width fluctuations (first order in 1/n, one input, one seed): given layer l-1, the
    n_l entries of z_l are i.i.d. N(0, s_l) with s_l = sigma_l^2 |phi(z_{l-1})|^2 + sigma_b^2,
    so the measured mean of z_l^2 has relative variance (1 + 2/n_l)(1 + v(s_l)) - 1, and
    |phi(z_l)|^2 / n_l adds kappa_l / n_l, kappa = Var(phi^2) / E[phi^2]^2 (5 for relu),
    carried to s_{l+1} through the elasticity of E[phi^2] in q. Backward, each layer adds
    (3 E[phi'^4] / E[phi'^2]^2 - 1) / n_l (5 for relu; gradient independence assumed) to the
    2/n_L of the output cotangent. For relu this gives prod(1 + 5/n) growth (Hanin & Nica 2019).
    A batch average over inputs sharing the weights has at most this relative variance.
    """
    _check_activation(activation)
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list n_0..n_L (at least 2 entries, all >= 1), got {widths}")
    stds = _as_stds(weight_std, len(widths) - 1, widths, scheme_options)
    if not (math.isfinite(bias_std) and bias_std >= 0):
        raise ValueError(f"bias_std must be a finite number >= 0, got {bias_std!r}")
    if not (math.isfinite(output_grad_var) and output_grad_var >= 0):
        raise ValueError(f"output_grad_var must be a finite number >= 0, got {output_grad_var!r}")
    m0 = np.atleast_1d(np.asarray(input_second_moment, dtype=float))
    if m0.ndim != 1 or np.any(m0 < 0) or not np.all(np.isfinite(m0)):
        raise ValueError(
            "input_second_moment must be finite and >= 0 (a number or one per example)"
        )
    fw = _forward_pass(widths, activation, stds**2, bias_std * bias_std, m0)
    g, g_relvar = _backward_pass(widths, stds**2, fw, output_grad_var)
    return Propagation(
        widths=widths,
        activation=activation,
        weight_std=stds,
        bias_std=float(bias_std),
        q=fw.q.mean(axis=0),
        grad_var=g.mean(axis=0),
        q_relvar=_batch_relvar(fw.q, fw.q_relvar),
        grad_relvar=_batch_relvar(g, g_relvar),
        q_per_input=fw.q,
        grad_var_per_input=g,
    )


@dataclass(frozen=True)
class _ForwardPass:
    """Per input and layer (B, L): what the backward pass and the fluctuations need."""

    q: np.ndarray  # E[z_l^2]
    q_relvar: np.ndarray  # relative variance of the measured mean of z_l^2
    s_relvar: np.ndarray  # relative variance of s_l (the conditional variance)
    e_dphi2: np.ndarray  # E[phi'(z_l)^2]
    dphi_elast: np.ndarray  # d log E[phi'^2] / d log q
    kappa_g: np.ndarray  # 3 E[phi'^4] / E[phi'^2]^2 - 1


def _forward_pass(widths, activation: str, w2, sb2: float, m0) -> _ForwardPass:
    """The length map q_l and its finite-width fluctuations, layer by layer, for each input
    (``w2``: the weight variances, ``sb2``: the bias variance, ``m0``: mean_i(x_i^2) per input)."""
    n_layers = len(widths) - 1
    B = len(m0)
    q = np.empty((B, n_layers))
    s_relvar = np.zeros((B, n_layers))
    q_relvar = np.empty((B, n_layers))
    e_dphi2 = np.empty((B, n_layers))
    dphi_elast = np.zeros((B, n_layers))
    kappa_g = np.zeros((B, n_layers))
    q[:, 0] = w2[0] * widths[0] * m0 + sb2  # the input is fixed: no fluctuation
    for l in range(n_layers):
        n = widths[l + 1]
        q_relvar[:, l] = (1 + 2.0 / n) * (1 + s_relvar[:, l]) - 1
        e2, d2 = second_moments(activation, q[:, l])
        e4, d4 = fourth_moments(activation, q[:, l])
        e_dphi2[:, l] = d2
        kappa_g[:, l] = _excess(3 * d4, d2)
        if l + 1 < n_layers:
            elast = _log_elasticity(activation, q[:, l], 0)
            dphi_elast[:, l] = _log_elasticity(activation, q[:, l], 1)
            h_relvar = (1 + _excess(e4, e2) / n) * (1 + elast**2 * s_relvar[:, l]) - 1
            signal = w2[l + 1] * n * e2
            q[:, l + 1] = signal + sb2
            frac = np.where(
                q[:, l + 1] > 0, signal / np.where(q[:, l + 1] > 0, q[:, l + 1], 1), 0.0
            )
            s_relvar[:, l + 1] = frac**2 * h_relvar
    return _ForwardPass(q, q_relvar, s_relvar, e_dphi2, dphi_elast, kappa_g)


def _excess(fourth: np.ndarray, second: np.ndarray) -> np.ndarray:
    """fourth / second^2 - 1 where ``second`` > 0, else 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(second > 0, fourth / second**2 - 1, 0.0)


def _backward_pass(widths, w2, fw: _ForwardPass, output_grad_var: float):
    """(Var(g_l), its relative variance) per input and layer: g_l from g_{l+1} through
    W_{l+1}'s fan-out, from ``output_grad_var`` at the output."""
    g = np.empty_like(fw.q)
    g_relvar = np.empty_like(fw.q)
    g[:, -1] = output_grad_var
    g_relvar[:, -1] = 2.0 / widths[-1]
    e_dphi2, s_relvar = fw.e_dphi2, fw.s_relvar
    for l in range(len(widths) - 3, -1, -1):  # g_l from g_{l+1} through W_{l+2} (0-based l)
        n = widths[l + 1]
        g[:, l] = w2[l + 1] * widths[l + 2] * e_dphi2[:, l] * g[:, l + 1]
        g_relvar[:, l] = (1 + fw.kappa_g[:, l] / n) * (1 + g_relvar[:, l + 1]) * (
            1 + fw.dphi_elast[:, l] ** 2 * s_relvar[:, l]
        ) - 1
    return g, g_relvar


def _batch_relvar(values: np.ndarray, relvar: np.ndarray) -> np.ndarray:
    """Upper bound on the relative variance of a batch mean of per-input measurements whose
    relative variances are ``relvar``: Var(mean X_b) <= (mean SD(X_b))^2 (Cauchy-Schwarz).
    NaN, without numpy's warning, where the mean is 0 (a zero input or output gradient): a
    relative variance of zero is undefined."""
    sd = np.sqrt(relvar) * values
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sd.mean(axis=0) / values.mean(axis=0)) ** 2


def scheme_weight_stds(scheme: str, widths: Sequence[int], **options) -> list[float]:
    """The std a scheme of :mod:`hf_init.core.schemes` gives each layer of a plain MLP with these
    widths (role ``linear``, fan_in n_{l-1}, fan_out n_l). ``options`` go to ``SchemeOptions``
    (e.g. ``std=0.1`` for ``normal``). Imports the scheme registry (and torch) lazily."""
    from hf_init.core.schemes import SchemeOptions, WeightSpec, get_scheme

    s = get_scheme(scheme)
    opts = SchemeOptions(**options)
    return [
        s.std(WeightSpec("linear", int(widths[i]), int(widths[i + 1])), opts)
        for i in range(len(widths) - 1)
    ]


# --- GPT-2 at initialization -------------------------------------------------------------

GPT2_STD_ROLES = (*EMBEDDING_ROLES, *BLOCK_ROLES)  # hf_init.lm.families's vocabulary


def gpt2_scheme_stds(
    scheme: str,
    n_layer: int,
    n_embd: int,
    n_inner: int | None = None,
    vocab_size: int = 50257,
    n_positions: int = 1024,
    residual_scaling: bool | None = None,
    **options,
) -> tuple[dict[str, float], float]:
    """(stds by role, residual_gain) for a GPT-2 built with ``scheme`` (imports the registry
    lazily). ``residual_scaling=None`` keeps the scheme as defined. ``True``/``False`` forces
    the residual projections (attn/mlp ``c_proj``) to carry / not carry GPT-2's extra factor
    1/sqrt(2 n_layer): a scheme "carries" it when its std for a residual projection is that
    factor times its std for the same matrix under role ``linear`` (only ``gpt2`` does).
    ``residual_gain`` is the multiplier applied on top of the scheme to the residual projections
    (1 when nothing changes), so a measurement can apply the same change to a built model."""
    from hf_init.core.schemes import SchemeOptions, WeightSpec, get_scheme

    s = get_scheme(scheme)
    opts = SchemeOptions(**options)
    fans = role_fans(n_embd, n_inner, vocab_size, n_positions)

    def std(role, fan_in, fan_out):
        return s.std(WeightSpec(role, fan_in, fan_out, n_layer, int(n_embd)), opts)

    stds = {role: std(role, *fans[role]) for role in GPT2_STD_ROLES}
    factor = 1.0 / math.sqrt(2 * n_layer)
    carries = math.isclose(
        stds["attn_proj"], factor * std("linear", *fans["attn_proj"]), rel_tol=1e-9
    )  # factor < 1
    gain = 1.0
    if residual_scaling is not None and residual_scaling != carries:
        gain = factor if residual_scaling else 1.0 / factor
    for role in RESIDUAL_ROLES:
        stds[role] *= gain
    return stds, gain


@dataclass(frozen=True)
class ResidualPrediction:
    """Predicted second moments (per coordinate, averaged over positions) of a GPT-2 or a Llama
    at init.

    ``residual[0]`` is the embedding output, ``residual[i]`` the output of block i (before the
    final norm); ``attn_add[i-1]`` / ``mlp_add[i-1]`` what block i's attention / MLP adds.
    ``attn_positions[i-1]``: mean over positions of the effective number of positions the
    attention averages (1 / E[sum_s a_ts^2]).
    """

    residual: np.ndarray  # (n_layer + 1,)
    attn_add: np.ndarray  # (n_layer,)
    mlp_add: np.ndarray  # (n_layer,)
    attn_positions: np.ndarray  # (n_layer,)
    score_var: np.ndarray  # (n_layer,) variance of the attention logits q.k/sqrt(d_head)


def gpt2_residual_variance(
    stds: Mapping[str, float],
    n_layer: int,
    n_embd: int,
    seq_len: int,
    n_inner: int | None = None,
    layer_norm_eps: float = 1e-5,
    activation: str = "gelu_tanh",
) -> ResidualPrediction:
    """Predicted growth of the residual-stream variance of a pre-LN GPT-2 at initialization.

    Per position t = 0..T-1 (T = ``seq_len``), with v_t the per-coordinate second moment of the
    residual stream and d = n_embd:

    * embeddings: v_t = std_wte^2 + std_wpe^2 (independent rows);
    * LayerNorm (gain 1, bias 0) output has per-coordinate second moment m = v / (v + eps)
      (the per-token mean over d coordinates is taken as 0, exact as d -> inf);
    * attention: values have variance d std_v^2 m; logits q.k/sqrt(d_head) have variance
      tau^2 = (d std_q^2 m)(d std_k^2 m); the output at t averages the t+1 visible values with
      softmax weights a_ts. Assuming *uncorrelated tokens* (values at different positions
      independent) and logits i.i.d. N(0, tau^2) across positions, Var(o_t) = Var(v) E[sum_s
      a_ts^2], and E[sum_s a_ts^2] ~= e^{tau^2} / (e^{tau^2} + t) (ratio of expectations;
      exactly 1/(t+1) for uniform attention, tau -> 0). The projection adds d std_o^2 Var(o_t);
    * MLP: pre-activations of variance d std_in^2 m (m from the second LayerNorm), the MLP adds
      n_inner std_out^2 E[phi(z)^2];
    * every added branch is uncorrelated with the residual it is added to (independent
      zero-mean weights), so variances add.

    Where this parts from a real model: real tokens repeat and, after the first attention
    layer, every position holds an average over its prefix, so positions *are* correlated and
    attention averages correlated values (the uncorrelated-token approximation then
    underestimates the attention branch); logits of one query share q_t and are not i.i.d.;
    finite d.
    """
    s2 = _gpt2_variances(stds)
    if n_layer < 1 or n_embd < 1 or seq_len < 1:
        raise ValueError("n_layer, n_embd and seq_len must be >= 1")
    d = int(n_embd)
    inner = int(n_inner or 4 * d)
    v = np.full(seq_len, s2["wte"] + s2["wpe"])
    out = np.zeros((5, n_layer + 1))  # residual, attn_add, mlp_add, positions, score_var
    out[0, 0] = v.mean()
    for layer in range(1, n_layer + 1):
        attn, mlp, sum_a2, tau2 = _uncorrelated_block(v, s2, d, inner, layer_norm_eps, activation)
        v = v + attn + mlp
        out[:, layer] = [v.mean(), attn.mean(), mlp.mean(), (1.0 / sum_a2).mean(), tau2.mean()]
    return ResidualPrediction(out[0], out[1, 1:], out[2, 1:], out[3, 1:], out[4, 1:])


def _gpt2_variances(stds: Mapping[str, float]) -> dict[str, float]:
    """The squared std of every role of :data:`GPT2_STD_ROLES`; ValueError naming any missing."""
    missing = [r for r in GPT2_STD_ROLES if r not in stds]
    if missing:
        raise ValueError(f"stds missing roles: {', '.join(missing)}")
    return {k: float(stds[k]) ** 2 for k in GPT2_STD_ROLES}


def _uncorrelated_block(v, s2, d: int, inner: int, eps: float, activation: str):
    """What one GPT-2 block adds to the per-position second moments ``v`` with uncorrelated
    tokens: (attention branch, MLP branch, E[sum_s a_ts^2], logit variance tau^2), each per
    position."""
    attn, sum_a2, tau2 = _uncorrelated_attention(
        v, (s2["q"], s2["k"], s2["v"], s2["attn_proj"]), d, eps
    )
    m2 = (v + attn) / (v + attn + eps)
    e_phi2, _ = second_moments(activation, d * s2["mlp_fc"] * m2)
    return attn, inner * s2["mlp_proj"] * e_phi2, sum_a2, tau2


def _uncorrelated_attention(v, qkvo: tuple[float, ...], d: int, eps: float):
    """What one attention branch (after a norm) adds to the per-position second moments ``v``
    with uncorrelated tokens, from the squared stds of its query, key, value and output
    weights: (the branch, E[sum_s a_ts^2], logit variance tau^2), each per position."""
    q2, k2, v2, o2 = qkvo
    t = np.arange(len(v), dtype=float)
    m = v / (v + eps)
    # values at s <= t: mean of m over the prefix (uncorrelated tokens)
    m_prefix = np.cumsum(m) / (t + 1)
    tau2 = (d * q2 * m) * (d * k2 * m_prefix)
    sum_a2 = 1.0 / (1.0 + t * np.exp(-tau2))  # = e^tau2 / (e^tau2 + t), overflow-safe
    return d * o2 * d * v2 * m_prefix * sum_a2, sum_a2, tau2


def gpt2_residual_kernel(
    stds: Mapping[str, float],
    n_layer: int,
    n_embd: int,
    token_ids,
    n_inner: int | None = None,
    layer_norm_eps: float = 1e-5,
    activation: str = "gelu_tanh",
    quad_nodes: int = 16,
) -> ResidualPrediction:
    """Like :func:`gpt2_residual_variance`, but without the uncorrelated-token approximation:
    for each sequence of ``token_ids`` (B, T) it propagates the T x T covariance across
    positions K_ts (per coordinate, over the weight distribution) of the residual stream,
    then averages the diagonal over positions and sequences.

    * embeddings: K_ts = std_wte^2 [token_t == token_s] + std_wpe^2 [t == s] (repeated tokens
      share a row);
    * LayerNorm: U_ts = K_ts / sqrt((K_tt + eps)(K_ss + eps));
    * attention: values have covariance d std_v^2 U. The softmax weights are modelled as
      exchangeable over the visible prefix with mean 1/(t+1) and E[sum_s a_ts^2] =
      e^{tau^2} / (e^{tau^2} + t), where tau_t^2 = (d std_q^2 U_tt)(d std_k^2) x (the spread of
      the keys over the prefix: mean_s U_ss - mean_{s,s'} U_ss'); weights of different queries
      are taken independent. Then Cov(o_t, o_t') = sum a-bar a-bar' V (t != t') and
      Var(o_t) = E[sum a^2] mean_s V_ss + (1 - E[sum a^2]) mean_{s != s'} V_ss';
    * MLP: pre-activation covariance C = d std_in^2 U2; the MLP adds n_inner std_out^2
      E[phi(u) phi(w)], (u, w) jointly Gaussian with covariance C restricted to (t, s): the
      diagonal by :func:`second_moments`, off-diagonal pairs by a ``quad_nodes``^2 tensor
      Gauss-Hermite rule (accurate while C_tt is O(1), which LayerNorm ensures for the
      schemes here: 16 vs 40 nodes differ by < 1e-6 relative for gpt2 and kaiming_normal).

    Still approximate: logits of one query share q_t and are not exchangeable Gaussians;
    per-token LayerNorm centering is ignored (exact as d -> inf); finite d.
    """
    s2 = _gpt2_variances(stds)
    ids = np.atleast_2d(np.asarray(token_ids))
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError("token_ids must be (batch, seq_len)")
    if n_layer < 1 or n_embd < 1:
        raise ValueError("n_layer and n_embd must be >= 1")
    d = int(n_embd)
    inner = int(n_inner or 4 * d)
    T_len = ids.shape[1]
    gx, gw = hermegauss(quad_nodes)
    quad = (np.triu_indices(T_len, 1), gx, gw / _SQRT_2PI)
    out = np.zeros((4, n_layer + 1))
    tau_sum = np.zeros(n_layer)
    for seq in ids:
        K = s2["wte"] * (seq[:, None] == seq[None, :]) + s2["wpe"] * np.eye(T_len)
        out[0, 0] += np.diag(K).mean()
        for layer in range(n_layer):
            qkvo = (s2["q"], s2["k"], s2["v"], s2["attn_proj"])
            attn, sum_a2, tau2 = _attention_kernel(K, qkvo, d, layer_norm_eps)
            K = K + attn
            C = d * s2["mlp_fc"] * _layer_norm_kernel(K, layer_norm_eps)
            M = inner * s2["mlp_proj"] * _gaussian_kernel(activation, C, *quad)
            K = K + M
            out[0, layer + 1] += np.diag(K).mean()
            out[1, layer + 1] += np.diag(attn).mean()
            out[2, layer + 1] += np.diag(M).mean()
            out[3, layer + 1] += (1.0 / sum_a2).mean()
            tau_sum[layer] += tau2.mean()
    out /= len(ids)
    return ResidualPrediction(out[0], out[1, 1:], out[2, 1:], out[3, 1:], tau_sum / len(ids))


def _attention_kernel(K: np.ndarray, qkvo: tuple[float, ...], d: int, eps: float, rope=None):
    """What one attention branch (after a norm) adds to the position covariance ``K`` (T x T),
    from the squared stds of its query, key, value and output weights, with the exchangeable
    softmax weights of :func:`gpt2_residual_kernel`: (the branch's covariance, E[sum_s a_ts^2]
    and the logit variance tau_t^2 per position). ``rope``: the (T x T) correlation factor
    c(t - s) RoPE puts between the logits of keys t and s (:func:`rope_logit_correlation`)."""
    q2, k2, v2, o2 = qkvo
    t = np.arange(K.shape[0], dtype=float)
    abar = np.tril(np.ones(K.shape)) / (t + 1)[:, None]
    U = _layer_norm_kernel(K, eps)
    V = d * v2 * U
    diag_u = np.diag(U)
    mean_diag = np.cumsum(diag_u) / (t + 1)
    UR = U if rope is None else U * rope
    mean_all = np.diag(np.cumsum(np.cumsum(UR, 0), 1)) / (t + 1) ** 2
    tau2 = (d * q2 * diag_u) * (d * k2) * np.maximum(mean_diag - mean_all, 0.0)
    sum_a2 = 1.0 / (1.0 + t * np.exp(-tau2))
    O = abar @ V @ abar.T
    v_diag_mean = np.cumsum(np.diag(V)) / (t + 1)
    v_sum = np.diag(np.cumsum(np.cumsum(V, 0), 1))
    # mean of V over the t (t + 1) ordered pairs s != s' of the prefix; none at t = 0: 0
    pairs = t * (t + 1)
    off = np.divide(v_sum - v_diag_mean * (t + 1), pairs, out=np.zeros_like(t), where=pairs > 0)
    np.fill_diagonal(O, sum_a2 * v_diag_mean + (1 - sum_a2) * off)
    return d * o2 * O, sum_a2, tau2


def _layer_norm_kernel(K: np.ndarray, eps: float) -> np.ndarray:
    s = np.sqrt(np.diag(K) + eps)
    return K / np.outer(s, s)


def _gaussian_kernel(
    activation: str, C: np.ndarray, iu, gx: np.ndarray, gw: np.ndarray
) -> np.ndarray:
    """E[phi(u) phi(w)] for every pair of positions, (u, w) ~ N(0, C restricted to the pair)."""
    diag = np.diag(C)
    out = np.empty_like(C)
    np.fill_diagonal(out, second_moments(activation, diag)[0])
    if len(iu[0]):
        a, b = np.sqrt(diag[iu[0]]), np.sqrt(diag[iu[1]])
        rho = np.clip(C[iu] / np.maximum(a * b, 1e-300), -1.0, 1.0)
        fu = phi(activation, a[:, None] * gx[None, :])  # (P, k)
        w = b[:, None, None] * (
            rho[:, None, None] * gx[None, :, None]
            + np.sqrt(1 - rho * rho)[:, None, None] * gx[None, None, :]
        )  # (P, k, m)
        vals = np.einsum("pk,pkm,k,m->p", fu, phi(activation, w), gw, gw)
        out[iu] = vals
        out[(iu[1], iu[0])] = vals
    return out


# --- Llama at initialization --------------------------------------------------------------

LLAMA_STD_ROLES = (*LLAMA.embedding_roles, *LLAMA.block_roles)  # embed, q k v o gate up down


def llama_scheme_stds(
    scheme: str,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_kv_head: int | None = None,
    n_inner: int | None = None,
    vocab_size: int = 32000,
    **options,
) -> dict[str, float]:
    """The std of every role of :data:`LLAMA_STD_ROLES` in a Llama built with ``scheme``, from
    the Llama entry's fans (``n_inner`` default: Llama's MLP width; imports the registry
    lazily)."""
    from hf_init.core.schemes import SchemeOptions, WeightSpec, get_scheme

    s = get_scheme(scheme)
    opts = SchemeOptions(**options)
    dims = Dims(
        n_layer=int(n_layer),
        n_embd=int(n_embd),
        n_head=int(n_head),
        n_kv_head=int(n_kv_head or n_head),
        head_dim=int(n_embd) // int(n_head),
        n_inner=int(n_inner or llama_mlp_width(int(n_embd))),
        vocab_size=int(vocab_size),
        n_positions=0,  # RoPE: no position table
        tie_word_embeddings=False,
    )
    fans = LLAMA.role_fans(dims)
    return {
        role: s.std(WeightSpec(role, *fans[role], dims.n_layer, dims.n_embd), opts)
        for role in LLAMA_STD_ROLES
    }


def _llama_variances(stds: Mapping[str, float]) -> dict[str, float]:
    """The squared std of every role of :data:`LLAMA_STD_ROLES`; ValueError naming any missing."""
    missing = [r for r in LLAMA_STD_ROLES if r not in stds]
    if missing:
        raise ValueError(f"stds missing roles: {', '.join(missing)}")
    return {k: float(stds[k]) ** 2 for k in LLAMA_STD_ROLES}


def llama_residual_variance(
    stds: Mapping[str, float],
    n_layer: int,
    n_embd: int,
    seq_len: int,
    n_inner: int | None = None,
    rms_norm_eps: float = 1e-6,
) -> ResidualPrediction:
    """Predicted growth of the residual-stream variance of a pre-RMSNorm Llama at
    initialization, with uncorrelated tokens: :func:`gpt2_residual_variance`'s model with

    * embeddings: v_t = std_embed^2 (no position table);
    * RMSNorm (gain 1): m = v / (v + eps), exact here (RMSNorm does not centre);
    * attention: as GPT-2's, with o for the output projection. RoPE rotates every query and key
      by an orthogonal map, which leaves the logit variance; grouped-query attention shares a
      key/value head between query heads, which leaves each head's second moment, and o_proj's
      independent weights add the heads' contributions whatever their correlation;
    * SwiGLU MLP, down(silu(gate x) * up x): gate and up pre-activations are independent
      Gaussians (independent weights) of variances d std_gate^2 m2 and d std_up^2 m2, so the
      MLP adds n_inner std_down^2 E[silu(g)^2] d std_up^2 m2.

    Its departures from a real model are GPT-2's (correlated positions, non-i.i.d. logits,
    finite d); ``n_inner`` defaults to Llama's MLP width."""
    s2 = _llama_variances(stds)
    if n_layer < 1 or n_embd < 1 or seq_len < 1:
        raise ValueError("n_layer, n_embd and seq_len must be >= 1")
    d = int(n_embd)
    inner = int(n_inner or llama_mlp_width(d))
    qkvo = (s2["q"], s2["k"], s2["v"], s2["o"])
    v = np.full(seq_len, s2["embed"])
    out = np.zeros((5, n_layer + 1))  # residual, attn_add, mlp_add, positions, score_var
    out[0, 0] = v.mean()
    for layer in range(1, n_layer + 1):
        attn, sum_a2, tau2 = _uncorrelated_attention(v, qkvo, d, rms_norm_eps)
        m2 = (v + attn) / (v + attn + rms_norm_eps)
        e_silu2, _ = second_moments("silu", d * s2["gate"] * m2)
        mlp = inner * s2["down"] * e_silu2 * d * s2["up"] * m2
        v = v + attn + mlp
        out[:, layer] = [v.mean(), attn.mean(), mlp.mean(), (1.0 / sum_a2).mean(), tau2.mean()]
    return ResidualPrediction(out[0], out[1, 1:], out[2, 1:], out[3, 1:], out[4, 1:])


def rope_logit_correlation(seq_len: int, head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """(T x T) c(t - s) = mean_i cos((t - s) theta_i) over the head_dim / 2 rotary frequencies
    theta_i = theta^(-2i / head_dim): for a query q with i.i.d. coordinates, E[q.R(t) R(s)^T q]
    / E[q.q], the factor RoPE puts on the covariance of the logits of keys at t and s."""
    freqs = float(theta) ** (-np.arange(0, head_dim, 2, dtype=float) / head_dim)
    lag = np.arange(seq_len, dtype=float)
    lag = lag[:, None] - lag[None, :]
    return np.cos(lag[:, :, None] * freqs[None, None, :]).mean(axis=-1)


def llama_residual_kernel(
    stds: Mapping[str, float],
    n_layer: int,
    n_embd: int,
    token_ids,
    n_head: int,
    n_inner: int | None = None,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-6,
    quad_nodes: int = 16,
) -> ResidualPrediction:
    """Like :func:`llama_residual_variance`, with the covariance across positions of
    :func:`gpt2_residual_kernel`:

    * embeddings: K_ts = std_embed^2 [token_t == token_s];
    * RMSNorm: GPT-2's LayerNorm kernel U (which ignores centering: exact for RMSNorm);
    * attention: values are not rotated, so the branch is GPT-2's; RoPE enters the logits. The
      key at s, seen from the query at t, is rotated by (t - s) theta_i on frequency pair i, so
      Cov(logit_s, logit_s') = (d std_q^2 U_tt)(d std_k^2 U_ss') c(s - s')
      (:func:`rope_logit_correlation`, head_dim = n_embd / n_head) and the key spread is
      mean_s U_ss - mean_{s,s'} U_ss' c(s - s'): repeated tokens at different positions no
      longer give equal logits;
    * SwiGLU MLP: gate and up are independent, so the MLP adds n_inner std_down^2
      E[silu(g_t) silu(g_s)] (d std_up^2 U2_ts), the gate's covariance d std_gate^2 U2 (pairs
      by the ``quad_nodes``^2 Gauss-Hermite rule).

    Still approximate as GPT-2's kernel: logits of one query share q_t; finite d."""
    s2 = _llama_variances(stds)
    ids = np.atleast_2d(np.asarray(token_ids))
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError("token_ids must be (batch, seq_len)")
    if n_layer < 1 or n_embd < 1:
        raise ValueError("n_layer and n_embd must be >= 1")
    if n_head < 1 or n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    d = int(n_embd)
    inner = int(n_inner or llama_mlp_width(d))
    T_len = ids.shape[1]
    rope = rope_logit_correlation(T_len, d // int(n_head), rope_theta)
    qkvo = (s2["q"], s2["k"], s2["v"], s2["o"])
    gx, gw = hermegauss(quad_nodes)
    quad = (np.triu_indices(T_len, 1), gx, gw / _SQRT_2PI)
    out = np.zeros((4, n_layer + 1))
    tau_sum = np.zeros(n_layer)
    for seq in ids:
        K = s2["embed"] * (seq[:, None] == seq[None, :]).astype(float)
        out[0, 0] += np.diag(K).mean()
        for layer in range(n_layer):
            attn, sum_a2, tau2 = _attention_kernel(K, qkvo, d, rms_norm_eps, rope)
            K = K + attn
            U2 = _layer_norm_kernel(K, rms_norm_eps)
            gate = _gaussian_kernel("silu", d * s2["gate"] * U2, *quad)
            M = inner * s2["down"] * gate * (d * s2["up"] * U2)
            K = K + M
            out[0, layer + 1] += np.diag(K).mean()
            out[1, layer + 1] += np.diag(attn).mean()
            out[2, layer + 1] += np.diag(M).mean()
            out[3, layer + 1] += (1.0 / sum_a2).mean()
            tau_sum[layer] += tau2.mean()
    out /= len(ids)
    return ResidualPrediction(out[0], out[1, 1:], out[2, 1:], out[3, 1:], tau_sum / len(ids))
