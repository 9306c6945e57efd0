"""Llama-family models: the layout table, init schemes through the model's own _init_weights,
stock checkpoints, the attention statistics after RoPE with shared key/value heads, and FLOPs
per token; checked against formulas written out here, stock transformers and torch's own
FLOP counter (never against this code's output)."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, run_main
from transformers import LlamaConfig, LlamaForCausalLM

from hf_init.core.schemes import SCHEMES
from hf_init.lm.families import FAMILIES, LLAMA, llama_mlp_width
from hf_init.lm.modeling import build_model, make_config

ROOT = Path(__file__).resolve().parents[2]
L, D, H, KV, V, T = 4, 128, 4, 2, 512, 64  # layers, width, heads, key/value heads, vocab, context
HD, MLP = D // H, 512  # head size; SwiGLU width: 8/3 x 128 = 341.3, up to a multiple of 256
# nn.Linear stores (out, in): fan_in = in_features; k and v project to KV heads only
FANS = {
    "q": (D, H * HD),
    "k": (D, KV * HD),
    "v": (D, KV * HD),
    "o": (H * HD, D),
    "gate": (D, MLP),
    "up": (D, MLP),
    "down": (MLP, D),
    "lm_head": (D, V),
}


def llama(scheme="gpt2", **kw):
    size = dict(n_layer=L, n_embd=D, n_head=H, n_kv_head=KV, vocab_size=V, n_positions=T)
    return build_model(model_type="llama", init_scheme=scheme, **{**size, **kw})


def expected_std(scheme: str, role: str, layer=None, init_std=0.05) -> float:
    """Each scheme's std written out by hand for a Llama of L layers of width D (``layer``: the
    0-based block of a block weight)."""
    r = 0.02
    if role == "embed":
        return {"small_init": math.sqrt(2 / (5 * D)), "deepnet": D**-0.5, "normal": init_std}.get(
            scheme, r
        )
    fan_in, fan_out = FANS[role]
    if scheme == "gpt2":
        return r / math.sqrt(2 * L) if role in ("o", "down") else r
    if scheme == "depth_scaled":
        return r / math.sqrt(2 * (layer + 1)) if role in ("o", "down") else r
    if scheme == "normal":
        return init_std
    if scheme.startswith("xavier"):
        return math.sqrt(2 / (fan_in + fan_out))
    if scheme.startswith("kaiming"):
        return math.sqrt(2) / math.sqrt(fan_in)
    if scheme == "small_init":
        return math.sqrt(2 / (5 * D))
    if scheme == "deepnet":
        beta = 1.0 if role in ("q", "k") else (8 * L) ** -0.25
        return beta * math.sqrt(2 / (fan_in + fan_out))
    raise AssertionError(scheme)


def weights_by_hand(model):
    """(role, layer, tensor) for every weight of a Llama, read from the stock module names."""
    yield "embed", None, model.model.embed_tokens.weight
    for i, layer in enumerate(model.model.layers):
        for role in "qkvo":
            yield role, i, getattr(layer.self_attn, f"{role}_proj").weight
        for role in ("gate", "up", "down"):
            yield role, i, getattr(layer.mlp, f"{role}_proj").weight
    yield "lm_head", None, model.lm_head.weight


def sampling_tolerance(n: int, uniform: bool) -> float:
    # relative sd of the sample std ~ sqrt((kurtosis - 1) / (4 n)); 6 sigma, per tensor
    kurt = 1.8 if uniform else 3.0
    return 6 * math.sqrt((kurt - 1) / (4 * n))


def population_std(w: torch.Tensor) -> float:
    x = w.detach().double().flatten()
    return math.sqrt(((x - x.mean()) ** 2).mean().item())


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_llama_weight_kind_matches_formula(scheme):
    torch.manual_seed(0)
    model = llama(scheme, init_std=0.05 if scheme == "normal" else None)
    assert (model.config.intermediate_size, model.config.num_key_value_heads) == (MLP, KV)
    uniform = scheme.endswith("uniform")
    for role, layer, w in weights_by_hand(model):
        if role in FANS:
            assert tuple(w.shape) == FANS[role][::-1], role  # (out, in)
        want = expected_std(scheme, role, layer)
        got, n = population_std(w), w.numel()
        assert abs(got / want - 1) < sampling_tolerance(n, uniform), (scheme, role, layer, got)
        assert abs(w.double().mean().item()) < 6 * want / math.sqrt(n)
        if uniform:
            assert w.abs().max().item() <= math.sqrt(3) * want * (1 + 1e-6)
    # untied embeddings (LlamaConfig's default), no biases, RMSNorm gains 1
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    for name, p in model.named_parameters():
        assert not name.endswith(".bias"), name
        if "norm" in name:
            assert torch.all(p == 1), name


def test_normal_002_is_stock_llama_and_gpt2_scheme_scales_o_and_down():
    """Stock LlamaForCausalLM draws every Linear and Embedding from normal(0, 0.02): our
    `normal` 0.02 matches it kind by kind; `gpt2` differs only on o_proj and down_proj."""
    stock_config = LlamaConfig(
        num_hidden_layers=L,
        hidden_size=D,
        num_attention_heads=H,
        num_key_value_heads=KV,
        intermediate_size=MLP,
        vocab_size=V,
    )
    torch.manual_seed(1)
    stock = LlamaForCausalLM(stock_config)
    ours = llama("normal", init_std=0.02)
    gpt2 = llama("gpt2")
    for (role, _, ws), (_, _, wo), (_, _, wg) in zip(
        weights_by_hand(stock), weights_by_hand(ours), weights_by_hand(gpt2)
    ):
        tol = 2 * sampling_tolerance(ws.numel(), False)
        assert abs(population_std(wo) / population_std(ws) - 1) < tol, role
        scale = 1 / math.sqrt(2 * L) if role in ("o", "down") else 1.0
        assert abs(population_std(wg) / (population_std(ws) * scale) - 1) < tol, role


def test_layout_table_names_every_stock_weight_with_its_fans():
    """Every Linear/Embedding of a stock LlamaForCausalLM (and of a bare LlamaModel) is found in
    the table with its role and layer; the table's fans are the modules' (in, out) features."""
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=96,
        vocab_size=50,
    )
    stock = LlamaForCausalLM(config)
    fans = LLAMA.role_fans(LLAMA.dims(config))
    seen = []
    for model, prefix in ((stock, "model."), (stock.model, "")):
        for name, module in model.named_modules():
            found = LLAMA.weight_of_name(name)
            if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                assert found is None, name
                continue
            entry, layer = found
            (role,) = entry.parts
            if isinstance(module, torch.nn.Linear):
                assert fans[role] == (module.in_features, module.out_features), name
            else:
                assert fans[role] == (module.num_embeddings, module.embedding_dim), name
            assert layer == (int(name.split(".")[-3]) if ".layers." in f".{name}" else None)
            seen.append((prefix, role, layer))
    assert len(seen) == 2 * (2 * 7 + 1) + 1  # the LM also has lm_head
    assert list(LLAMA.blocks(stock)) == list(stock.model.layers)
    assert list(LLAMA.blocks(stock.model)) == list(stock.model.layers)
    assert LLAMA.block_roles == ("q", "k", "v", "o", "gate", "up", "down")
    assert set(LLAMA.residual_roles) == {"o", "down"}


def test_llama_mlp_width_is_metas_convention():
    # the intermediate sizes of the published Llama 7B, 13B and 65B configs
    assert [llama_mlp_width(d) for d in (4096, 5120, 8192)] == [11008, 13824, 22016]
    assert llama_mlp_width(128) == MLP


def test_save_stock_reload_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = llama("kaiming_uniform").eval()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["init_scheme"] == "kaiming_uniform" and cfg["num_key_value_heads"] == KV
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids).logits
    # a process that never imports hf_init
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "assert type(m).__name__ == 'LlamaForCausalLM', type(m)\n"
        "assert 'hf_init' not in sys.modules\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        "with torch.no_grad(): torch.save(m(ids).logits, sys.argv[1])\n"
    )
    torch.save(ids, tmp_path / "ids.pt")
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(out), ours)


def test_from_pretrained_initializes_only_missing_weights(tmp_path):
    """Our class reloads a checkpoint unchanged (RoPE buffers rebuilt: identical logits) and
    draws a key missing from it by the scheme."""
    from safetensors.torch import load_file, save_file

    from hf_init.lm.modeling import SchemeLlamaForCausalLM

    model = llama("normal", init_std=0.5).eval()
    model.save_pretrained(tmp_path)
    again = SchemeLlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = "model.layers.1.mlp.gate_proj.weight"
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    again = SchemeLlamaForCausalLM.from_pretrained(tmp_path)
    fresh = again.model.layers[1].mlp.gate_proj.weight
    assert abs(population_std(fresh) / 0.5 - 1) < sampling_tolerance(fresh.numel(), False)
    assert not torch.equal(fresh, model.model.layers[1].mlp.gate_proj.weight)
    for name, p in again.state_dict().items():
        if name in weights:
            assert torch.equal(p, weights[name]), name


def test_tied_embeddings_share_the_embedding_rule():
    model = llama("kaiming_normal", tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert abs(population_std(model.lm_head.weight) / 0.02 - 1) < 0.02


def test_scheme_defined_for_another_family_is_refused_in_one_line(monkeypatch):
    """Every registered scheme builds a Llama (the parametrized test above); a scheme declared for
    GPT-2 only is refused for Llama in one line naming the schemes that apply."""
    gpt2_only = dataclasses.replace(SCHEMES["xavier_normal"], name="x", model_types=("gpt2",))
    monkeypatch.setitem(SCHEMES, "x", gpt2_only)
    make_config(init_scheme="x", n_layer=1, n_embd=32, n_head=2, vocab_size=V)
    with pytest.raises(ValueError) as err:
        make_config(model_type="llama", init_scheme="x", n_layer=1, n_embd=32, n_head=2)
    msg = str(err.value)
    assert "\n" not in msg and "'x'" in msg and "'llama'" in msg
    assert all(name in msg for name in SCHEMES if name != "x")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"model_type": "bert"}, "unknown model_type 'bert'; valid model types: gpt2, llama"),
        ({"model_type": "llama", "n_kv_head": 3}, "n_kv_head (3) must divide n_head (4)"),
        ({"model_type": "llama", "n_kv_head": 0}, "n_kv_head must be an integer >= 1, got 0"),
        ({"n_kv_head": 2}, "n_kv_head (2): GPT-2 has no grouped-query attention"),
        ({"model_type": "llama", "resid_pdrop": 0.1}, "resid_pdrop: a Llama model has no"),
        ({"model_type": "llama", "add_cross_attention": True}, "add_cross_attention is a GPT-2"),
        (
            {"model_type": "llama", "initializer_range": 2.0},
            "initializer_range must be in (0, 1] for a Llama",
        ),
    ],
)
def test_bad_llama_input_is_one_clear_error(kwargs, needle):
    with pytest.raises(ValueError) as err:
        make_config(**{"n_embd": 64, "n_head": 4, "vocab_size": V, **kwargs})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_inspect_init_prints_llama_fans_and_hand_stds():
    rc, stdout, stderr = run_main(
        "inspect_init",
        *("--model_type", "llama", "--init_scheme", "xavier_normal", "--n_layer", L),
        *("--n_embd", D, "--n_head", H, "--n_kv_head", KV, "--vocab_size", V, "--seed", 3),
    )
    assert rc == 0, stderr
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[2:]}
    assert set(rows) == {"embed", *FANS}
    torch.manual_seed(3)
    model = llama("xavier_normal")
    pieces = {}
    for role, _, w in weights_by_hand(model):
        pieces.setdefault(role, []).append(w.detach().double().flatten())
    for role, (fan_in, fan_out, measured, scheme_std, _) in rows.items():
        if role in FANS:
            assert (int(fan_in), int(fan_out)) == FANS[role]
        assert float(measured) == pytest.approx(population_std(torch.cat(pieces[role])), abs=2e-6)
        assert float(scheme_std) == pytest.approx(expected_std("xavier_normal", role), abs=2e-6)


def rope_by_hand(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of x (batch, heads, T, head_dim) at positions 0..T-1, Llama's layout:
    dimension i and i + head_dim/2 form one pair rotated by angle t * theta^(-2i/head_dim)."""
    half = x.shape[-1] // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angle = torch.arange(x.shape[2], dtype=torch.float64)[:, None] * inv
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention_by_hand(model, ids) -> torch.Tensor:
    """Per layer and head (std of the causal logits, mean entropy) of an eager-attention Llama on
    ``ids``, from its hidden states and weights by hand (RMSNorm, projections, RoPE, query head h
    reading key head h // (H / KV)); the probabilities are checked against the stock model's
    eager attention weights on the way. float64, shape (n_layer, n_head, 2)."""
    cfg = model.config
    h, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // h
    (b, t), causal = ids.shape, torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_hidden_states=True)
    model.train(was_training)
    rows = []
    for i, layer in enumerate(model.model.layers):
        x = out.hidden_states[i].double()
        x = x / torch.sqrt((x**2).mean(-1, keepdim=True) + cfg.rms_norm_eps)
        x = x * layer.input_layernorm.weight.detach().double()
        attn = layer.self_attn
        q = (x @ attn.q_proj.weight.detach().double().T).view(b, t, h, hd).transpose(1, 2)
        k = (x @ attn.k_proj.weight.detach().double().T).view(b, t, kv, hd).transpose(1, 2)
        q, k = rope_by_hand(q), rope_by_hand(k)
        logits = torch.stack(
            [q[:, j] @ k[:, j // (h // kv)].transpose(-1, -2) for j in range(h)], dim=1
        ) / math.sqrt(hd)
        probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        assert torch.allclose(probs, out.attentions[i].double(), atol=2e-5), i
        heads = []
        for j in range(h):
            entries = logits[:, j][:, causal]
            std = math.sqrt(((entries - entries.mean()) ** 2).mean().item())
            p = probs[:, j]
            entropy = -(p * torch.log(p.where(causal, torch.ones(()))))[:, causal].sum() / (b * t)
            heads.append((std, entropy.item()))
        rows.append(heads)
    return torch.tensor(rows, dtype=torch.float64)


def test_attention_statistics_after_rope_with_shared_kv_heads():
    """Logits built here from the weights reproduce stock eager attention weights; their std and
    entropy per head are what llama_attention_statistics reports, and what the probe's
    attention_statistics reports for a Llama."""
    from hf_init.lm.attention_probe import attention_statistics
    from hf_init.lm.llama_attention import llama_attention_statistics

    torch.manual_seed(0)
    model = llama("normal", init_std=0.2, n_layer=2, n_embd=64, attn_implementation="eager")
    model.eval()
    ids = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(2))
    want = attention_by_hand(model, ids)
    got = llama_attention_statistics(model, ids)
    assert got.shape == (2, H, 2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)
    torch.testing.assert_close(attention_statistics(model, ids), want, rtol=1e-4, atol=0)


class Blocks(torch.utils.data.Dataset):
    def __init__(self, n=16, t=12, seed=1):
        self.ids = torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_block_statistics_of_a_llama_are_each_weights_float64_moments():
    """Every q k v o gate up down weight and gradient of every layer, against numpy's population
    moments of that nn.Linear weight read from the stock module names."""
    from hf_init.lm.recorders import block_statistics, variance_records

    torch.manual_seed(0)
    model = llama("kaiming_normal", n_layer=2, n_embd=64)
    ids = Blocks(n=2).ids
    model(input_ids=ids, labels=ids).loss.backward()
    records = variance_records(
        3, block_statistics(model), block_statistics(model, grads=True), roles=LLAMA.block_roles
    )
    by_key = {(r["layer"], r["role"]): r for r in records}
    assert len(records) == len(by_key) == 2 * 7
    for role, layer, w in weights_by_hand(model):
        if layer is None:
            continue
        rec, x, g = by_key[layer, role], w.detach().double().numpy(), w.grad.double().numpy()
        assert rec["step"] == 3
        assert rec["var"] == pytest.approx(np.var(x), rel=1e-12), (layer, role)
        assert rec["mean"] == pytest.approx(np.mean(x), rel=1e-9, abs=1e-15), (layer, role)
        assert rec["rms"] == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-12), (layer, role)
        assert rec["grad_var"] == pytest.approx(np.var(g), rel=1e-12), (layer, role)
        assert rec["grad_rms"] == pytest.approx(np.sqrt(np.mean(g**2)), rel=1e-12), (layer, role)


