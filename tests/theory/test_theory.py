"""Variance-propagation theory checked against independent computation and measurement.

Independent references: closed forms written out by hand, scipy's adaptive quadrature,
Monte Carlo with numpy samples pushed through torch's own activations (derivatives by
autograd), and networks measured at initialization (hf_init.theory.measurement, autograd gradients).

Tolerances for measurements come from the finite-width fluctuation of what is measured:
``theory.propagate`` returns the first-order relative variance of a one-seed, one-input
measurement (checked itself in ``test_finite_width_fluctuation_prediction``); a batch mean has
at most that relative variance, the mean of S seeds 1/S of it. We allow K = 4 standard
deviations (a false alarm has probability < 1e-4 per layer under a normal approximation).
"""

import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, special

from hf_init.theory import measurement as P
from hf_init.theory import recursions as T

K = 4.0
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]

TORCH_ACT = {
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
}
SCIPY_ACT = {
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "gelu": (
        lambda z: z * special.ndtr(z),
        lambda z: special.ndtr(z) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi),
    ),
    "silu": (
        lambda z: z * special.expit(z),
        lambda z: special.expit(z) * (1 + z * (1 - special.expit(z))),
    ),
}


# --- expectations --------------------------------------------------------------------------


@pytest.mark.parametrize("q", [1e-3, 0.3, 1.0, 7.0, 250.0])
def test_relu_and_linear_closed_forms_match_quadrature(q):
    relu2 = T.gaussian_expectation(lambda z: np.maximum(z, 0) ** 2, q)
    relu_d2 = T.gaussian_expectation(lambda z: (z > 0).astype(float), q)
    relu4 = T.gaussian_expectation(lambda z: np.maximum(z, 0) ** 4, q)
    e2, d2 = T.second_moments("relu", q)
    e4, d4 = T.fourth_moments("relu", q)
    assert e2 == pytest.approx(q / 2) and relu2 == pytest.approx(e2, rel=1e-10)
    assert d2 == 0.5 and relu_d2 == pytest.approx(0.5, rel=1e-10)
    assert e4 == pytest.approx(1.5 * q * q) and relu4 == pytest.approx(e4, rel=1e-10)
    lin2 = T.gaussian_expectation(lambda z: z**2, q)
    assert T.second_moments("linear", q)[0] == pytest.approx(q) and lin2 == pytest.approx(
        q, rel=1e-10
    )


@pytest.mark.parametrize("activation", ["tanh", "gelu", "gelu_tanh", "silu"])
def test_quadrature_matches_monte_carlo(activation):
    """E[phi^2], E[phi'^2] against 400k Monte Carlo samples through torch's activation and
    autograd derivative; tolerance 5 Monte Carlo standard errors."""
    rng = np.random.default_rng(1234)
    u = torch.from_numpy(rng.standard_normal(400_000))
    for q in (0.1, 1.0, 10.0):
        z = (math.sqrt(q) * u).requires_grad_()
        y = TORCH_ACT[activation](z)
        (dy,) = torch.autograd.grad(y.sum(), z)
        e2, d2 = T.second_moments(activation, q)
        for quad, samples in ((e2, (y.detach() ** 2).numpy()), (d2, (dy**2).numpy())):
            se = samples.std(ddof=1) / math.sqrt(len(samples))
            assert abs(float(quad) - samples.mean()) <= 5 * se, (
                activation,
                q,
                float(quad),
                samples.mean(),
                se,
            )


def _gaussian_mean(g, q: float) -> float:
    """E[g(z)] for z ~ N(0, q), by scipy's adaptive quadrature over +-12 standard deviations."""
    s = math.sqrt(q)

    def integrand(z):
        return g(z) * math.exp(-z * z / (2 * q)) / (s * math.sqrt(2 * math.pi))

    points = [0.0] if s > 1 else None
    return integrate.quad(
        integrand, -12 * s, 12 * s, points=points, epsabs=0, epsrel=1e-12, limit=400
    )[0]


@pytest.mark.parametrize("activation", ["tanh", "gelu", "silu"])
def test_quadrature_matches_adaptive_scipy(activation):
    f, df = SCIPY_ACT[activation]
    for q in (1e-3, 0.5, 2.0, 50.0, 1e4):
        ref2 = _gaussian_mean(lambda z: f(z) ** 2, q)
        refd = _gaussian_mean(lambda z: df(z) ** 2, q)
        e2, d2 = T.second_moments(activation, q)
        assert float(e2) == pytest.approx(ref2, rel=1e-9), (activation, q)
        assert float(d2) == pytest.approx(refd, rel=1e-9), (activation, q)


def test_activation_functions_match_torch():
    z = np.linspace(-6, 6, 241)
    zt = torch.from_numpy(z).requires_grad_()
    for act, fn in {**TORCH_ACT, "relu": F.relu}.items():
        y = fn(zt)
        (dy,) = torch.autograd.grad(y.sum(), zt)
        np.testing.assert_allclose(T.phi(act, z), y.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(T.dphi(act, z), dy.numpy(), rtol=1e-10, atol=1e-12)


# --- recursion and critical std ------------------------------------------------------------


def test_propagate_matches_hand_recursion_with_fan_out():
    """relu, unequal widths and stds, bias: written out by hand. The backward pass must use
    the fan-out n_l of the layer it goes through."""
    widths, s, sb, m0 = (5, 7, 3, 4), (0.3, 0.5, 0.2), 0.1, np.array([0.5, 2.0])
    q1 = s[0] ** 2 * 5 * m0 + sb**2
    q2 = s[1] ** 2 * 7 * q1 / 2 + sb**2
    q3 = s[2] ** 2 * 3 * q2 / 2 + sb**2
    g3 = 2.5
    g2 = s[2] ** 2 * 4 * 0.5 * g3
    g1 = s[1] ** 2 * 3 * 0.5 * g2
    pr = T.propagate(widths, "relu", s, bias_std=sb, input_second_moment=m0, output_grad_var=g3)
    np.testing.assert_allclose(pr.q, [q1.mean(), q2.mean(), q3.mean()], rtol=1e-13)
    np.testing.assert_allclose(pr.grad_var, [g1, g2, g3], rtol=1e-13)
    np.testing.assert_allclose(
        pr.forward_efold_layers, 1 / np.abs(np.log([q2.mean() / q1.mean(), q3.mean() / q2.mean()]))
    )


def test_scheme_name_resolves_to_registry_stds():
    widths = (64, 256, 128)
    pr = T.propagate(widths, "relu", "kaiming_normal")
    np.testing.assert_allclose(pr.weight_std, [math.sqrt(2 / 64), math.sqrt(2 / 256)])
    pr = T.propagate(widths, "relu", "xavier_normal")
    np.testing.assert_allclose(pr.weight_std, [math.sqrt(2 / 320), math.sqrt(2 / 384)])
    pr = T.propagate(widths, "relu", "normal", scheme_options={"std": 0.05})
    np.testing.assert_allclose(pr.weight_std, [0.05, 0.05])


def test_critical_std():
    n = 300
    assert T.critical_std("relu", n) == pytest.approx(math.sqrt(2 / n))
    assert T.critical_std("linear", n) == pytest.approx(1 / math.sqrt(n))
    assert T.critical_std("tanh", n) == pytest.approx(1 / math.sqrt(n))
    # gelu: the std for which q = 1 is a fixed point, E[gelu^2] by scipy at q = 1
    f, _ = SCIPY_ACT["gelu"]
    e2 = integrate.quad(
        lambda z: f(z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -15, 15, epsrel=1e-12
    )[0]
    assert T.critical_std("gelu", n) == pytest.approx(math.sqrt(1 / (n * e2)), rel=1e-9)
    # limits: gelu ~ z/2 for small signals (chi_1 = 1 at q* = 0: 2/sqrt(n)), ~ relu for large ones
    assert T.critical_std("gelu", n, q=1e-8) == pytest.approx(2 / math.sqrt(n), rel=1e-3)
    assert T.critical_std("gelu", n, q=1e8) == pytest.approx(math.sqrt(2 / n), rel=1e-3)


def test_relu_gradient_fluctuation_grows_by_one_plus_five_over_width_per_layer():
    """Hanin & Nica (2019): for relu, E[phi'^4] = E[phi'^2] = 1/2, so each layer back multiplies
    (1 + relvar) by 1 + (3 E[phi'^4] / E[phi'^2]^2 - 1) / n = 1 + 5 / n (and relu's
    E[phi'^2] does not depend on the scale: no forward-fluctuation term), from 2 / n_L at the
    output."""
    widths = (4, 6, 8, 10)
    pred = T.propagate(widths, "relu", math.sqrt(2 / 6))
    want = [2 / widths[-1]]
    for n in widths[2:0:-1]:  # the widths of the layers the gradient passes back through
        want.insert(0, (1 + 5 / n) * (1 + want[0]) - 1)
    np.testing.assert_allclose(pred.grad_relvar, want, rtol=1e-9)


def test_output_gradient_fluctuation_is_two_over_the_output_width():
    """The cotangent at the output has n_L independent N(0, v) coordinates, so the measured
    Var(g_L) (their mean square) has relative variance Var(v^2) / (n_L v^2) = 2 / n_L, whatever
    the hidden widths before it (one input: the batch bound is that value itself)."""
    for widths in ((3, 4, 5), (3, 9, 2)):
        pred = T.propagate(widths, "linear", 1.0, output_grad_var=0.7)
        assert pred.grad_relvar[-1] == pytest.approx(2 / widths[-1], rel=1e-12)
        assert pred.grad_var[-1] == pytest.approx(0.7, rel=1e-12)


@pytest.mark.parametrize("sb", [0.05, 0.3, 0.5, 1.0, 3.0])
def test_tanh_edge_of_chaos_with_bias(sb):
    """With sigma_b > 0: iterate the length map (scipy quadrature) to its fixed point at the
    returned std and check chi_1 = n std^2 E[tanh'(z)^2] = 1 there. sigma_b = 3 puts the fixed
    point q* below 2 sigma_b^2 (a large bias: most of q* is the bias's own variance); at
    sigma_b = 0.5 chi_1 is still below 1 at the first bracket end q* = 1: the search widens."""
    n = 100
    sw = T.critical_std("tanh", n, sigma_b=sb)
    f, df = SCIPY_ACT["tanh"]

    def expect(fn, q):
        s = math.sqrt(q)
        return integrate.quad(
            lambda z: fn(z) * math.exp(-z * z / (2 * q)) / (s * math.sqrt(2 * math.pi)),
            -12 * s,
            12 * s,
            epsrel=1e-12,
        )[0]

    q = 1.0
    for _ in range(3000):
        q = n * sw**2 * expect(lambda z: f(z) ** 2, q) + sb**2
    chi = n * sw**2 * expect(lambda z: df(z) ** 2, q)
    assert chi == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: T.critical_std("swish", 10),
        lambda: T.critical_std("relu", 0),
        lambda: T.critical_std("gelu", 10, sigma_b=0.1),
        lambda: T.propagate((4, 4, 4), "relu", [0.1, 0.2, 0.3]),
        lambda: T.propagate((4,), "relu", 0.1),
        lambda: T.propagate((4, 4), "relu", -1.0),
        lambda: T.propagate((4, 4), "relu", 0.1, input_second_moment=-1),
        lambda: T.gaussian_expectation(np.square, -1.0),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


# --- measurement: wide MLP -----------------------------------------------------------------

WIDTH, DEPTH, SEEDS = 1024, 10, tuple(range(8))


@pytest.fixture(scope="module")
def digits():
    return P.digits_inputs(
        16, seed=0
    )  # the tolerance bounds one input: a larger batch only costs time


def _net(activation, multiple, x):
    widths = [x.shape[1]] + [WIDTH] * DEPTH
    stds = [multiple / math.sqrt(x.shape[1])] + [multiple * T.critical_std(activation, WIDTH)] * (
        DEPTH - 1
    )
    pred = T.propagate(widths, activation, stds, input_second_moment=(x**2).mean(dim=1).numpy())
    meas = P.measure_mlp(widths, activation, stds, x, seeds=SEEDS)
    return pred, meas


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "linear"])
def test_wide_mlp_at_critical_std_matches_theory_every_layer(activation, digits):
    pred, meas = _net(activation, 1.0, digits)
    steps = np.arange(1, DEPTH + 1)  # random layers between the input (output) and layer l
    for name, p, m, relvar, n_steps in (
        ("forward", pred.q, meas.q_mean, pred.q_relvar, steps),
        ("gradient", pred.grad_var, meas.grad_var_mean, pred.grad_relvar, steps[::-1]),
    ):
        tol = K * np.sqrt(relvar / len(SEEDS))
        rel = m / p - 1
        assert np.all(np.abs(rel) <= tol), (activation, name, rel, tol)
        # not vacuous: a theory whose per-layer gain were off by 10% would fail at every layer
        assert np.all(tol < 1.1**n_steps - 1), (activation, name, tol)


