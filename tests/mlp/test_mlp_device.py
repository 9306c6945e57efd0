"""The MLP studies on a device: --device / --dtype / --threads, the sync-free step (divergence read
back every CHECK_EVERY steps, the diverged member still frozen bit for bit), data shared by the
members (no per-member copy of the inputs), evaluation in chunks. Runs on every device present
(the CPU here)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_init.core.cli import UsageError, fail_cleanly
from hf_init.mlp import training
from hf_init.mlp.args import MLPRunArguments
from hf_init.mlp.data import TabularData
from hf_init.mlp.model import Ensemble, MLPShape, build_mlp, ensemble_weights, standard_normal_draws
from hf_init.mlp.training import CHECK_EVERY, TrainConfig, train_ensemble

ROOT = Path(__file__).resolve().parents[2]
DEVICES = (
    ["cpu"]
    + (["cuda"] if torch.cuda.is_available() else [])
    + (["mps"] if torch.backends.mps.is_available() else [])
)


def _toy_data(n=40, n_in=5, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return TabularData("toy", "toy", x, y, x[:10].clone(), y[:10].clone(), n_classes)


def _diverging_pair(shape, device):
    """Members 0 and 2 train normally; member 1 (std 300) overflows after a few steps."""
    draws = standard_normal_draws(shape, [0])
    return Ensemble(
        shape,
        ensemble_weights(
            draws,
            [0, 0, 0],
            [[0.3] * shape.n_layers, [300.0] * shape.n_layers, [0.2] * shape.n_layers],
        ),
    ).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_diverged_member_frozen_bit_for_bit_at_its_weights_before_the_bad_step(device):
    """Full-batch steps (one step per epoch), so a run of d epochs is exactly the first d steps
    of a longer one. The member that diverges at step d, detected on the device and read back
    only every CHECK_EVERY steps, must end with exactly the weights a d-step run leaves it."""
    shape = MLPShape(5, 8, 3, 3)
    data = _toy_data().to(device)
    cfg = dict(
        optimizer="sgd", lr=0.1, momentum=0.9, batch_size=40, record_every=1000, probe_size=16
    )
    long = _diverging_pair(shape, device)
    rec = train_ensemble(long, data, TrainConfig(epochs=40, **cfg), progress=False)
    d = int(rec.diverged_step[1])
    assert rec.diverged_step[0] == -1 and rec.diverged_step[2] == -1
    # diverged between two host reads: it stayed in the batched compute, masked, until step
    # CHECK_EVERY
    assert 0 < d < CHECK_EVERY, f"the test needs a divergence between host reads, got step {d}"
    assert math.isnan(rec.step_loss[d, 1]) and np.isfinite(rec.step_loss[:d, 1]).all()
    short = _diverging_pair(shape, device)
    rec_short = train_ensemble(short, data, TrainConfig(epochs=d, **cfg), progress=False)
    assert rec_short.diverged_step[1] == -1
    for w_long, w_short in zip(
        list(long.weights) + list(long.biases), list(short.weights) + list(short.biases)
    ):
        assert torch.equal(w_long[1], w_short[1])  # bit for bit
    # the others trained on: the same as without the diverging member (to float tolerance)
    alone = Ensemble(shape, [w[[0, 2]] for w in _diverging_pair(shape, "cpu").weights]).to(device)
    train_ensemble(alone, data, TrainConfig(epochs=40, **cfg), progress=False)
    for w_long, w_alone in zip(long.weights, alone.weights):
        torch.testing.assert_close(w_long[[0, 2]], w_alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_ensemble_on_device_equals_plain_torch_on_cpu(device):
    """Trained on the device, each member equals an nn.Sequential + torch.optim.SGD trained on the
    CPU."""
    shape = MLPShape(5, 8, 2, 3)
    data = _toy_data()
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(3, o, i, generator=g) / math.sqrt(i) for i, o in shape.layer_fans()]
    ens = Ensemble(shape, ws).to(device)
    cfg = TrainConfig(
        lr=0.05, epochs=3, batch_size=16, data_seed=3, record_every=100, probe_size=16
    )
    train_ensemble(ens, data.to(device), cfg, progress=False)
    assert ens.weights[0].device.type == torch.device(device).type
    for m in range(3):
        seq = build_mlp(shape)
        with torch.no_grad():
            for l, lin in enumerate(x for x in seq if isinstance(x, torch.nn.Linear)):
                lin.weight.copy_(ws[l][m])
                lin.bias.zero_()
        opt = torch.optim.SGD(seq.parameters(), lr=0.05, momentum=0.9)
        for idx in training.minibatch_order(40, 16, 3, 3):
            opt.zero_grad()
            F.cross_entropy(seq(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        for l, lin in enumerate(x for x in seq if isinstance(x, torch.nn.Linear)):
            torch.testing.assert_close(
                ens.weights[l][m].detach().cpu(), lin.weight.detach(), rtol=1e-4, atol=1e-5
            )


def test_bfloat16_matmuls_match_stock_autocast():
    """--dtype bfloat16: the first step's loss is stock torch's under CPU autocast (bf16 matmuls),
    and differs from the float32 loss (the precision did change)."""
    shape = MLPShape(5, 16, 2, 3)
    data = _toy_data()
    draws = standard_normal_draws(shape, [0])
    weights = ensemble_weights(draws, [0], [[0.7] * shape.n_layers])
    idx = training.minibatch_order(40, 40, 1, 0)[0]
    losses = {}
    for dtype in ("float32", "bfloat16"):
        rec = train_ensemble(
            Ensemble(shape, weights),
            data,
            TrainConfig(dtype=dtype, epochs=1, batch_size=40, record_every=100, probe_size=8),
            progress=False,
        )
        losses[dtype] = rec.step_loss[0, 0]
    seq = build_mlp(shape)
    with torch.no_grad():
        for l, lin in enumerate(x for x in seq if isinstance(x, torch.nn.Linear)):
            lin.weight.copy_(weights[l][0])
            lin.bias.zero_()
        ref32 = F.cross_entropy(seq(data.x_train[idx]), data.y_train[idx]).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref16 = F.cross_entropy(seq(data.x_train[idx]).float(), data.y_train[idx]).item()
    assert losses["float32"] == pytest.approx(ref32, rel=1e-6)
    assert losses["bfloat16"] == pytest.approx(ref16, rel=2e-3)
    assert losses["bfloat16"] != losses["float32"]


def test_inputs_are_not_copied_per_member():
    """The shared input x (B, n_in) enters one product with every member's first-layer weights:
    no (M, B, n_in) tensor exists in a training step (at MNIST's 784 inputs that copy would be
    M x the batch)."""
    M, B, n_in = 6, 32, 50
    shape = MLPShape(n_in, 8, 2, 3)
    g = torch.Generator().manual_seed(0)
    ens = Ensemble(shape, [torch.randn(M, o, i, generator=g) * 0.1 for i, o in shape.layer_fans()])
    x, y = torch.randn(B, n_in), torch.randint(0, 3, (B,))
    with torch.profiler.profile(record_shapes=True) as prof:
        ens.member_losses(x, y).sum().backward()
    shapes = [
        tuple(s) for e in prof.events() for s in e.input_shapes if isinstance(s, (list, tuple))
    ]
    assert (B, n_in) in shapes
    assert (M, B, n_in) not in shapes


def test_evaluation_in_chunks_equals_plain_torch(monkeypatch):
    """Full-split loss/accuracy (chunked to bound memory at MNIST scale) against nn.Sequential."""
    monkeypatch.setattr(training, "EVAL_ELEMENTS", 3 * 7 * 8)  # 7 examples per chunk for 3 members
    shape = MLPShape(5, 8, 2, 3)
    data = _toy_data(n=40)
    g = torch.Generator().manual_seed(2)
    ens = Ensemble(shape, [torch.randn(3, o, i, generator=g) for i, o in shape.layer_fans()])
    loss, acc = training._evaluate(ens, data.x_train, data.y_train)
    for m in range(3):
        seq = build_mlp(shape)
        seq.load_state_dict(ens.member_state(m))
        with torch.no_grad():
            logits = seq(data.x_train)
        assert loss[m] == pytest.approx(F.cross_entropy(logits, data.y_train).item(), rel=1e-5)
        assert acc[m] == pytest.approx((logits.argmax(1) == data.y_train).double().mean().item())


def test_run_arguments_device_dtype_threads():
    run = MLPRunArguments()
    assert (
        run.threads == 0 and run.device == "auto" and run.dtype == "float32"
    )  # torch's threads by default
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert run.torch_device().type == expected
    assert MLPRunArguments(device="cpu").torch_device() == torch.device("cpu")
    for kw, message in (
        ({"device": "tpu"}, "--device must be auto, cpu, cuda, cuda:N or mps"),
        ({"dtype": "float16"}, "--dtype must be one of float32, tf32, bfloat16"),
        ({"device": "cpu", "dtype": "tf32"}, "--dtype tf32 needs a CUDA device"),
    ):
        with pytest.raises(UsageError, match=message):
            MLPRunArguments(**kw)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device on this machine"):
            MLPRunArguments(device="cuda:1")


def test_tabular_to_device_shares_one_copy():
    data = _toy_data()
    assert data.to("cpu") is data
    moved = data.to(DEVICES[-1])
    assert moved.x_train.device.type == DEVICES[-1] and torch.equal(
        moved.x_train.cpu(), data.x_train
    )


def _run_sweep(argv):
    spec = importlib.util.spec_from_file_location("mlp_sweep", ROOT / "scripts" / "mlp_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return fail_cleanly(lambda: mod.main(argv))


def test_sweep_on_the_device_with_bfloat16(tmp_path):
    out = tmp_path / "o"
    argv = [
        "--dataset",
        "wine",
        "--stds",
        "0.1",
        "--seeds",
        "1",
        "--depth",
        "1",
        "--epochs",
        "1",
        "--no_progress",
        "--device",
        DEVICES[-1],
        "--dtype",
        "bfloat16",
        "--output_dir",
        str(out),
    ]
    assert _run_sweep(argv) in (0, None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith(DEVICES[-1]) and summary["dtype"] == "bfloat16"
    assert summary["torch_threads"] == torch.get_num_threads()


def test_sweep_missing_device_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "o"
    assert _run_sweep(["--device", "cuda", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device on this machine" in err[0]
    assert not out.exists()