def test_probe_in_a_trainer_records_a_llamas_attention_at_the_last_step(tmp_path):
    """The attention probe inside the Trainer on a Llama: the last step's records are the
    by-hand statistics of the trained model on the probe batch, one per layer and query head."""
    from transformers import Trainer, TrainingArguments

    from hf_init.lm.attention_probe import AttentionProbeCallback

    class ListSink:
        records: list = []

        def write(self, records):
            self.records = records

        def close(self):
            pass

    torch.manual_seed(0)
    model = llama("normal", init_std=0.2, n_layer=2, n_embd=64, attn_implementation="eager")
    data = Blocks()
    probe, sink = data.ids[:3], ListSink()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    callback = AttentionProbeCallback(probe, [sink], every=2)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    assert {r["step"] for r in sink.records} == {3}
    assert [(r["layer"], r["head"]) for r in sink.records] == [
        (layer, head) for layer in range(2) for head in range(H)
    ]
    want = attention_by_hand(model, probe).numpy()
    got = np.array([[r["logit_std"], r["entropy"]] for r in sink.records]).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_divergence_stop_watches_each_familys_sublayers_in_forward_order():
    from hf_init.lm.guards import watched_sublayers

    gpt2 = build_model(n_layer=2, n_embd=32, n_head=2, vocab_size=V)
    h = gpt2.transformer.h
    assert watched_sublayers(gpt2) == [
        ("layer 0 attn (attn.c_attn / attn.c_proj weights)", h[0].attn),
        ("layer 0 mlp (mlp.c_fc / mlp.c_proj weights)", h[0].mlp),
        ("layer 1 attn (attn.c_attn / attn.c_proj weights)", h[1].attn),
        ("layer 1 mlp (mlp.c_fc / mlp.c_proj weights)", h[1].mlp),
        ("final norm ln_f / lm_head (tied to the token embedding)", gpt2.transformer.ln_f),
    ]
    model = llama(n_layer=2)
    attn = "self_attn.q_proj / self_attn.k_proj / self_attn.v_proj / self_attn.o_proj"
    mlp = "mlp.gate_proj / mlp.up_proj / mlp.down_proj"
    layers = model.model.layers
    assert watched_sublayers(model) == [
        (f"layer 0 self_attn ({attn} weights)", layers[0].self_attn),
        (f"layer 0 mlp ({mlp} weights)", layers[0].mlp),
        (f"layer 1 self_attn ({attn} weights)", layers[1].self_attn),
        (f"layer 1 mlp ({mlp} weights)", layers[1].mlp),
        ("final norm norm / lm_head", model.model.norm),
    ]


