"""GPU readiness without a GPU: the MFU arithmetic, the peak table, the GPU config's settings and
the throughput benchmark on a tiny shape on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_model_flops_per_token_is_6n_plus_attention():
    from hf_init.lm.throughput import model_flops_per_token

    # GPT-2 small: N = 124,439,808 (tied embeddings, n_positions 1024), L=12, H=12, Q=64, T=1024
    assert (
        model_flops_per_token(124_439_808, 12, 12, 64, 1024)
        == 6 * 124_439_808 + 12 * 12 * 12 * 64 * 1024
    )


def test_peak_table_by_device_name_and_unknown_is_none():
    from hf_init.lm.throughput import mfu, peak_flops

    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12  # the longest matching name wins over "H100"
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Some New Chip") is None and peak_flops(None) is None
    assert mfu(1000.0, 10**9, "cpu", 1) is None  # CPU: no peak, no MFU


def test_gpt2_small_config_is_gpu_ready():
    from hf_init.core.cli import read_yaml_config
    from hf_init.lm.modeling import build_model

    cfg = read_yaml_config(ROOT / "hf_init" / "configs" / "gpt2_small.yaml")
    assert cfg["bf16"] is True and cfg["tf32"] is True and cfg["optim"] == "adamw_torch_fused"
    assert (
        cfg["torch_compile"] is False
    )  # not verified with the callback on a GPU (docs/scaling.md)
    model = build_model(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    assert (
        model.config._attn_implementation == "sdpa"
    )  # transformers' default for GPT-2: SDPA attention


def test_gpu_throughput_benchmark_runs_on_cpu_with_a_tiny_shape(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_throughput.py"),
        "--n_layer",
        "2",
        "--n_embd",
        "32",
        "--n_head",
        "2",
        "--seq_len",
        "16",
        "--batch_size",
        "2",
        "--vocab_size",
        "64",
        "--steps",
        "4",
        "--warmup_steps",
        "1",
        "--every",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    without, with_cb = json.loads(out.read_text())
    for r in (without, with_cb):
        assert r["timed_steps"] == 4 and r["mfu"] is None and r["device"] == "cpu"
        # the tiny model: 2 blocks of 12 d^2 + 13 d, embeddings 64 x 32 + 16 x 32, final LN 2 d
        d = 32
        assert r["n_parameters"] == 2 * (12 * d * d + 13 * d) + 64 * d + 16 * d + 2 * d
        assert r["model_flops_per_token"] == 6 * r["n_parameters"] + 12 * 2 * 2 * 16 * 16
        assert r["tokens_per_second"] > 0
    assert without["records"] == 0
    assert with_cb["records"] == 4 * 2 * 6  # steps 0, 2, 4 and the last (5) x 2 layers x 6 roles
    assert "with    callback:" in proc.stdout and "without callback:" in proc.stdout


def test_mfu_is_model_flops_over_the_peak_of_every_device(monkeypatch):
    """On a device with a known peak (H200: 989 TFLOP/s bf16), MFU = tokens/s x FLOPs/token over
    peak x world size; none outside half precision or without a throughput."""
    from hf_init.lm import throughput

    monkeypatch.setattr(throughput, "device_name", lambda device: "NVIDIA H200")
    assert throughput.mfu(2.0e5, 6 * 10**8, "cuda", 4) == pytest.approx(
        2.0e5 * 6e8 / (989e12 * 4), rel=1e-12
    )
    assert throughput.mfu(2.0e5, 6 * 10**8, "cuda", 1, bf16=False) is None
    assert throughput.mfu(None, 6 * 10**8, "cuda", 1) is None