@pytest.mark.parametrize(
    "activation,multiple",
    [("relu", 0.6), ("relu", 1.6), ("tanh", 0.6), ("tanh", 2.0), ("gelu", 0.6), ("gelu", 1.6)],
)
def test_per_layer_log_slope_below_and_above_critical(activation, multiple, digits):
    """Measured log(E[z_{l+1}^2] / E[z_l^2]) (and the same backward) against the prediction;
    tolerance: K x (sd of log at l + sd at l+1) / sqrt(S) (no cancellation assumed)."""
    pred, meas = _net(activation, multiple, digits)
    for p, m, relvar in (
        (pred.q, meas.q_mean, pred.q_relvar),
        (pred.grad_var, meas.grad_var_mean, pred.grad_relvar),
    ):
        sd = np.sqrt(relvar / len(SEEDS))
        slope_p, slope_m = np.diff(np.log(p)), np.diff(np.log(m))
        assert np.all(np.abs(slope_m - slope_p) <= K * (sd[1:] + sd[:-1])), (
            activation,
            multiple,
            slope_m,
            slope_p,
        )
    if activation == "relu":  # homogeneous: the slope is exactly log(multiple^2) per layer
        np.testing.assert_allclose(np.diff(np.log(pred.q)), 2 * math.log(multiple), rtol=1e-12)


def test_finite_width_fluctuation_prediction():
    """The first-order relative variance of a one-input, one-seed measurement (the basis of the
    tolerances above) against 400 seeds of a width-32 relu net. Tolerance: 4 standard errors
    of the sample variance (from the sample fourth central moment) plus 15% for the neglected
    higher orders in 1/n (measured 2-10% at this width)."""
    n, depth, seeds = 32, 4, range(400)
    x = torch.randn(1, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    widths = [n] * (depth + 1)
    pred = T.propagate(
        widths, "relu", T.critical_std("relu", n), input_second_moment=(x**2).mean().item()
    )
    meas = P.measure_mlp(widths, "relu", T.critical_std("relu", n), x, seeds=seeds)
    for samples, relvar in ((meas.q, pred.q_relvar), (meas.grad_var, pred.grad_relvar)):
        r = samples / samples.mean(axis=0)
        var = r.var(axis=0, ddof=1)
        m4 = ((r - 1) ** 4).mean(axis=0)
        se = np.sqrt((m4 - var**2) / len(seeds))
        assert np.all(np.abs(var - relvar) <= 4 * se + 0.15 * relvar), (var, relvar, se)


# --- GPT-2 ---------------------------------------------------------------------------------


def test_gpt2_scheme_stds_and_residual_toggle():
    L, d = 6, 64
    stds, gain = T.gpt2_scheme_stds("gpt2", L, d)
    assert (
        gain == 1.0
        and stds["attn_proj"] == pytest.approx(0.02 / math.sqrt(2 * L))
        and stds["q"] == 0.02
    )
    stds, gain = T.gpt2_scheme_stds("gpt2", L, d, residual_scaling=False)
    assert gain == pytest.approx(math.sqrt(2 * L)) and stds["mlp_proj"] == pytest.approx(0.02)
    stds, gain = T.gpt2_scheme_stds("kaiming_normal", L, d, residual_scaling=True)
    assert gain == pytest.approx(1 / math.sqrt(2 * L))
    assert stds["mlp_proj"] == pytest.approx(math.sqrt(2 / (4 * d)) / math.sqrt(2 * L))
    assert T.gpt2_scheme_stds("kaiming_normal", L, d, residual_scaling=False)[1] == 1.0


@pytest.mark.parametrize(
    "scaling, attn_out", [(None, 0.02 / math.sqrt(2)), (True, 0.02 / math.sqrt(2)), (False, 0.02)]
)
def test_gpt2_residual_toggle_at_one_layer(scaling, attn_out):
    # n_layer = 1: GPT-2's factor 1/sqrt(2 L) = 1/sqrt(2) still applies, so "scaled" is the
    # scheme as defined (0.02/sqrt(2)) and "unscaled" is plain 0.02
    stds, gain = T.gpt2_scheme_stds("gpt2", 1, 32, residual_scaling=scaling)
    assert stds["attn_proj"] == pytest.approx(attn_out, rel=1e-12)
    assert stds["mlp_proj"] == pytest.approx(attn_out, rel=1e-12)
    assert gain == pytest.approx(attn_out / (0.02 / math.sqrt(2)), rel=1e-12)


def test_gpt2_theory_holds_where_its_assumptions_do():
    """gpt2 scheme, distinct tokens per sequence (so block 1's values are uncorrelated across
    positions, the attention approximation's premise) and tiny logits (near-uniform attention).
    Embedding, block-1 attention and every MLP branch must match. Per-seed relative sd of a
    branch's second moment is at most sqrt(2/d + 2/d) (two d x d chi-square factors, one
    position); with d = 256 and 3 seeds, K sd = 0.33. Deeper attention blocks are NOT asserted
    equal: positions become correlated there and the prediction is known to be low."""
    L, d, T_len, seeds = 3, 256, 64, (0, 1, 2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(256, generator=gen)[:T_len] for _ in range(8)])
    stds, gain = T.gpt2_scheme_stds("gpt2", L, d, vocab_size=256, n_positions=T_len)
    pred = T.gpt2_residual_variance(stds, L, d, T_len)
    meas = P.measure_residual(
        "gpt2", P.ResidualProbe(ids, seeds, L, d, n_head=4, vocab_size=256), residual_gain=gain
    )
    tol = K * math.sqrt((4 / d) / len(seeds))
    # embeddings: 8 x 64 tokens x 256 coordinates of independent rows: far tighter than tol
    assert meas.residual[:, 0].mean() / pred.residual[0] - 1 == pytest.approx(0, abs=0.05)
    assert abs(meas.attn_add[:, 0].mean() / pred.attn_add[0] - 1) <= tol
    np.testing.assert_allclose(meas.mlp_add.mean(axis=0), pred.mlp_add, rtol=tol)
    # and the direction of the known departure: correlated positions -> more attention output
    assert np.all(meas.attn_add.mean(axis=0)[1:] > pred.attn_add[1:])