def test_divergence_stop_names_the_llama_sublayer_that_first_overflowed():
    """An infinite weight in layer 1's o_proj: the forward pass first becomes non-finite at the
    output of layer 1's attention, and the stop names that sub-layer with its Llama weights."""
    from types import SimpleNamespace

    from hf_init.core.cli import RunStopped
    from hf_init.lm.guards import DivergenceStop

    torch.manual_seed(0)
    model = llama("gpt2", n_layer=3, n_embd=64)
    stop = DivergenceStop()
    stop.on_train_begin(None, None, None, model=model)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[0, 0] = float("inf")
    ids = Blocks(n=2).ids
    model(input_ids=ids, labels=ids).loss.backward()
    with pytest.raises(RunStopped) as err:
        stop.on_pre_optimizer_step(None, SimpleNamespace(global_step=6), None, model=model)
    stop.on_train_end(None, None, None)
    msg = str(err.value)
    assert msg.startswith("error: training diverged at step 7: the forward pass first became ")
    paths = " / ".join(f"self_attn.{r}_proj" for r in "qkvo")
    assert f"at the output of layer 1 self_attn ({paths} weights)" in msg, msg
    assert "\n" not in msg


def test_flops_per_token_with_gqa_and_gated_mlp_match_torchs_flop_counter():
    """PaLM's training FLOPs per token, 6 N + 12 L H Q T with N every parameter, computed from the
    family's sizes, against torch's count of one forward and backward pass (eager attention):
    the counter sees matmuls only, so the embedding lookup and the RMSNorm gains (6 FLOPs per
    parameter in the formula) are the whole difference."""
    from torch.utils.flop_counter import FlopCounterMode

    model = llama("gpt2", n_layer=2, n_embd=64, n_inner=96, attn_implementation="eager")
    dims = LLAMA.dims(model.config)
    assert (dims.n_head, dims.n_kv_head, dims.head_dim, dims.n_inner) == (H, KV, 16, 96)
    b, t = 2, 24
    ids = torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(ids, labels=ids).loss.backward()
    n = sum(p.numel() for p in model.parameters())
    no_matmul = model.model.embed_tokens.weight.numel() + sum(
        p.numel() for name, p in model.named_parameters() if "norm" in name
    )
    palm = 6 * n + 12 * dims.n_layer * dims.n_head * dims.head_dim * t
    assert counter.get_total_flops() == b * t * (palm - 6 * no_matmul)


