"""A Llama pretraining run end to end (scripts/pretrain.py --model_type llama on the built-in
corpus, offline): its run folder loads as stock LlamaForCausalLM, its records equal the
variances of its saved weights, its FLOPs per token and model card; resumed after a crash
(equal to the uninterrupted run), stopped when it diverges, and what each Hub push carries.
Tiny Llama (2 layers x 32, 4 query heads sharing 2 key/value heads, SwiGLU 96 wide), 8 steps;
the crash, the Hub client and the checks are tests/test_run_lifecycle.py's."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_main
from test_run_lifecycle import (
    CRASH,
    ENV,
    FAKE_TOKEN,
    ROOT,
    SCRIPT,
    TINY,
    fake_hub_run,
    messages,
    records,
    script,
    weights,
)

N = 4  # checkpoint every N steps; runs of 2N steps
LAYERS, HEADS, KV_HEADS, WIDTH, MLP, CONTEXT = 2, 4, 2, 32, 96, 32
LLAMA = [
    *TINY,
    *("--model_type", "llama", "--n_head", HEADS, "--n_kv_head", KV_HEADS, "--n_inner", MLP),
]
RUN = [*LLAMA, "--max_steps", 2 * N, "--save_strategy", "steps", "--save_steps", N]
ROLES = ("q", "k", "v", "o", "gate", "up", "down")
# each role's weight in the saved state dict (nn.Linear: (out, in))
WEIGHT = {
    **{r: f"self_attn.{r}_proj.weight" for r in ("q", "k", "v", "o")},
    **{r: f"mlp.{r}_proj.weight" for r in ("gate", "up", "down")},
}


def python(code: str, *args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """The uninterrupted run (in-process), its Hub pushes recorded by the fake Hub client: (run
    folder, pushes, CompletedProcess)."""
    out = tmp_path_factory.mktemp("llama") / "run"
    hub = ["--push_to_hub", "true", "--hub_strategy", "checkpoint", "--hub_token", FAKE_TOKEN]
    proc, pushes = fake_hub_run(*RUN, *hub, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, pushes, proc


def test_run_folder_is_a_stock_llama_whose_records_are_its_weights(pushed):
    """config.json declares LlamaForCausalLM with the flags' sizes; stock AutoModelForCausalLM
    loads it; the last step's record of every role and layer is the population variance, mean
    and RMS of that saved weight, computed here with numpy from model.safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    out, _, proc = pushed
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    assert (config["intermediate_size"], config["max_position_embeddings"]) == (MLP, CONTEXT)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    saved = weights(out)
    recs = records(out / "variance.jsonl")
    steps = sorted({r["step"] for r in recs})
    assert steps == [0, 2, 4, 6, 8]
    blocks = [r for r in recs if r["role"] in ROLES]
    assert sorted((r["step"], r["layer"], r["role"]) for r in blocks) == sorted(
        (s, layer, role) for s in steps for layer in range(LAYERS) for role in ROLES
    )
    for r in blocks:
        if r["step"] == 2 * N:
            w = saved[f"model.layers.{r['layer']}.{WEIGHT[r['role']]}"].astype(np.float64)
            assert r["var"] == pytest.approx(w.var(), rel=1e-6), r
            assert r["rms"] == pytest.approx(np.sqrt((w**2).mean()), rel=1e-6), r
            assert r["mean"] == pytest.approx(w.mean(), rel=1e-4, abs=1e-9), r
    # the attention probe: every query head of every layer at the probe's own steps (its default
    # interval of 20 steps gives step 0 and the last step of this 8-step run)
    attn = sorted((r["step"], r["layer"], r["head"]) for r in recs if r["role"] == "attn")
    probed = (0, 2 * N)
    assert attn == [(s, layer, h) for s in probed for layer in range(LAYERS) for h in range(HEADS)]
    assert "population variance" in proc.stdout


def test_run_info_counts_gqa_and_swiglu_flops_and_the_card_says_llama(pushed):
    """FLOPs per token, PaLM's 6 N + 12 L H Q T, with N counted here from the saved tensors
    (untied embeddings, k/v of KV_HEADS heads, three SwiGLU matrices) and the sizes of the
    flags; the init stds of Llama's roles; the model card's tags and section."""
    out, _, _ = pushed
    info = json.loads((out / "run_info.json").read_text())
    saved = weights(out)
    n = sum(int(np.prod(t.shape)) for t in saved.values())
    head_dim = WIDTH // HEADS
    per_layer = (
        2 * WIDTH * HEADS * head_dim + 2 * WIDTH * KV_HEADS * head_dim + 3 * WIDTH * MLP + 2 * WIDTH
    )
    assert n == 2 * 300 * WIDTH + LAYERS * per_layer + WIDTH == info["n_parameters"]
    assert info["model_flops_per_token"] == 6 * n + 12 * LAYERS * HEADS * head_dim * CONTEXT
    assert set(info["init"]["std_by_weight"]) == {"embed", *ROLES, "lm_head"}
    import yaml

    card = (out / "README.md").read_text()
    tags = yaml.safe_load(card.split("---")[1])["tags"]  # the card's front matter
    assert {"hf-init", "llama", "init-gpt2"} <= set(tags) and "gpt2" not in tags
    assert "## hf-init run" in card and "- model: llama" in card and "init scheme: `gpt2`" in card