@pytest.mark.parametrize("with_rope", [False, True])
def test_attention_kernel_matches_its_sums_written_out_by_position(with_rope):
    """One attention branch's kernel on a hand-made 5-position covariance, recomputed with loops
    over positions: U = layer-norm correlation, the logit variance
    tau_t^2 = d q^2 U_tt d k^2 (mean_{s<=t} U_ss - mean_{s,s'<=t} U_ss' c(s - s')), with RoPE's
    logit correlation c (1 without RoPE), E[sum_s a_ts^2] = 1 / (1 + t exp(-tau_t^2)), the
    output's diagonal = sum_a2 (mean of V_ss) + (1 - sum_a2) (mean of V_ss' over s != s'), its
    off-diagonal the plain means of V over both prefixes."""
    rng = np.random.default_rng(0)
    T_len, d, eps = 5, 8, 1e-5
    A = rng.normal(size=(T_len, 3 * T_len))
    K_in = A @ A.T / (3 * T_len) + 0.3  # PSD, correlated positions, unequal diagonal
    q2, k2, v2, o2 = 0.09, 0.04, 0.02, 0.05

    def c(lag):  # a made-up correlation by lag, 1 at lag 0
        return 0.8**lag * math.cos(0.7 * lag) if with_rope else 1.0

    rope = np.array([[c(abs(t - s)) for s in range(T_len)] for t in range(T_len)])
    out, sum_a2, tau2 = T._attention_kernel(
        K_in, (q2, k2, v2, o2), d, eps, rope=rope if with_rope else None
    )

    U = np.array(
        [
            [K_in[t, s] / math.sqrt((K_in[t, t] + eps) * (K_in[s, s] + eps)) for s in range(T_len)]
            for t in range(T_len)
        ]
    )
    V = d * v2 * U
    want_out = np.zeros((T_len, T_len))
    for t in range(T_len):
        n = t + 1
        mean_diag = sum(U[s, s] for s in range(n)) / n
        mean_all = sum(U[s, r] * c(abs(s - r)) for s in range(n) for r in range(n)) / n**2
        want_tau2 = d * q2 * U[t, t] * d * k2 * max(mean_diag - mean_all, 0.0)
        assert tau2[t] == pytest.approx(want_tau2, rel=1e-12, abs=1e-15)
        want_a2 = 1 / (1 + t * math.exp(-want_tau2))
        assert sum_a2[t] == pytest.approx(want_a2, rel=1e-12)
        for u in range(T_len):
            if u != t:
                m = u + 1
                want_out[t, u] = sum(V[s, r] for s in range(n) for r in range(m)) / (n * m)
        v_diag = sum(V[s, s] for s in range(n)) / n
        pairs = [(s, r) for s in range(n) for r in range(n) if s != r]
        v_off = sum(V[s, r] for s, r in pairs) / len(pairs) if pairs else 0.0
        want_out[t, t] = want_a2 * v_diag + (1 - want_a2) * v_off
    np.testing.assert_allclose(out, d * o2 * want_out, rtol=1e-12)
    assert tau2[1:].min() > 0  # the check above saw positive logit variances, not the clamp


def test_gpt2_position_covariance_theory_tracks_measurement():
    """xavier_normal, real byte tokens (repeats): the position-covariance theory matches the
    residual stream at every block within K sd of a branch's per-seed fluctuation,
    sqrt(4/d / S) (each added branch carries two d x d chi-square factors); the
    uncorrelated-token theory misses the last block by more than that tolerance."""
    L, d, T_len, seeds = 6, 256, 32, (0, 1, 2)
    ids = P.byte_token_batch(6, T_len, seed=1)
    stds, gain = T.gpt2_scheme_stds("xavier_normal", L, d, vocab_size=256, n_positions=T_len)
    kern = T.gpt2_residual_kernel(stds, L, d, ids.numpy())
    unc = T.gpt2_residual_variance(stds, L, d, T_len)
    meas = P.measure_residual(
        "xavier_normal",
        P.ResidualProbe(ids, seeds, L, d, n_head=4, vocab_size=256),
        residual_gain=gain,
    )
    tol = K * math.sqrt((4 / d) / len(seeds))
    rel = meas.residual.mean(axis=0) / kern.residual - 1
    assert np.all(np.abs(rel) <= tol), (rel, tol)
    assert meas.residual[:, -1].mean() / unc.residual[-1] - 1 > tol


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_output_hidden_states_last_entry_is_normed(model_type):
    """The trap measure_residual avoids: transformers 5.x's last hidden state has the final norm
    (GPT-2's ln_f, Llama's norm) applied."""
    from hf_init.lm.modeling import build_model

    torch.manual_seed(0)
    model = build_model(
        model_type=model_type, n_layer=2, n_embd=32, n_head=4, vocab_size=256, n_positions=16
    ).eval()
    ids = torch.randint(0, 256, (2, 16))
    res, _, _ = P.measure_residual_once(model, ids)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    assert len(hs) == 3
    assert [float((h.double() ** 2).mean()) for h in hs[:2]] == pytest.approx(res[:2], rel=1e-12)
    assert float((hs[2].double() ** 2).mean()) != pytest.approx(res[2], rel=1e-3)


# --- Llama ---------------------------------------------------------------------------------


def test_llama_scheme_stds_are_the_built_models():
    """Every role's std from the Llama entry's fans is the std the scheme gives the built model
    (hf_init.lm.modeling.init_report, population std of the drawn weights within 6 sigma)."""
    from hf_init.lm.modeling import build_model, init_report

    L, d, H, KV = 2, 64, 4, 2
    for scheme in ("gpt2", "xavier_normal", "deepnet"):
        stds = T.llama_scheme_stds(scheme, L, d, H, KV, vocab_size=256)
        assert set(stds) == {"embed", "q", "k", "v", "o", "gate", "up", "down"}
        torch.manual_seed(0)
        model = build_model(
            model_type="llama",
            init_scheme=scheme,
            n_layer=L,
            n_embd=d,
            n_head=H,
            n_kv_head=KV,
            vocab_size=256,
        )
        for row in init_report(model):
            if row["role"] in stds:
                assert stds[row["role"]] == pytest.approx(row["scheme_std"], rel=1e-12), row


def test_rope_logit_correlation_is_stock_ropes_gram_matrix():
    """A query of equal coordinates rotated by the stock Llama rotary embedding to every
    position: its Gram matrix over positions / head_dim is c(t - s)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    hd, t_len = 16, 40
    config = LlamaConfig(hidden_size=64, num_attention_heads=4)
    rotary = LlamaRotaryEmbedding(config)
    x = torch.ones(1, 1, t_len, hd, dtype=torch.float64)
    cos, sin = rotary(x, torch.arange(t_len)[None])
    q, _ = apply_rotary_pos_emb(x, x, cos.double(), sin.double())
    gram = (q[0, 0] @ q[0, 0].T / hd).numpy()
    np.testing.assert_allclose(T.rope_logit_correlation(t_len, hd), gram, atol=1e-6)


def _llama_probe(ids, seeds, L, d):
    return P.ResidualProbe(ids, seeds, L, d, 4, 256, model_type="llama", n_kv_head=2)


def test_llama_theory_holds_where_its_assumptions_do():
    """gpt2 scheme, distinct tokens per sequence (uncorrelated values in block 1), tiny logits:
    the embeddings, block 1's attention and every SwiGLU branch match the uncorrelated-token
    recursion within K sd of a branch's per-seed fluctuation, sqrt(4/d / S) (the SwiGLU branch
    carries three d x d chi-square factors: sqrt(6/d / S) for it)."""
    L, d, T_len, seeds = 3, 256, 64, (0, 1, 2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(256, generator=gen)[:T_len] for _ in range(8)])
    stds = T.llama_scheme_stds("gpt2", L, d, 4, 2, vocab_size=256)
    pred = T.llama_residual_variance(stds, L, d, T_len)
    meas = P.measure_residual("gpt2", _llama_probe(ids, seeds, L, d))
    tol = K * math.sqrt((4 / d) / len(seeds))
    assert meas.residual[:, 0].mean() / pred.residual[0] - 1 == pytest.approx(0, abs=0.05)
    assert abs(meas.attn_add[:, 0].mean() / pred.attn_add[0] - 1) <= tol
    mlp_tol = K * math.sqrt((6 / d) / len(seeds))
    np.testing.assert_allclose(meas.mlp_add.mean(axis=0), pred.mlp_add, rtol=mlp_tol)


def test_llama_position_covariance_theory_tracks_measurement():
    """xavier_normal, real byte tokens (repeats): the position-covariance theory (RoPE in the
    logits, SwiGLU) matches the residual stream of a Llama with grouped-query attention at every
    block within K sd of a branch's per-seed fluctuation; the uncorrelated-token theory misses
    the last block by more than that."""
    L, d, T_len, seeds = 6, 256, 32, (0, 1, 2)
    ids = P.byte_token_batch(6, T_len, seed=1)
    stds = T.llama_scheme_stds("xavier_normal", L, d, 4, 2, vocab_size=256)
    kern = T.llama_residual_kernel(stds, L, d, ids.numpy(), n_head=4)
    unc = T.llama_residual_variance(stds, L, d, T_len)
    meas = P.measure_residual("xavier_normal", _llama_probe(ids, seeds, L, d))
    tol = K * math.sqrt((4 / d) / len(seeds))
    rel = meas.residual.mean(axis=0) / kern.residual - 1
    assert np.all(np.abs(rel) <= tol), (rel, tol)
    assert meas.residual[:, -1].mean() / unc.residual[-1] - 1 > tol


# --- script --------------------------------------------------------------------------------


def _digits_mean_square(n, seed=0):
    """Mean over n standardized digits images of mean_i(x_i^2), computed here from sklearn."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    x = x[np.random.default_rng(seed).choice(len(x), size=n, replace=False)]
    return float((x**2).mean())