@pytest.mark.parametrize("name", ["llama_tiny", "llama_small"])
def test_llama_configs_size_their_models(name):
    """The model keys of the shipped Llama configs build the model their comments describe:
    parameter count against the hand formula (on the meta device: no memory, no init)."""
    from hf_init.core.cli import CONFIGS_DIR, read_yaml_config

    cfg = {
        **read_yaml_config(CONFIGS_DIR / "pretrain_tiny.yaml"),
        **read_yaml_config(CONFIGS_DIR / f"{name}.yaml"),
    }
    keys = ("model_type", "init_scheme", "n_layer", "n_embd", "n_head", "n_kv_head", "vocab_size")
    config = make_config(**{k: cfg[k] for k in keys}, n_positions=cfg["block_size"])
    with torch.device("meta"):
        model = build_model(config)
    d, layers, heads, kv = cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_kv_head"]
    hd, width, vocab = d // heads, llama_mlp_width(d), cfg["vocab_size"]
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * width + 2 * d
    hand = 2 * vocab * d + layers * per_layer + d  # untied embeddings, final RMSNorm
    assert sum(p.numel() for p in model.parameters()) == hand
    if name == "llama_small":
        assert hand == 124_668_672 and kv < heads
    else:
        assert (d, layers, width, kv) == (128, 12, 512, 2)


