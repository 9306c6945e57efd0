"""The ensemble against plain torch: one member == an nn.Sequential with the same weights."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_init.mlp.data import TabularData
from hf_init.mlp.model import Ensemble, MLPShape, build_mlp, ensemble_weights, standard_normal_draws
from hf_init.mlp.training import TrainConfig, minibatch_order, train_ensemble
from hf_init.theory.recursions import scheme_weight_stds


def _random_ensemble(shape, m=3, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(m, o, i, generator=g) / math.sqrt(i) for i, o in shape.layer_fans()]
    bs = [torch.randn(m, o, generator=g) * 0.1 for _, o in shape.layer_fans()] if bias else None
    return Ensemble(shape, ws, bs)


def _sequential(shape, ens, m):
    seq = build_mlp(shape)
    seq.load_state_dict(ens.member_state(m))
    return seq


def _toy_data(n=40, n_in=5, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return TabularData("toy", "toy", x, y, x[:10].clone(), y[:10].clone(), n_classes)


@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
def test_member_forward_loss_grad_equal_sequential(activation):
    shape = MLPShape(5, 7, 3, 4, activation)
    ens = _random_ensemble(shape)
    x = torch.randn(11, 5)
    y = torch.randint(0, 4, (11,))
    logits = ens(x)
    losses = (
        F.cross_entropy(logits.reshape(-1, 4), y.repeat(3), reduction="none").view(3, 11).mean(1)
    )
    losses.sum().backward()
    for m in range(3):
        seq = _sequential(shape, ens, m)
        ref_logits = seq(x)
        torch.testing.assert_close(logits[m], ref_logits, rtol=1e-5, atol=1e-6)
        ref_loss = F.cross_entropy(ref_logits, y)
        torch.testing.assert_close(losses[m], ref_loss, rtol=1e-5, atol=1e-6)
        ref_loss.backward()
        linears = [mod for mod in seq if isinstance(mod, torch.nn.Linear)]
        for l, lin in enumerate(linears):
            torch.testing.assert_close(
                ens.weights[l].grad[m], lin.weight.grad, rtol=1e-4, atol=1e-6
            )
            torch.testing.assert_close(ens.biases[l].grad[m], lin.bias.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "optimizer,activation",
    [
        ("sgd", "relu"),
        ("adam", "relu"),
        ("sgd", "tanh"),
        ("sgd", "gelu"),
        ("sgd", "gelu_tanh"),
        ("adam", "linear"),
    ],
)
def test_member_trained_in_ensemble_equals_trained_alone(optimizer, activation):
    """Stacked elementwise optimizer == per-member optimizer, and the ensemble's written-out
    backward == autograd through nn.Sequential, for every activation: a few steps, same
    minibatches."""
    shape = MLPShape(5, 8, 2, 3, activation)
    data = _toy_data()
    ens = _random_ensemble(shape, m=4, seed=1)
    alone = [_sequential(shape, ens, m) for m in range(4)]
    cfg = TrainConfig(
        optimizer=optimizer,
        lr=0.05 if optimizer == "sgd" else 0.01,
        epochs=2,
        batch_size=16,
        data_seed=3,
        record_every=100,
        probe_size=16,
    )
    train_ensemble(ens, data, cfg, progress=False)
    for m, seq in enumerate(alone):
        opt = (
            torch.optim.SGD(seq.parameters(), lr=0.05, momentum=0.9)
            if optimizer == "sgd"
            else torch.optim.Adam(seq.parameters(), lr=0.01)
        )
        for idx in minibatch_order(len(data.y_train), 16, 2, 3):
            opt.zero_grad()
            F.cross_entropy(seq(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        linears = [mod for mod in seq if isinstance(mod, torch.nn.Linear)]
        for l, lin in enumerate(linears):
            torch.testing.assert_close(
                ens.weights[l][m].detach(), lin.weight.detach(), rtol=1e-4, atol=1e-5
            )
            torch.testing.assert_close(
                ens.biases[l][m].detach(), lin.bias.detach(), rtol=1e-4, atol=1e-5
            )


def test_minibatch_order_is_a_permutation_per_epoch():
    batches = minibatch_order(10, 4, 3, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    for e in range(3):
        assert sorted(torch.cat(batches[3 * e : 3 * e + 3]).tolist()) == list(range(10))


@pytest.mark.parametrize(
    "epochs, record_every, want",
    [
        (3, 2, [0, 2, 4, 6, 8, 9]),  # 9 steps (40 rows in batches of 14: 3 per epoch)
        (3, 5, [0, 5, 9]),  # T + 1 = 10 is a multiple of the interval: still ends at T = 9
        (3, 9, [0, 9]),  # the interval is T: the last record once
        (3, 20, [0, 9]),  # longer than the run: init and the end
    ],
)
def test_records_at_every_interval_and_the_last_step_never_beyond(epochs, record_every, want):
    """The record steps: 0, each multiple of record_every up to T, and T (the last update), with
    one record per step for every per-record array."""
    shape = MLPShape(5, 8, 2, 3)
    cfg = TrainConfig(
        lr=0.01, epochs=epochs, batch_size=14, record_every=record_every, probe_size=8
    )
    ens = Ensemble(shape, ensemble_weights(standard_normal_draws(shape, [0]), [0], [[0.3] * 3]))
    rec = train_ensemble(ens, _toy_data(), cfg, progress=False)
    assert rec.record_steps.tolist() == want
    assert rec.train_loss.shape[0] == rec.test_acc.shape[0] == len(want)


def test_diverged_member_is_frozen_and_others_unaffected():
    shape = MLPShape(5, 8, 3, 3)
    data = _toy_data()
    draws = standard_normal_draws(shape, [0])
    cfg = TrainConfig(
        optimizer="sgd", lr=0.1, epochs=3, batch_size=8, record_every=2, probe_size=16
    )
    # member 1 starts with std 1e4: its loss overflows or its gradient does within a few steps
    both = Ensemble(shape, ensemble_weights(draws, [0, 0], [[0.3] * 4, [1e4] * 4]))
    rec = train_ensemble(both, data, cfg, progress=False)
    assert rec.diverged_step[0] == -1
    assert rec.diverged_step[1] >= 0
    step = rec.diverged_step[1]
    assert math.isnan(rec.step_loss[step, 1]) and math.isfinite(rec.step_loss[step, 0])
    assert math.isnan(rec.train_loss[-1, 1]) and math.isfinite(rec.train_loss[-1, 0])
    alone = Ensemble(shape, ensemble_weights(draws, [0], [[0.3] * 4]))
    train_ensemble(alone, data, cfg, progress=False)
    for l in range(shape.n_layers):
        torch.testing.assert_close(both.weights[l][0], alone.weights[l][0])


def test_diverged_member_weights_stop_changing():
    """A member whose step s is non-finite keeps, bit for bit, the weights it had before step s
    (the weights of the same ensemble trained for exactly s steps), however long training goes
    on."""
    shape = MLPShape(5, 8, 3, 3)
    data = _toy_data()
    draws = standard_normal_draws(shape, [0])

    def train(
        epochs,
    ):  # full batch: one step per epoch, so `epochs` steps are a prefix of longer runs
        ens = Ensemble(shape, ensemble_weights(draws, [0, 0], [[0.3] * 4, [100.0] * 4]))
        cfg = TrainConfig(
            optimizer="sgd", lr=0.1, epochs=epochs, batch_size=40, record_every=50, probe_size=16
        )
        return ens, train_ensemble(ens, data, cfg, progress=False)

    long_runs = {}
    for epochs in (12, 20):
        ens, rec = train(epochs)
        s = int(rec.diverged_step[1])
        assert rec.diverged_step[0] == -1 and 1 <= s < 12  # diverges after a few momentum updates
        long_runs[epochs] = (
            s,
            [w[1].detach().clone() for w in ens.weights]
            + [b[1].detach().clone() for b in ens.biases],
        )
    assert long_runs[12][0] == long_runs[20][0]
    s = long_runs[12][0]
    before, rec = train(s)  # stops just before the non-finite step
    assert rec.diverged_step[1] == -1
    expected = [w[1].detach() for w in before.weights] + [b[1].detach() for b in before.biases]
    for epochs, (_, got) in long_runs.items():
        for a, b in zip(got, expected):
            assert torch.isfinite(a).all()
            assert torch.equal(a, b), epochs


def test_layer_statistics_match_manual_population_variance():
    shape = MLPShape(5, 6, 2, 3)
    data = _toy_data()
    ens = _random_ensemble(shape, m=2, bias=False)
    seq = _sequential(shape, ens, 1)
    cfg = TrainConfig(epochs=1, batch_size=40, record_every=1, probe_size=12, lr=1e-9)
    rec = train_ensemble(ens, data, cfg, progress=False)
    x, y = data.x_train[:12], data.y_train[:12]
    # independent: forward hooks on the plain model, then autograd of the mean CE
    pre = []
    h = x
    for mod in seq:
        h = mod(h)
        if isinstance(mod, torch.nn.Linear):
            h.retain_grad()
            pre.append(h)
    F.cross_entropy(h, y).backward()
    for l, z in enumerate(pre):
        zz = z.detach().double().flatten()
        assert rec.preact_var[0, 1, l] == pytest.approx(
            ((zz - zz.mean()) ** 2).mean().item(), rel=1e-5
        )
        post = torch.relu(z.detach()) if l < shape.depth else z.detach()
        assert rec.act_var[0, 1, l] == pytest.approx(
            post.double().var(unbiased=False).item(), rel=1e-5
        )
        assert rec.grad_preact_var[0, 1, l] == pytest.approx(
            z.grad.double().var(unbiased=False).item(), rel=1e-4
        )
    linears = [mod for mod in seq if isinstance(mod, torch.nn.Linear)]
    for l, lin in enumerate(linears):
        assert rec.grad_weight_var[0, 1, l] == pytest.approx(
            lin.weight.grad.double().var(unbiased=False).item(), rel=1e-4
        )


def test_shared_draw_rescaled_by_scheme_std():
    shape = MLPShape(13, 32, 3, 3)
    draws = standard_normal_draws(shape, [0, 1])
    k = scheme_weight_stds("kaiming_normal", shape.widths(), nonlinearity="relu")
    x = scheme_weight_stds("xavier_normal", shape.widths())
    assert k == pytest.approx([math.sqrt(2 / i) for i, _ in shape.layer_fans()])
    assert x == pytest.approx([math.sqrt(2 / (i + o)) for i, o in shape.layer_fans()])
    ws = ensemble_weights(draws, [0, 0, 1], [k, x, k])
    g = torch.Generator().manual_seed(0)
    first = torch.randn(32, 13, generator=g)  # seed 0's layer-1 draw, drawn independently
    torch.testing.assert_close(ws[0][0], first * k[0])
    torch.testing.assert_close(ws[0][1], first * x[0])
    assert not torch.allclose(ws[0][2], first * k[0])


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="depth must be >= 1"):
        MLPShape(4, 8, 0, 2)
    with pytest.raises(ValueError, match="unknown activation"):
        MLPShape(4, 8, 2, 2, "swish")
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_every_member_diverging_ends_cleanly():
    shape = MLPShape(5, 8, 3, 3)
    data = _toy_data()
    draws = standard_normal_draws(shape, [0, 1])
    ens = Ensemble(shape, ensemble_weights(draws, [0, 1], [[1e4] * 4, [1e4] * 4]))
    rec = train_ensemble(
        ens,
        data,
        TrainConfig(lr=0.1, epochs=3, batch_size=8, record_every=4, probe_size=16),
        progress=False,
    )
    assert (rec.diverged_step >= 0).all()
    assert np.isnan(rec.test_loss[-1]).all() and np.isnan(rec.act_var[-1]).all()
    assert np.isfinite(rec.train_loss[0]).all()  # measured at init, before anything diverged


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_compaction_keeps_optimizer_state(optimizer):
    """Dropping a member mid-training (what divergence does) leaves the others' trajectory
    unchanged."""
    from hf_init.mlp.training import _compact, make_optimizer

    shape = MLPShape(5, 8, 2, 3)
    data = _toy_data()
    cfg = TrainConfig(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)
    full = _random_ensemble(shape, m=3, seed=4)
    opt = make_optimizer(list(full.weights) + list(full.biases), optimizer, cfg.lr, cfg.momentum)
    batches = minibatch_order(40, 8, 2, seed=0)

    def step(ens, o, idx):
        o.zero_grad()
        ens.member_losses(data.x_train[idx], data.y_train[idx]).sum().backward()
        o.step()

    for idx in batches[:4]:
        step(full, opt, idx)
    keep = torch.tensor([True, False, True])
    part, part_opt = _compact(full, opt, keep, cfg)
    for idx in batches[4:]:
        step(full, opt, idx)
        step(part, part_opt, idx)
    for wf, wp in zip(
        list(full.weights) + list(full.biases), list(part.weights) + list(part.biases)
    ):
        torch.testing.assert_close(wf[keep].detach(), wp.detach(), rtol=1e-5, atol=1e-6)


def test_torch_activations_are_the_theory_activations():
    """One activation table: every activation the theory supports runs in the ensemble, and the
    torch function is the theory's formula (numpy, hf_init.theory.recursions.phi)."""
    from hf_init.mlp.model import TORCH_ACTIVATIONS
    from hf_init.theory.recursions import ACTIVATIONS, phi

    assert tuple(TORCH_ACTIVATIONS) == ACTIVATIONS
    z = np.linspace(-4, 4, 81)
    for name in ACTIVATIONS:
        got = TORCH_ACTIVATIONS[name](torch.as_tensor(z, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(got, phi(name, z), rtol=1e-6, atol=1e-9, err_msg=name)
    shape = MLPShape(5, 7, 2, 3, "gelu")
    ens = _random_ensemble(shape, m=2)
    x = torch.randn(4, 5)
    torch.testing.assert_close(ens(x)[1], _sequential(shape, ens, 1)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_cpu_and_cuda_parameters_get_the_fused_optimizer(name):
    """The MLP studies' optimizer runs torch's fused kernel where it exists for float32 (CPU and
    CUDA: one kernel for all members' tensors, the speed the ensemble benchmark measures) and the
    multi-tensor update elsewhere (a meta tensor stands for such a device)."""
    from hf_init.mlp.training import make_optimizer

    opt = make_optimizer([torch.nn.Parameter(torch.zeros(3))], name, lr=0.1)
    assert opt.defaults["fused"] is True and not opt.defaults.get("foreach")
    meta = make_optimizer([torch.nn.Parameter(torch.zeros(3, device="meta"))], name, lr=0.1)
    assert meta.defaults["foreach"] is True and not meta.defaults.get("fused")


def test_a_member_diverges_when_its_loss_or_its_gradient_is_not_finite():
    """_freeze_diverged on 4 members: a NaN loss (member 1) or an inf gradient entry under a
    finite loss (member 2) marks the member diverged at this step, NaN in its loss row, and
    zeroes its gradients and per-entry optimizer state; a member dead since step 2 (3) stays dead
    with its first step and zeroed state; the healthy member (0) keeps everything."""
    from hf_init.mlp.training import _freeze_diverged

    w = torch.nn.Parameter(torch.ones(4, 3, 2))
    grads = [torch.full((4, 3, 2), 0.5)]
    grads[0][2, 1, 0] = float("inf")
    opt = torch.optim.Adam([w])
    opt.state[w] = {"exp_avg": torch.full((4, 3, 2), 0.1), "step": torch.tensor(3.0)}
    losses = torch.tensor([1.0, float("nan"), 2.0, 3.0])
    alive = torch.tensor([True, True, True, False])
    bad_step = torch.tensor([-1, -1, -1, 2])
    loss_row = torch.empty(4)
    _freeze_diverged([w], grads, opt, losses, alive, bad_step, loss_row, step=5)
    assert alive.tolist() == [True, False, False, False]
    assert bad_step.tolist() == [-1, 5, 5, 2]
    assert loss_row[0] == 1.0 and loss_row[1:].isnan().all()
    for m, kept in enumerate((True, False, False, False)):
        want = 0.5 if kept else 0.0
        assert (grads[0][m] == want).all(), m
        assert (opt.state[w]["exp_avg"][m] == (0.1 if kept else 0.0)).all(), m
    assert opt.state[w]["step"] == 3.0  # scalar state is left alone


def test_tf32_matmuls_are_off_while_a_float32_ensemble_trains_and_put_back_after(monkeypatch):
    """A float32 run computes in full float32 even when the process had TF32 matmuls on (a
    setting that is global to the process), and the user's setting is restored afterwards."""
    from hf_init.mlp import training

    seen = []
    monkeypatch.setattr(
        training, "_train", lambda *a: seen.append(torch.backends.cuda.matmul.allow_tf32)
    )
    before = torch.backends.cuda.matmul.allow_tf32  # a module-like object: set and put back here
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        shape = MLPShape(5, 8, 2, 3)
        cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, dtype="float32")
        training.train_ensemble(_random_ensemble(shape, 2), _toy_data(), cfg, progress=False)
        assert seen == [False]
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