def _theory_rows(path):
    from hf_init.theory.check import read_check_rows

    return read_check_rows(path)


def test_theory_check_script_small_run_and_refuses_existing_folder(tmp_path):
    """linear and relu MLPs at the critical std: the recursion is exact, so predicted is known by
    hand (q_l = m^(2l) mean(x^2), gradient m^(2(depth-l))), every row is within tolerance at
    k_sigma 4, and none is with a tolerance of ~0 (written with --overwrite). The script's main
    runs in this process (tests/conftest.py run_main)."""
    from conftest import run_main

    out = tmp_path / "tc"
    depth, width, batch = 3, 256, 16
    args = [
        "--output_dir",
        out,
        "--width",
        width,
        "--depth",
        depth,
        "--batch",
        batch,
        "--seeds",
        2,
        "--activations",
        "linear",
        "relu",
        "--std_multiples",
        "0.7",
        "1",
        "--gpt2_schemes",
        "gpt2",
        "--gpt2_n_layer",
        2,
        "--gpt2_n_embd",
        32,
        "--gpt2_seq_len",
        8,
        "--gpt2_batch",
        2,
        "--gpt2_seeds",
        1,
        "--llama_schemes",
        "gpt2",
    ]
    rc, _, err = run_main("theory_check", *args)
    assert rc == 0, err
    rows = _theory_rows(out / "theory_check.jsonl")
    mlp = [r for r in rows if r["network"].startswith("mlp-")]
    assert len(mlp) == 2 * 2 * 2 * depth
    gpt2 = Counter(r["network"] for r in rows if r["network"].startswith("gpt2-"))
    assert gpt2 == {"gpt2-gpt2-scaled": 3 + 2 + 2, "gpt2-gpt2-unscaled": 3 + 2 + 2}
    assert len([r for r in rows if r["network"] == "llama-gpt2"]) == 3 + 2 + 2
    ms = _digits_mean_square(batch)
    for r in mlp:
        m, l = float(r["std_multiple"]), int(r["layer"])
        hand = m ** (2 * l) * ms if r["quantity"] == "forward" else m ** (2 * (depth - l))
        assert float(r["predicted"]) == pytest.approx(hand, rel=1e-9), r
        rel = float(r["measured"]) / float(r["predicted"]) - 1
        assert float(r["relative_error"]) == pytest.approx(rel, rel=1e-9, abs=1e-12)
        assert abs(rel) < 0.3, r  # measured really is near the exact prediction
        assert abs(rel) <= float(r["tolerance"]), r  # exact theory at width 256: inside 4 sigma
    verdict_lines = (out / "verdict.txt").read_text().splitlines()
    for net in (
        "mlp-linear-0.7xcritical",
        "mlp-linear-1xcritical",
        "mlp-relu-0.7xcritical",
        "mlp-relu-1xcritical",
    ):
        for q in ("forward", "gradient"):
            line = next(x for x in verdict_lines if x.startswith(net) and x.split()[1] == q)
            assert f"{depth}/{depth} layers within" in line, line
    assert any(x.startswith("llama-gpt2 ") and "residual x" in x for x in verdict_lines)
    for name in ("mlp", "gpt2", "llama"):
        for kind in ("forward", "gradient") if name == "mlp" else ("residual", "branches"):
            assert (out / f"{name}_{kind}.png").stat().st_size > 0
    before = (out / "theory_check.jsonl").read_bytes()
    rc, _, err = run_main("theory_check", *args)
    assert rc == 2 and err.count("\n") == 1 and "--overwrite" in err
    assert (out / "theory_check.jsonl").read_bytes() == before
    # the outside case: a tolerance of ~0 admits no layer
    rc, _, err = run_main("theory_check", *args, "--overwrite", "--k_sigma", "1e-12")
    assert rc == 0, err
    for r in _theory_rows(out / "theory_check.jsonl"):
        if r["network"].startswith("mlp-"):
            assert abs(r["relative_error"]) > r["tolerance"], r
    verdict_lines = (out / "verdict.txt").read_text().splitlines()
    assert sum(f"0/{depth} layers within" in x for x in verdict_lines) == 8


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--k_sigma", "nan"], "k_sigma"),
        (["--std_multiples", "1", "inf"], "inf"),
        (["--width", "wide"], "--width"),
    ],
)
def test_theory_check_bad_value_is_one_line(tmp_path, flags, word):
    out = tmp_path / "tc"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "scripts/theory_check.py", "--output_dir", str(out), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and word in lines[0], lines[0]
    assert not out.exists()


def test_theory_check_arguments_refuse_bad_values():
    from hf_init.core.cli import UsageError
    from hf_init.theory.check import TheoryCheckArguments

    good = dict(
        activations=["relu"],
        gpt2_schemes=["gpt2"],
        width=8,
        depth=2,
        batch=4,
        seeds=1,
        gpt2_n_layer=1,
        gpt2_n_embd=8,
        gpt2_n_head=2,
        gpt2_seq_len=4,
        gpt2_batch=1,
        gpt2_seeds=1,
        std_multiples=[1.0],
        k_sigma=4.0,
    )
    TheoryCheckArguments(**good)
    for key, value in (
        ("k_sigma", math.inf),
        ("k_sigma", -1.0),
        ("k_sigma", 0.0),
        ("std_multiples", [0.0]),
        ("std_multiples", [1.0, math.nan]),
        ("gpt2_n_head", 3),
        ("activations", ["swish"]),
        ("gpt2_schemes", ["normal"]),
    ):
        with pytest.raises(UsageError):
            TheoryCheckArguments(**{**good, key: value})


def test_theory_check_tolerance_is_k_sigma_over_sqrt_seeds(theory_out):
    """First MLP layer, forward: the input is fixed, so the per-input relative variance of
    E[z_1^2] over weight draws is exactly 2 / n (a mean of n squared Gaussians); over S seeds the
    tolerance is k_sigma * sqrt(2 / (n S)) = 4 * sqrt(2 / (64 * 2)) = 0.5 for every activation."""
    from hf_init.theory.check import read_check_rows

    rows = [
        r
        for r in read_check_rows(theory_out / "theory_check.jsonl")
        if r["network"].startswith("mlp-")
    ]
    first = [r for r in rows if r["quantity"] == "forward" and r["layer"] == 1]
    assert len(first) == 4  # relu, tanh x 2 std multiples
    for r in first:
        assert float(r["tolerance"]) == pytest.approx(4 * math.sqrt(2 / (64 * 2)), rel=1e-12), r
    # deeper layers add the fluctuation of the layer below: strictly wider
    for r in rows:
        if r["quantity"] == "forward" and r["layer"] != 1:
            assert float(r["tolerance"]) > 0.5