def test_families_table_keeps_gpt2_entry():
    from hf_init.lm import families

    assert set(FAMILIES) == {"gpt2", "llama"}
    assert families.BLOCK_ROLES == ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj")
    assert families.RESIDUAL_ROLES == ("attn_proj", "mlp_proj")
    assert families.weight_of_name("transformer.h.3.attn.c_attn")[1] == 3
    assert families.weight_of_name("model.layers.3.self_attn.q_proj") is None


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--model_type", "bert"], "unknown model_type 'bert'; valid model types: gpt2, llama"),
        (["--model_type", "llama", "--n_kv_head", "3"], "n_kv_head (3) must divide n_head (4)"),
        (["--model_type", "llama", "--n_inner", "0"], "n_inner must be an integer >= 1, got 0"),
        (["--n_kv_head", "2"], "--n_kv_head 2: GPT-2 has no grouped-query attention"),
    ],
)
def test_bad_model_flags_are_one_line_before_anything_is_written(tmp_path, flags, needle):
    out = tmp_path / "run"
    rc, _, stderr = run_main("pretrain", *flags, "--output_dir", out)
    assert rc == 2 and stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert needle in stderr and not out.exists()


def test_model_flags_make_the_config_of_their_family():
    """--model_type, --n_kv_head, --n_inner and --dropout as each family's config reads them:
    Llama's MLP width by its convention unless given, attention dropout only; GPT-2's dropout on
    residual, embeddings and attention. The shipped llama_tiny.yaml sets the Llama flags."""
    from transformers import GPT2Config

    from hf_init.core.cli import CONFIGS_DIR
    from hf_init.lm.args import ModelArguments, model_config, parse_args

    sizes = dict(n_layer=2, n_embd=64, n_head=4, dropout=0.1)
    llama_args = ModelArguments(model_type="llama", n_kv_head=2, **sizes)
    cfg = model_config(llama_args, vocab_size=100, n_positions=32)
    assert type(cfg) is LlamaConfig
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (2, 64, 4)
    assert (cfg.num_key_value_heads, cfg.max_position_embeddings, cfg.vocab_size) == (2, 32, 100)
    assert cfg.intermediate_size == 256  # 8/3 x 64 = 170.7, up to a multiple of 256
    assert cfg.attention_dropout == 0.1
    wide = model_config(ModelArguments(model_type="llama", n_inner=96, **sizes), 100, 32)
    assert (wide.intermediate_size, wide.num_key_value_heads) == (96, 4)
    gpt2 = model_config(ModelArguments(**sizes), vocab_size=100, n_positions=32)
    assert type(gpt2) is GPT2Config and gpt2.n_inner is None
    assert (gpt2.resid_pdrop, gpt2.embd_pdrop, gpt2.attn_pdrop) == (0.1, 0.1, 0.1)
    model_args = parse_args([str(CONFIGS_DIR / "llama_tiny.yaml")])[0]
    assert (model_args.model_type, model_args.n_head, model_args.n_kv_head) == ("llama", 4, 2)