def test_every_hub_push_carries_the_llama_records_so_far(pushed):
    out, pushes, proc = pushed
    ckpt_pushes = [p for p in pushes if p["path_in_repo"] == "last-checkpoint"]
    assert [p["max_step"] for p in ckpt_pushes] == [N, 2 * N]
    for p in ckpt_pushes:
        assert {"variance.jsonl", "model.safetensors", "figures/qkv_variance_vs_step.png"} <= set(
            p["files"]
        )
    final = pushes[-1]
    assert final["path_in_repo"] is None and final["max_step"] == 2 * N
    assert "## hf-init run" in final["readme"]
    for p in out.rglob("*"):
        if p.is_file():
            assert FAKE_TOKEN.encode() not in p.read_bytes(), p
    assert FAKE_TOKEN not in proc.stdout + proc.stderr


@pytest.mark.slow  # the GPT-2 twin in test_run_lifecycle.py runs by default
def test_resumed_llama_run_equals_the_uninterrupted_one(pushed, tmp_path):
    """Killed after step N + 2 (records written, no clean-up), resumed from checkpoint N: the same
    records and final weights as the uninterrupted run."""
    straight, _, _ = pushed
    out = tmp_path / "run"
    crash = python(CRASH.format(crash_at=N + 2), *RUN, "--output_dir", out)
    assert crash.returncode == 137, crash.stderr[-3000:]
    resumed = script(*RUN, "--output_dir", out, "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = records(straight / "variance.jsonl"), records(out / "variance.jsonl")

    def key(r):
        return r["step"], r["layer"], r["role"], r.get("head")

    assert [key(r) for r in b] == [key(r) for r in a]
    for stat in ("var", "grad_var", "logit_std", "entropy", "learning_rate"):
        x = np.array([np.nan if r.get(stat) is None else r[stat] for r in a])
        y = np.array([np.nan if r.get(stat) is None else r[stat] for r in b])
        assert np.isfinite(x).any(), stat
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=0, equal_nan=True)
    wa, wb = weights(straight), weights(out)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=1e-6, atol=1e-7, err_msg=name)
    info = json.loads((out / "run_info.json").read_text())
    assert info["resumed_from"]["step"] == N and info["optimizer_steps"] == 2 * N


@pytest.mark.slow  # the GPT-2 twin in test_run_lifecycle.py runs by default
def test_diverging_llama_run_stops_naming_step_layer_weight(tmp_path):
    """Learning rate 100, no clipping: the run really diverges; one line naming the step and a
    Llama block's sub-layer or weight; records and checkpoints up to the step before, whose
    weights are finite and are what its records describe."""
    import re

    out = tmp_path / "run"
    diverge = [*LLAMA, "--logging_steps", 1, "--variance_steps", 1, "--max_steps", 20]
    diverge += ["--save_strategy", "steps", "--save_steps", 1, "--learning_rate", 100]
    diverge += ["--max_grad_norm", 0, "--warmup_steps", 0]
    proc = script(*diverge, "--output_dir", out)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = messages(proc.stderr)
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    m = re.match(r"error: training diverged at step (\d+): .*layer (\d+) (\S+)", err[0])
    # a forward sub-layer (self_attn, mlp) or, the forward finite, the block weight nearest the
    # output: the SwiGLU down projection (a Llama registers its norms after its MLP)
    assert m and m.group(3) in ("self_attn", "mlp", WEIGHT["down"]), err[0]
    step = int(m.group(1))
    assert step >= 2
    recs = records(out / "variance.jsonl")
    assert max(r["step"] for r in recs) == step - 1
    ckpts = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert ckpts == list(range(1, step)) and not (out / "model.safetensors").exists()
    saved = weights(out / f"checkpoint-{ckpts[-1]}")
    assert all(np.isfinite(t).all() for t in saved.values())
    w = saved[f"model.layers.1.{WEIGHT['down']}"].astype(np.float64)
    rec = next(r for r in recs if (r["step"], r["layer"], r["role"]) == (ckpts[-1], 1, "down"))
    assert rec["var"] == pytest.approx(w.var(), rel=1e-6)


def test_offline_push_to_hub_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    rc, _, err = run_main(
        "pretrain", *LLAMA, "--max_steps", 2, "--output_dir", out, "--push_to_hub", "true"
    )
    assert rc == 2 and not out.exists()
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("error: --push_to_hub needs the Hugging Face Hub") and "hf upload" in last
    )


def test_llama_tiny_config_runs_offline_under_accelerate(tmp_path):
    """`accelerate launch scripts/pretrain.py configs/llama_tiny.yaml` (the README's set-up
    first, in a fresh HF_HOME), 2 steps on fewer documents: a finished Llama run folder."""
    import shutil

    env = dict(ENV, HF_HOME=str(tmp_path / "hf"))
    env.pop("OMP_NUM_THREADS", None)
    setup = subprocess.run(
        [sys.executable, "-m", "hf_init.lm.accelerate_config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert setup.returncode == 0, setup.stderr
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    out = tmp_path / "run"
    short = ["--max_steps", 2, "--max_train_documents", 40, "--max_eval_samples", 16]
    proc = subprocess.run(
        [launcher or "accelerate", "launch", "-q", str(SCRIPT), "configs/llama_tiny.yaml"]
        + [*map(str, short), "--output_dir", str(out), "--disable_tqdm", "true"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (12, 128)
    assert (config["num_key_value_heads"], config["intermediate_size"]) == (2, 512)
    assert (out / "run_info.json").is_file()