def test_measure_mlp_default_is_four_distinct_seeds():
    """Without ``seeds`` the measurement draws four networks, seeds 0, 1, 2, 3: each row is the
    measurement of that seed alone (no seed counted twice in the mean the check compares)."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    default = P.measure_mlp([8, 8, 8], "relu", 0.5, x)
    assert default.q.shape == (4, 2)
    for seed in range(4):
        alone = P.measure_mlp([8, 8, 8], "relu", 0.5, x, seeds=(seed,))
        assert np.array_equal(default.q[seed], alone.q[0])
        assert np.array_equal(default.grad_var[seed], alone.grad_var[0])


@pytest.mark.parametrize("q", [0.5, 2.0])
def test_fourth_moments_of_tanh_and_silu_match_scipy_quadrature(q):
    """E[phi(z)^4] and E[phi'(z)^4] for z ~ N(0, q), with phi and phi' written out here (tanh:
    1 - tanh^2; silu: s (1 + z (1 - s)), s the sigmoid) and integrated by scipy's adaptive quad:
    the fluctuation terms of the recursion use both."""
    from scipy import integrate

    def expect(f):
        density = lambda z: math.exp(-z * z / (2 * q)) / math.sqrt(2 * math.pi * q)  # noqa: E731
        bound = 14 * math.sqrt(q)  # beyond 14 sigma the density is below 1e-42
        return integrate.quad(lambda z: f(z) * density(z), -bound, bound, epsabs=1e-13)[0]

    def sig(z):
        return 0.5 * (1 + math.tanh(z / 2))

    hand = {
        "tanh": (lambda z: math.tanh(z) ** 4, lambda z: (1 - math.tanh(z) ** 2) ** 4),
        "silu": (
            lambda z: (z * sig(z)) ** 4,
            lambda z: (sig(z) * (1 + z * (1 - sig(z)))) ** 4,
        ),
    }
    for activation, (f4, df4) in hand.items():
        e4, d4 = T.fourth_moments(activation, np.array([q]))
        assert e4[0] == pytest.approx(expect(f4), rel=1e-6), activation
        assert d4[0] == pytest.approx(expect(df4), rel=1e-6), activation


def test_mlp_verdict_counts_a_layer_at_its_tolerance_as_within():
    """The theory check's verdict line on hand-made rows: |relative error| <= tolerance counts
    (a layer exactly at it, -0.25 with tolerance 0.25, is within), the worst layer is named with
    its error, and the log-slopes are the mean per-layer log ratios."""
    from hf_init.theory.check import _mlp_verdict

    rows = [
        {"quantity": "forward", "layer": 1, "relative_error": 0.0, "tolerance": 0.25,
         "predicted": 1.0, "measured": 1.0},
        {"quantity": "forward", "layer": 2, "relative_error": -0.25, "tolerance": 0.25,
         "predicted": 2.0, "measured": 1.5},
        {"quantity": "forward", "layer": 3, "relative_error": 0.5, "tolerance": 0.25,
         "predicted": 4.0, "measured": 6.0},
    ]  # fmt: skip
    line = _mlp_verdict("relu-3x64", "forward", rows)
    assert "2/3 layers within finite-width tolerance; worst +50.0% at layer 3" in line
    slope_p, slope_m = (
        math.log(4) / 2,
        math.log(6) / 2,
    )  # mean of ln(2/1), ln(4/2); of ln(1.5), ln(4)
    assert f"mean log-slope/layer predicted {slope_p:+.3f}, measured {slope_m:+.3f}" in line
    one = _mlp_verdict("relu-1x64", "forward", rows[2:])  # one layer: no slope, 0 by convention
    assert "0/1 layers within" in one and "predicted +0.000, measured +0.000" in one
    two = _mlp_verdict("relu-2x64", "forward", rows[1:])  # two layers: the one ratio's log
    assert f"predicted {math.log(2):+.3f}, measured {math.log(4):+.3f}" in two


def test_backward_gain_is_chi_1_at_each_layers_variance():
    """tanh above its critical std: the signal's variance q_l changes from layer to layer, and
    Var(g_l) / Var(g_{l+1}) = n sigma_w^2 E[tanh'(z)^2], z ~ N(0, q_l) (scipy quad), for each l;
    the e-fold depth is 1 / |ln| of it."""
    n, std = 256, 1.6 / math.sqrt(256)
    p = T.propagate([n] * 5, "tanh", std, input_second_moment=0.2 / (n * std * std))

    def chi(q):
        return n * std * std * _gaussian_mean(lambda z: (1 - math.tanh(z) ** 2) ** 2, q)

    want = [chi(q) for q in p.q[:-1]]
    assert len(set(np.round(want, 3))) == len(want)  # the layers' gains differ
    np.testing.assert_allclose(p.backward_gain, want, rtol=1e-6)
    np.testing.assert_allclose(p.backward_efold_layers, 1 / np.abs(np.log(want)), rtol=1e-5)


def test_measured_mlp_with_a_scheme_draws_each_layer_from_its_own_fans():
    """A scheme name in measure_mlp: each layer drawn by the scheme with that layer's fan-in and
    fan-out, so xavier on widths 8 -> 32 -> 4 measures exactly what the stds sqrt(2 / 40) and
    sqrt(2 / 36) written out do (same seeds, same draws)."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    by_name = P.measure_mlp((8, 32, 4), "relu", "xavier_normal", x, seeds=(0, 1))
    by_hand = P.measure_mlp((8, 32, 4), "relu", [math.sqrt(2 / 40), math.sqrt(2 / 36)], x, (0, 1))
    np.testing.assert_array_equal(by_name.q, by_hand.q)
    np.testing.assert_array_equal(by_name.grad_var, by_hand.grad_var)
    kaiming = P.measure_mlp((8, 32, 4), "relu", "kaiming_normal", x, seeds=(0, 1))
    assert not np.allclose(kaiming.q, by_hand.q)  # the fans matter


def test_residual_records_number_blocks_from_the_embeddings_and_branches_from_one():
    """The residual stream is recorded from block 0 (the embeddings) to L, what attention and the
    MLP add from block 1 to L; each record's measured mean, standard error (scipy) and relative
    errors are those of its own block's seeds."""
    from types import SimpleNamespace

    from scipy import stats

    from hf_init.theory.check import _residual_records

    rng = np.random.default_rng(0)
    L = 3

    def quantities(scale):
        return SimpleNamespace(residual=scale * (1.0 + np.arange(L + 1)),
                               attn_add=scale * (2.0 + np.arange(L)),
                               mlp_add=scale * (3.0 + np.arange(L)))  # fmt: skip

    pred, unc = quantities(1.0), quantities(0.5)
    meas = SimpleNamespace(**{k: rng.uniform(1, 4, size=(5, len(v))) for k, v in
                              vars(pred).items()})  # fmt: skip
    rows = _residual_records(pred, unc, meas, network="gpt2-x")
    for quantity, first in (("residual", 0), ("attn_add", 1), ("mlp_add", 1)):
        mine = [r for r in rows if r["quantity"] == quantity]
        assert [r["layer"] for r in mine] == list(range(first, first + len(mine)))
        m = getattr(meas, quantity)
        for i, r in enumerate(mine):
            assert r["network"] == "gpt2-x"
            assert r["measured"] == pytest.approx(m[:, i].mean(), rel=1e-12)
            assert r["measured_sem"] == pytest.approx(stats.sem(m[:, i]), rel=1e-12)
            p, pu = getattr(pred, quantity)[i], getattr(unc, quantity)[i]
            assert r["relative_error"] == pytest.approx(m[:, i].mean() / p - 1, rel=1e-12)
            assert r["relative_error_uncorrelated"] == pytest.approx(
                m[:, i].mean() / pu - 1, rel=1e-12
            )
    # two seeds are enough for a standard error; one seed has none
    for seeds in (2, 1):
        few = SimpleNamespace(**{k: v[:seeds] for k, v in vars(meas).items()})
        for r in _residual_records(pred, unc, few, network="gpt2-x"):
            m = getattr(few, r["quantity"])[:, r["layer"] - (r["quantity"] != "residual")]
            if seeds == 2:
                assert r["measured_sem"] == pytest.approx(stats.sem(m), rel=1e-12)
            else:
                assert r["measured_sem"] is None  # not recorded (NaN is written as no value)


def test_only_the_gpt2_scheme_carries_gpt2s_residual_scaling():
    """The residual check names a run scaled when its scheme as defined carries GPT-2's factor
    1/sqrt(2 L) on the residual projections: gpt2 does, xavier_normal and kaiming_normal do not."""
    from hf_init.theory.check import _carries_scaling

    got = {
        s: _carries_scaling(s, 3, 16, 50, 8) for s in ("gpt2", "xavier_normal", "kaiming_normal")
    }
    assert got == {"gpt2": True, "xavier_normal": False, "kaiming_normal": False}


@pytest.mark.parametrize("activation", ["tanh", "gelu", "silu"])
@pytest.mark.parametrize("which", [0, 1])
def test_log_elasticity_is_the_derivative_under_the_gaussian(activation, which):
    """d log E[f(z)^2] / d log q for z ~ N(0, q) equals E[f^2 (z^2 - q)] / (2 q E[f^2]) (the
    Gaussian density's q-derivative, scipy quad), for f = phi and phi'."""
    q = np.array([0.3, 1.0, 2.5])
    got = T._log_elasticity(activation, q, which)
    f = {
        ("tanh", 0): np.tanh,
        ("tanh", 1): lambda z: 1 - np.tanh(z) ** 2,
        ("gelu", 0): lambda z: z * special.ndtr(z),
        ("gelu", 1): lambda z: special.ndtr(z) + z * np.exp(-z * z / 2) / np.sqrt(2 * np.pi),
        ("silu", 0): lambda z: z * special.expit(z),
        ("silu", 1): lambda z: special.expit(z) * (1 + z * (1 - special.expit(z))),
    }[activation, which]
    for qi, g in zip(q, got):
        e2 = _gaussian_mean(lambda z: f(z) ** 2, qi)
        de = _gaussian_mean(lambda z, qi=qi: f(z) ** 2 * (z * z - qi), qi)
        assert g == pytest.approx(de / (2 * qi * e2), rel=1e-5)


def _residual_by_position(v, n_layer, d, eps, qkvo, mlp_of):
    """The uncorrelated-token recursion with loops over positions from the embeddings' second
    moments ``v`` (one per position): per block, m = v / (v + eps) at each position, keys read
    the mean of m over the prefix, tau^2 = (d q2 m_t)(d k2 prefix), E[sum_s a_ts^2] =
    1 / (1 + t e^{-tau^2}), the branch d o2 d v2 prefix E[sum a^2], and the MLP ``mlp_of(m2)``
    from the second norm's m2 = (v + attn) / (v + attn + eps). Returns (residual, attn_add,
    mlp_add, effective positions 1 / E[sum a^2], tau^2), each averaged over positions, and the
    last block's m."""
    q2, k2, v2, o2 = qkvo
    n = len(v)
    residual, attn_add, mlp_add, positions, score_var = [sum(v) / n], [], [], [], []
    for _ in range(n_layer):
        m = [x / (x + eps) for x in v]
        attn, mlp, inv_a2, taus = [], [], [], []
        for t in range(n):
            prefix = sum(m[: t + 1]) / (t + 1)
            tau2 = d * q2 * m[t] * d * k2 * prefix
            a2 = 1 / (1 + t * math.exp(-tau2))
            inv_a2.append(1 / a2)
            taus.append(tau2)
            attn.append(d * o2 * d * v2 * prefix * a2)
            mlp.append(mlp_of((v[t] + attn[t]) / (v[t] + attn[t] + eps)))
        v = [v[t] + attn[t] + mlp[t] for t in range(n)]
        residual.append(sum(v) / n)
        attn_add.append(sum(attn) / n)
        mlp_add.append(sum(mlp) / n)
        positions.append(sum(inv_a2) / n)
        score_var.append(sum(taus) / n)
    return (residual, attn_add, mlp_add, positions, score_var), m


def _assert_residual_prediction(got, want):
    (residual, attn_add, mlp_add, positions, score_var), m = want
    assert len({round(x, 6) for x in m}) > 1  # the positions' m differ: the prefix mean matters
    np.testing.assert_allclose(got.residual, residual, rtol=1e-7)
    np.testing.assert_allclose(got.attn_add, attn_add, rtol=1e-7)
    np.testing.assert_allclose(got.mlp_add, mlp_add, rtol=1e-7)
    np.testing.assert_allclose(got.attn_positions, positions, rtol=1e-12)
    np.testing.assert_allclose(got.score_var, score_var, rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "gelu_tanh"])
def test_uncorrelated_token_recursion_written_out_by_position(activation):
    """gpt2_residual_variance recomputed with loops over positions, with a LayerNorm eps large
    enough that m = v / (v + eps) is far from 1 and differs by position from the second block on:
    keys read the mean of m over the prefix, E[sum_s a_ts^2] = 1 / (1 + t e^{-tau^2}), the MLP
    reads the second norm's (v + attn) / (v + attn + eps), E[phi^2] by scipy quad (relu: q/2);
    the effective positions 1 / E[sum a^2] and the logit variance tau^2, averaged over t."""
    L, d, T_len, eps, inner = 3, 16, 6, 0.05, 40
    stds = {"wte": 0.1, "wpe": 0.05, "q": 0.4, "k": 0.3, "v": 0.2, "attn_proj": 0.15,
            "mlp_fc": 0.25, "mlp_proj": 0.1}  # fmt: skip
    s2 = {k: v * v for k, v in stds.items()}
    got = T.gpt2_residual_variance(stds, L, d, T_len, n_inner=inner, layer_norm_eps=eps,
                                   activation=activation)  # fmt: skip

    def e_phi2(q):
        if activation == "relu":
            return q / 2
        c = math.sqrt(2 / math.pi)
        return _gaussian_mean(
            lambda z: (0.5 * z * (1 + math.tanh(c * (z + 0.044715 * z**3)))) ** 2, q
        )

    qkvo = (s2["q"], s2["k"], s2["v"], s2["attn_proj"])

    def mlp(m2):
        return inner * s2["mlp_proj"] * e_phi2(d * s2["mlp_fc"] * m2)

    embedded = [s2["wte"] + s2["wpe"]] * T_len
    _assert_residual_prediction(got, _residual_by_position(embedded, L, d, eps, qkvo, mlp))


@pytest.mark.parametrize("activation, std", [("tanh", 1.3), ("gelu", 0.3)])
def test_forward_and_backward_fluctuations_written_out_for_a_smooth_activation(activation, std):
    """propagate's fluctuations for one input, layer by layer, with every moment by scipy
    quad: q_0 = n_0 std^2 m0 + sb^2 (fixed input: s_0 = 0); the measured mean of z_l^2 over n_l
    units has relative variance (1 + 2/n_l)(1 + s_l) - 1; the next conditional variance's is
    s_{l+1} = (signal / q_{l+1})^2 [(1 + (E phi^4 / E[phi^2]^2 - 1) / n_l)(1 + e^2 s_l) - 1],
    signal = n_l std^2 E[phi^2], with e = d log E[phi^2] / d log q = E[phi^2 (z^2 - q)] / (2 q
    E[phi^2]). Backward from Var(g_L) = 1 with relative variance 2/n_L: g_l = std^2 n_{l+1}
    E[phi'^2] g_{l+1}, relative variance (1 + (3 E phi'^4 / E[phi'^2]^2 - 1) / n_l)
    (1 + rv_{l+1})(1 + e'^2 s_l) - 1, e' the same elasticity of E[phi'^2]. With depth 4 the
    elasticities' squares enter twice each (a relu's e is 1 and e' is 0)."""
    widths, sb, m0 = (8, 16, 12, 20, 6), 0.3, 1.5
    phi, dphi = SCIPY_ACT[activation]
    got = T.propagate(widths, activation, std, bias_std=sb, input_second_moment=m0)
    w2, sb2 = std * std, sb * sb
    q, s, relvar, elasticities = [w2 * widths[0] * m0 + sb2], [0.0], [], []
    for layer in range(len(widths) - 1):
        n = widths[layer + 1]
        relvar.append((1 + 2 / n) * (1 + s[layer]) - 1)
        if layer + 2 == len(widths):
            break
        ql = q[layer]
        e2 = _gaussian_mean(lambda z: phi(z) ** 2, ql)
        e4 = _gaussian_mean(lambda z: phi(z) ** 4, ql)
        elast = _gaussian_mean(lambda z, ql=ql: phi(z) ** 2 * (z * z - ql), ql) / (2 * ql * e2)
        elasticities.append(elast)
        h = (1 + (e4 / e2**2 - 1) / n) * (1 + elast**2 * s[layer]) - 1
        signal = w2 * n * e2
        q.append(signal + sb2)
        s.append((signal / q[-1]) ** 2 * h)
    assert max(abs(e - 1) for e in elasticities) > 0.05  # far enough from a relu's to matter
    np.testing.assert_allclose(got.q, q, rtol=1e-6)
    np.testing.assert_allclose(got.q_relvar, relvar, rtol=1e-6)
    g, g_relvar, d_elasticities = [1.0], [2 / widths[-1]], []
    for layer in range(len(widths) - 3, -1, -1):
        ql, n = q[layer], widths[layer + 1]
        d2 = _gaussian_mean(lambda z: dphi(z) ** 2, ql)
        d4 = _gaussian_mean(lambda z: dphi(z) ** 4, ql)
        d_elast = _gaussian_mean(lambda z, ql=ql: dphi(z) ** 2 * (z * z - ql), ql) / (2 * ql * d2)
        d_elasticities.append(d_elast)
        g.insert(0, w2 * widths[layer + 2] * d2 * g[0])
        rv = (1 + (3 * d4 / d2**2 - 1) / n) * (1 + g_relvar[0]) * (1 + d_elast**2 * s[layer]) - 1
        g_relvar.insert(0, rv)
    assert max(abs(e) for e in d_elasticities) > 0.05
    np.testing.assert_allclose(got.grad_var, g, rtol=1e-6)
    np.testing.assert_allclose(got.grad_relvar, g_relvar, rtol=1e-6)


def test_llama_uncorrelated_recursion_written_out_by_position():
    """llama_residual_variance recomputed with loops over positions, with an RMSNorm eps large
    enough that m = v / (v + eps) is far from 1 and differs by position from the second block on:
    embeddings std_embed^2 at every position, keys read the mean of m over the prefix,
    E[sum_s a_ts^2] = 1 / (1 + t e^{-tau^2}), the SwiGLU MLP reads the second norm's
    (v + attn) / (v + attn + eps) and adds n_inner std_down^2 E[silu(g)^2] d std_up^2 m2 with
    g ~ N(0, d std_gate^2 m2), E[silu^2] by scipy quad."""
    L, d, T_len, eps, inner = 3, 16, 6, 0.05, 40
    stds = {"embed": 0.2, "q": 0.4, "k": 0.3, "v": 0.2, "o": 0.15, "gate": 0.25, "up": 0.2,
            "down": 0.1}  # fmt: skip
    s2 = {k: v * v for k, v in stds.items()}
    got = T.llama_residual_variance(stds, L, d, T_len, n_inner=inner, rms_norm_eps=eps)

    def e_silu2(q):
        return _gaussian_mean(lambda z: SCIPY_ACT["silu"][0](z) ** 2, q)

    qkvo = (s2["q"], s2["k"], s2["v"], s2["o"])

    def mlp(m2):
        return inner * s2["down"] * e_silu2(d * s2["gate"] * m2) * d * s2["up"] * m2

    _assert_residual_prediction(
        got, _residual_by_position([s2["embed"]] * T_len, L, d, eps, qkvo, mlp)
    )


def test_gaussian_kernel_of_relu_is_the_arc_cosine_kernel():
    """E[relu(u) relu(w)] for (u, w) ~ N(0, C) on each pair of 4 positions with unequal variances
    and correlations of both signs: (a b / 2 pi)(sin th + (pi - th) cos th), th = arccos rho
    (Cho & Saul 2009); the diagonal E[relu(u)^2] = C_tt / 2."""
    from numpy.polynomial.hermite_e import hermegauss

    rng = np.random.default_rng(1)
    A = rng.normal(size=(4, 4)) * np.array([0.5, 1.0, 2.0, 3.0])[:, None]
    C = A @ A.T + 0.1 * np.eye(4)
    gx, gw = hermegauss(64)
    got = T._gaussian_kernel("relu", C, np.triu_indices(4, 1), gx, gw / math.sqrt(2 * math.pi))
    want = np.empty((4, 4))
    for i in range(4):
        for j in range(4):
            a, b = math.sqrt(C[i, i]), math.sqrt(C[j, j])
            th = math.acos(max(-1.0, min(1.0, C[i, j] / (a * b))))
            want[i, j] = a * b / (2 * math.pi) * (math.sin(th) + (math.pi - th) * math.cos(th))
    rho = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    assert rho.min() < -0.2 and rho[~np.eye(4, dtype=bool)].max() > 0.2
    np.testing.assert_allclose(np.diag(got), np.diag(C) / 2, rtol=1e-12)
    np.testing.assert_allclose(got, want, rtol=2e-2)  # Gauss-Hermite converges slowly at a kink


def test_gaussian_kernel_of_tanh_matches_two_dimensional_quadrature():
    """The smooth case to quadrature precision: E[tanh(u) tanh(w)], (u, w) ~ N(0, C), for each
    pair of 3 positions, by scipy's dblquad over the two standard normals."""
    from numpy.polynomial.hermite_e import hermegauss

    C = np.array([[0.5, -0.3, 0.4], [-0.3, 2.0, 0.9], [0.4, 0.9, 1.5]])
    gx, gw = hermegauss(64)
    got = T._gaussian_kernel("tanh", C, np.triu_indices(3, 1), gx, gw / math.sqrt(2 * math.pi))
    for i, j in [(0, 1), (0, 2), (1, 2), (2, 1)]:
        a, b = math.sqrt(C[i, i]), math.sqrt(C[j, j])
        rho = C[i, j] / (a * b)
        c = math.sqrt(1 - rho * rho)

        def f(y, x, a=a, b=b, rho=rho, c=c):
            dens = math.exp(-(x * x + y * y) / 2) / (2 * math.pi)
            return math.tanh(a * x) * math.tanh(b * (rho * x + c * y)) * dens

        want = integrate.dblquad(f, -9, 9, -9, 9, epsabs=1e-11)[0]
        assert got[i, j] == pytest.approx(want, rel=1e-6)


def test_residual_verdict_line_on_hand_made_rows():
    """The theory check's GPT-2/Llama line: growth = last block / embeddings (measured, and both
    predictions), the worst |relative error| of each prediction, the attention branch's error
    at block 1 and at the last block, the MLP branch's worst; all read from hand-made rows."""
    from hf_init.theory.check import _residual_verdict, verdict

    measured, predicted, uncorrelated = [1.0, 2.0, 3.0, 8.0], [1.0, 2.5, 3.0, 6.4], [1.0, 2, 2, 4]
    rows = [
        {"quantity": "residual", "layer": i, "measured": m, "predicted": p,
         "predicted_uncorrelated": u, "relative_error": m / p - 1,
         "relative_error_uncorrelated": m / u - 1}
        for i, (m, p, u) in enumerate(zip(measured, predicted, uncorrelated))
    ] + [
        {"quantity": "attn_add", "layer": i, "relative_error": e,
         "relative_error_uncorrelated": 2 * e}
        for i, e in ((1, 0.1), (2, -0.3), (3, 0.25))
    ] + [
        {"quantity": "mlp_add", "layer": i, "relative_error": e, "relative_error_uncorrelated": 0.0}
        for i, e in ((1, -0.05), (2, 0.02), (3, 0.04))
    ]  # fmt: skip
    line = _residual_verdict("gpt2-3x64", rows)
    assert line.startswith("gpt2-3x64 ")
    assert "residual x8 over 3 blocks measured" in line
    assert "predicted x6.4 (position covariance, worst |rel err| 25%)" in line  # 8 / 6.4 - 1
    assert "x4 (uncorrelated tokens, worst 100%)" in line  # 8 / 4 - 1
    assert "attention branch block 1 / last +10% / +25% (uncorrelated +20% / +50%)" in line
    assert line.endswith("MLP branch worst 5%")
    # verdict() over the rows of two networks: one line each, read from that network's rows
    # alone (the second network's measured growth is x16)
    scale = {0: 2.0, 3: 4.0}  # growth 4 * 8 / (2 * 1) = x16
    other = [dict(r, measured=scale[r["layer"]] * r["measured"]) if r["layer"] in scale and
             r["quantity"] == "residual" else r for r in rows]  # fmt: skip
    lines = verdict([dict(r, network="gpt2-3x64") for r in rows]
                    + [dict(r, network="llama-3x64") for r in other])  # fmt: skip
    assert [line.split()[0] for line in lines] == ["gpt2-3x64", "llama-3x64"]
    assert "residual x8 over 3 blocks" in lines[0] and "residual x16 over 3 blocks" in lines[1]


def test_a_two_layer_measurement_has_the_hidden_layers_gradient():
    """measure_mlp on n_0 -> n_1 -> n_2 (two linear layers): a gradient variance per layer, the
    hidden one as the theory predicts for relu at Kaiming's std (within 15%; width 512, 4
    seeds) and the output's the probe cotangent's E[v^2] ~ 1."""
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    widths = (32, 512, 512)
    std = math.sqrt(2 / 512)
    got = P.measure_mlp(widths, "relu", [math.sqrt(2 / 32), std], x)
    assert got.grad_var.shape == (4, 2)
    want = T.propagate(widths, "relu", [math.sqrt(2 / 32), std],
                       input_second_moment=float((x**2).mean())).grad_var  # fmt: skip
    np.testing.assert_allclose(got.grad_var.mean(0), want, rtol=0.15)


def test_efold_depth_of_a_slope_and_flat_up_to_1e_12():
    """e-fold depth 1/|slope| of a per-layer log slope, printed to 3 digits; |slope| <= 1e-12 is
    flat (inf): float noise in a log-ratio is not a depth."""
    from hf_init.theory.check import _efold

    assert [_efold(s) for s in (0.5, -0.25, 3e-3)] == ["2", "4", "333"]
    assert _efold(1e-12) == _efold(-1e-12) == _efold(0.0) == "inf"
    assert _efold(2e-12) == "5e+11"


def test_the_mlp_width_defaults_to_each_familys_own():
    """Left out, n_inner is GPT-2's 4 d and Llama's SwiGLU width, 2/3 of 4 d rounded up to a
    multiple of 256 (256 at d = 32; 11008 at Llama-7B's d = 4096): each prediction, and Llama's
    stds, equal those given that width and differ from those given another."""
    L, d, T_len = 2, 32, 6
    ids = np.arange(2 * T_len).reshape(2, T_len) % 5
    g = T.gpt2_scheme_stds("gpt2", L, d)[0]
    ll = T.llama_scheme_stds("xavier_normal", L, d, 4, n_inner=256)
    assert T.llama_scheme_stds("xavier_normal", L, d, 4) == ll
    assert T.llama_scheme_stds("xavier_normal", L, d, 4, n_inner=320) != ll
    predictions = {
        "gpt2_variance": (lambda **kw: T.gpt2_residual_variance(g, L, d, T_len, **kw), 4 * d),
        "gpt2_kernel": (lambda **kw: T.gpt2_residual_kernel(g, L, d, ids, **kw), 4 * d),
        "llama_variance": (lambda **kw: T.llama_residual_variance(ll, L, d, T_len, **kw), 256),
        "llama_kernel": (lambda **kw: T.llama_residual_kernel(ll, L, d, ids, 4, **kw), 256),
    }
    for name, (predict, width) in predictions.items():
        default, given, other = predict(), predict(n_inner=width), predict(n_inner=width + 64)
        np.testing.assert_array_equal(default.mlp_add, given.mlp_add, err_msg=name)
        assert not np.allclose(default.mlp_add, other.mlp_add), name


@pytest.mark.parametrize("act", ["relu", "linear", "tanh", "gelu", "silu", "gelu_tanh"])
def test_an_all_zero_input_adds_nothing_to_the_batch_but_its_zero(act, recwarn):
    """A batch holding an all-zero example (no bias): that example's z is exactly 0 at every
    layer, with no fluctuation, so the batch's mean q is half of the other example's alone and
    the bound on its relative variance, (mean SD)^2 / (mean q)^2, is the other's own. The
    smooth activations' elasticity is taken at its limit at q = 0, not as log 0 (NaN)."""
    both = T.propagate((8, 8, 8, 8), act, 0.4, input_second_moment=[0.0, 1.0])
    one = T.propagate((8, 8, 8, 8), act, 0.4, input_second_moment=[1.0])
    np.testing.assert_allclose(both.q, one.q / 2, rtol=1e-12)
    np.testing.assert_allclose(both.q_relvar, one.q_relvar, rtol=1e-12)
    assert np.all(np.isfinite(both.grad_relvar))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_kernel_predictions_compose_their_branches_block_by_block(family):
    """Both covariance-kernel predictions, 2 blocks on 2 sequences with repeated tokens, against
    the blocks composed by hand from the branch kernels (each tested above against sums written
    out by position): per block, what attention and the MLP add (mean diagonal), the residual
    after it, 1 / E[sum a^2] and the logit variance, each averaged over the sequences."""
    from numpy.polynomial.hermite_e import hermegauss

    L, d, n_head, T_len = 2, 32, 4, 6
    ids = np.array([[3, 1, 3, 2, 1, 3], [0, 0, 4, 1, 4, 2]])
    gx, gw = hermegauss(16)
    quad = (np.triu_indices(T_len, 1), gx, gw / math.sqrt(2 * math.pi))
    if family == "gpt2":
        stds = T.gpt2_scheme_stds("xavier_normal", L, d, vocab_size=5, n_positions=T_len)[0]
        got = T.gpt2_residual_kernel(stds, L, d, ids)
        s2, inner, eps, rope = {k: v * v for k, v in stds.items()}, 4 * d, 1e-5, None
        qkvo = (s2["q"], s2["k"], s2["v"], s2["attn_proj"])
    else:
        stds = T.llama_scheme_stds("xavier_normal", L, d, n_head, n_inner=64, vocab_size=5)
        got = T.llama_residual_kernel(stds, L, d, ids, n_head, n_inner=64)
        s2, inner, eps = {k: v * v for k, v in stds.items()}, 64, 1e-6
        rope = T.rope_logit_correlation(T_len, d // n_head)
        qkvo = (s2["q"], s2["k"], s2["v"], s2["o"])

    def mlp(K):
        U = T._layer_norm_kernel(K, eps)
        if family == "gpt2":
            return inner * s2["mlp_proj"] * T._gaussian_kernel("gelu_tanh", d * s2["mlp_fc"] * U,
                                                                 *quad)  # fmt: skip
        gate = T._gaussian_kernel("silu", d * s2["gate"] * U, *quad)
        return inner * s2["down"] * gate * (d * s2["up"] * U)

    want = {k: np.zeros(L) for k in ("attn_add", "mlp_add", "attn_positions", "score_var")}
    want["residual"] = np.zeros(L + 1)
    for seq in ids:
        same = (seq[:, None] == seq[None, :]).astype(float)
        if family == "gpt2":
            K = s2["wte"] * same + s2["wpe"] * np.eye(T_len)
        else:
            K = s2["embed"] * same
        want["residual"][0] += np.diag(K).mean() / len(ids)
        for layer in range(L):
            attn, sum_a2, tau2 = T._attention_kernel(K, qkvo, d, eps, rope)
            M = mlp(K + attn)
            K = K + attn + M
            for key, value in (("attn_add", np.diag(attn)), ("mlp_add", np.diag(M)),
                               ("attn_positions", 1 / sum_a2), ("score_var", tau2)):  # fmt: skip
                want[key][layer] += value.mean() / len(ids)
            want["residual"][layer + 1] += np.diag(K).mean() / len(ids)
    for key, value in want.items():
        np.testing.assert_allclose(getattr(got, key), value, rtol=1e-12, err_msg=key)
    assert np.all(want["score_var"] > 0) and np.all(want["attn_positions"] > 1)


def test_byte_token_batch_is_windows_of_the_python_docs_fixed_by_seed_0_by_default():
    """Each row is seq_len consecutive UTF-8 bytes of the pydoc topics joined in key order (found
    in that text); without a seed the draw is seed 0's, so the theory check's figures reproduce,
    and another seed draws other windows."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    ids = P.byte_token_batch(4, 32)
    assert ids.shape == (4, 32) and ids.dtype == torch.int64
    for row in ids.tolist():
        assert bytes(row) in text
    assert torch.equal(ids, P.byte_token_batch(4, 32, seed=0))
    assert not torch.equal(ids, P.byte_token_batch(4, 32, seed=1))


def test_gpt2_kernel_of_a_one_token_sequence_written_out():
    """A sequence of one token (the shortest a user can give) attends to itself alone: per block,
    attention adds d std_o^2 d std_v^2 K / (K + eps), the MLP n_inner std_proj^2 E[tanh(u)^2]
    with u ~ N(0, d std_fc^2 K / (K + eps)) (scipy quad), 1 / E[sum a^2] = 1 and the logit
    variance is 0 (no spread of keys)."""
    d, inner, eps, L = 8, 20, 0.05, 2
    stds = dict(zip(T.GPT2_STD_ROLES, (0.5, 0.3, 0.4, 0.35, 0.3, 0.2, 0.25, 0.15)))
    got = T.gpt2_residual_kernel(stds, L, d, [[7]], n_inner=inner, layer_norm_eps=eps,
                                 activation="tanh")  # fmt: skip
    s2 = {k: v * v for k, v in stds.items()}
    K = s2["wte"] + s2["wpe"]
    residual, attn_adds, mlp_adds = [K], [], []
    for _ in range(L):
        attn = d * s2["attn_proj"] * d * s2["v"] * K / (K + eps)
        K += attn
        mlp = (
            inner
            * s2["mlp_proj"]
            * _gaussian_mean(lambda z: np.tanh(z) ** 2, d * s2["mlp_fc"] * K / (K + eps))
        )
        K += mlp
        residual.append(K), attn_adds.append(attn), mlp_adds.append(mlp)
    assert got.residual == pytest.approx(residual, rel=1e-9)
    assert got.attn_add == pytest.approx(attn_adds, rel=1e-9)
    assert got.mlp_add == pytest.approx(mlp_adds, rel=1e-9)
    assert got.attn_positions.tolist() == [1.0] * L and got.score_var.tolist() == [0.0] * L


def test_propagate_takes_layers_one_unit_wide_and_refuses_zero():
    """Width 1 is a width: linear layers of std 0.5 on n_0 = 3 inputs of second moment 2 give
    q_1 = 0.25 * 3 * 2, q_2 = 0.25 * 1 * q_1, the gradient 0.25 * n_2 * 1 back at layer 1, and
    the relative variances (1 + 2/1) - 1 = 2 and (1 + 2/1)(1 + 2) - 1 = 8. Width 0 is refused."""
    pred = T.propagate((3, 1, 1), "linear", 0.5, input_second_moment=2.0)
    assert pred.q.tolist() == pytest.approx([1.5, 0.375], rel=1e-12)
    assert pred.grad_var.tolist() == pytest.approx([0.25, 1.0], rel=1e-12)
    assert pred.q_relvar.tolist() == pytest.approx([2.0, 8.0], rel=1e-12)
    with pytest.raises(ValueError, match="all >= 1"):
        T.propagate((3, 0, 1), "linear", 0.5)


@pytest.mark.parametrize("n_layer, n_embd", [(0, 8), (2, 0), (0, 0)])
def test_every_transformer_prediction_refuses_zero_layers_or_width(n_layer, n_embd):
    """No layers or no width is one clear ValueError from each of the four predictions (either
    alone is enough), not a table of zeros."""
    g = dict.fromkeys(T.GPT2_STD_ROLES, 0.02)
    ll = dict.fromkeys(T.LLAMA_STD_ROLES, 0.02)
    calls = (
        lambda: T.gpt2_residual_variance(g, n_layer, n_embd, seq_len=4),
        lambda: T.gpt2_residual_kernel(g, n_layer, n_embd, [[1, 2, 3]]),
        lambda: T.llama_residual_variance(ll, n_layer, n_embd, seq_len=4),
        lambda: T.llama_residual_kernel(ll, n_layer, n_embd, [[1, 2, 3]], n_head=1),
    )
    for call in calls:
        with pytest.raises(ValueError, match="must be >= 1"):
            call()


def test_llama_kernel_refuses_heads_that_do_not_divide_the_width():
    """RoPE's frequencies need the head width n_embd / n_head: a width the heads do not divide
    (as no Llama config allows) is refused, not rounded down."""
    ll = dict.fromkeys(T.LLAMA_STD_ROLES, 0.02)
    for n_head in (3, 0):
        with pytest.raises(ValueError, match="must be a multiple of n_head"):
            T.llama_residual_kernel(ll, 2, 16, [[1, 2, 3]], n_head=n_head)


def test_theory_check_defaults_are_the_setup_docs_theory_md_describes():
    """The published figures of docs/theory.md come from the check's defaults: its description of
    the setup and the defaults must say the same (MLPs 1024 wide, 10 layers, 256 digits, 4 seeds;
    12 x 128 GPT-2s, 5 schemes, 8 windows of 64 byte tokens, 2 seeds)."""
    from pathlib import Path

    from hf_init.theory.check import TheoryCheckArguments

    a = TheoryCheckArguments()
    assert (a.width, a.depth, a.batch, a.seeds, a.std_multiples) == (
        1024,
        10,
        256,
        4,
        [0.7, 1.0, 1.4],
    )
    assert (a.gpt2_n_layer, a.gpt2_n_embd, len(a.gpt2_schemes)) == (12, 128, 5)
    assert (a.gpt2_batch, a.gpt2_seq_len, a.gpt2_seeds) == (8, 64, 2)
    text = " ".join((Path(__file__).resolve().parents[2] / "docs/theory.md").read_text().split())
    assert (
        "1024-wide, 10-layer MLPs on 256 standardized sklearn digits (4 seeds; hidden std "
        "0.7x, 1x, 1.4x `critical_std`" in text
    )
    assert (
        "12 x 128 GPT-2s (5 schemes, residual scaling on and off; 8 windows of 64 byte "
        "tokens of the Python docs, 2 seeds)" in text
    )