def test_the_study_passes_model_type_to_every_run(tmp_path):
    """--model_type llama and --n_kv_head are flags of the runs: every planned run's arguments
    parse to a Llama with those key/value heads, whatever its scheme and seed."""
    from hf_init.lm.args import parse_args
    from hf_init.lm.study import parse_study_args, plan

    study, passthrough = parse_study_args(
        [
            "--model_type",
            "llama",
            "--n_kv_head",
            "2",
            "--seeds",
            "2",
            "--schemes",
            "gpt2",
            "deepnet",
        ]
    )
    assert passthrough == ["--model_type", "llama", "--n_kv_head", "2"]
    runs = plan(study)
    assert len(runs) == 4
    for run in runs:
        model_args = parse_args(run.argv(study, passthrough, tmp_path))[0]
        assert (model_args.model_type, model_args.n_kv_head) == ("llama", 2)
        assert model_args.init_scheme == run.scheme


def _llama_fsdp_worker(rank: int, world: int, port: int):
    """One rank of the FSDP2 check: each decoder layer and the model fully_shard-ed (gloo, CPU),
    block_statistics of weights and gradients against numpy on an unsharded copy, with every
    gather forbidden (one all_reduce per call)."""
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from hf_init.lm.recorders import block_statistics

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = llama("xavier_normal", n_layer=2, n_embd=32, n_kv_head=1, n_inner=48)
        ref = llama("xavier_normal", n_layer=2, n_embd=32, n_kv_head=1, n_inner=48)
        ref.load_state_dict(model.state_dict())
        ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(1))
        ref(input_ids=ids, labels=ids).loss.backward()
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model(input_ids=ids, labels=ids).loss.backward()
        k = model.model.layers[0].self_attn.k_proj.weight
        assert isinstance(k, DTensor) and k.to_local().numel() < k.numel()
        calls, real_all_reduce = [], dist.all_reduce

        def forbidden(*a, **kw):
            raise AssertionError("a gather was called")

        saved = {
            (DTensor, "full_tensor"): DTensor.full_tensor,
            (dist, "all_gather"): dist.all_gather,
        }
        for owner, name in saved:
            setattr(owner, name, forbidden)
        dist.all_reduce = lambda *a, **kw: calls.append(1) or real_all_reduce(*a, **kw)
        try:
            w, g = block_statistics(model), block_statistics(model, grads=True)
        finally:
            for (owner, name), fn in saved.items():
                setattr(owner, name, fn)
            dist.all_reduce = real_all_reduce
        assert len(calls) == 2 and w.shape == (2, 7, 3)
        for role, layer, p in weights_by_hand(ref):
            if layer is None:
                continue
            i = LLAMA.block_roles.index(role)
            x, dx = p.detach().double().numpy(), p.grad.double().numpy()
            assert w[layer, i, 1].item() == pytest.approx(np.var(x), rel=1e-12), (role, layer)
            assert w[layer, i, 2].item() == pytest.approx(np.sqrt((x**2).mean()), rel=1e-12)
            # float32 backward in another reduction order: float32 tolerance
            assert g[layer, i, 1].item() == pytest.approx(np.var(dx), rel=1e-4), (role, layer)
    finally:
        dist.destroy_process_group()
    from conftest import leave_spawned_rank

    leave_spawned_rank()


def test_llama_records_under_real_fsdp2_shards_equal_numpy_without_gather():
    import torch.multiprocessing as mp

    mp.spawn(_llama_fsdp_worker, args=(2, free_port()), nprocs=2, join=True)


def _fake_run(folder: Path, model_type: str, seed: int, eval_loss: float, rates) -> None:
    """A finished run folder written by hand: run_info.json, Q/K/V variances growing as
    exp(rate of the layer x step) up to step 40, then flat, and constant attention records,
    every 10 of 100 steps."""
    from hf_init.core.records import make_record, write_records

    folder.mkdir(parents=True)
    info = {
        "model_type": model_type,
        "config": {
            "model": {"model_type": model_type, "n_layer": len(rates)},
            "data": {},
            "run": {},
            "training": {
                "learning_rate": 1e-3,
                "lr_scheduler_type": "cosine",
                "warmup_steps": 0,
                "optim": "adamw_torch",
            },
        },
        "vocab_size": 300,
        "blocks": {"block_size": 32},
        "init": {"scheme": "gpt2", "std": None},
        "seed": seed,
        "n_parameters": 1000,
        "optimizer_steps": 100,
        "train_loss": eval_loss,
        "eval_loss": eval_loss,
        "perplexity": math.exp(eval_loss),
        "next_token_accuracy": 0.1,
        "train_runtime_s": 1.0,
    }
    (folder / "run_info.json").write_text(json.dumps(info))
    recs = []
    for step in range(0, 101, 10):
        recs.append(make_record(step, None, None, {"learning_rate": 1e-3}))
        for layer, rate in enumerate(rates):
            var = 1e-3 * math.exp(rate * min(step, 40) * (1 + 0.01 * seed))
            recs += [make_record(step, layer, role, {"var": var}) for role in "qkv"]
            attention = {"logit_std": 0.1, "entropy": 2.0}
            recs += [make_record(step, layer, "attn", attention, head=h) for h in range(2)]
    write_records(folder / "variance.jsonl", recs)


def test_report_on_a_gpt2_and_a_llama_study_compares_the_families(tmp_path):
    """Two studies given together: runs are labelled by model family, the loss summary and the
    claims are per family and scheme. By construction GPT-2's shallow layers grow faster (claim
    (a)'s direction) and the Llama's deep ones, in each of 5 seeds: per family the sign-flip test
    reaches p = 1/32 on opposite sides; pooled, the families would cancel."""
    import pandas as pd

    from hf_init.report import (
        configs_tables,
        load_runs,
        results_table,
        scheme_summary,
        write_report,
    )

    falling, rising = [0.05, 0.04, 0.03, 0.02], [0.02, 0.03, 0.04, 0.05]
    for seed in range(5):
        _fake_run(tmp_path / "gpt2" / f"s{seed}", "gpt2", seed, 5.0 + seed / 10, falling)
        _fake_run(tmp_path / "llama" / f"s{seed}", "llama", seed, 4.0 + seed / 10, rising)
    runs = load_runs(sorted((tmp_path / "gpt2").iterdir()) + sorted((tmp_path / "llama").iterdir()))
    assert [list(r.keys) for r in runs[:1]] == [["model", "scheme", "seed"]]
    summary = scheme_summary(results_table(runs)).set_index("model")
    assert summary.loc["gpt2", "eval_loss_mean"] == pytest.approx(5.2)
    assert summary.loc["llama", "eval_loss_mean"] == pytest.approx(4.2)
    assert (summary["seeds"] == 5).all()
    # the run folders of both studies are named s0..s4: the settings table keeps all ten
    shared, differ = configs_tables(runs)
    assert sorted(differ["run"]) == [f"{f}/s{i}" for f in ("gpt2", "llama") for i in range(5)]
    assert "model.model_type" in differ.columns and "model.model_type" not in set(shared["setting"])
    write_report([tmp_path / "gpt2", tmp_path / "llama"], tmp_path / "report")
    per_seed = pd.read_csv(tmp_path / "report" / "report_files" / "claims_per_seed.csv")
    growth = per_seed[(per_seed["claim"].str.contains("shallow")) & (per_seed["projection"] == "q")]
    rho = growth.groupby("model")["statistic"].agg(["min", "max", "count"])
    assert rho.loc["gpt2", "max"] == pytest.approx(-1.0) and rho.loc["gpt2", "count"] == 5
    assert rho.loc["llama", "min"] == pytest.approx(1.0) and rho.loc["llama", "count"] == 5
    lines = (tmp_path / "report" / "report.md").read_text().splitlines()
    for family, verdict in (("gpt2", "supported"), ("llama", "contradicted")):
        row = next(x for x in lines if x.startswith(f"| {family} | gpt2 | q | shallow_grow_faster"))
        assert f"| {verdict} |" in row and "not supported" not in row, row
    # the run folders of both studies are named s0..s4: each family's figures are its own files
    figures = [x for x in lines if "qkv_variance.png" in x]
    gpt2_fig = next(x for x in figures if "model gpt2," in x)
    llama_fig = next(x for x in figures if "model llama," in x)
    assert gpt2_fig.split("](")[1] != llama_fig.split("](")[1], (gpt2_fig, llama_fig)
