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

import pytest
import torch
from conftest import run_main
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


def expected_std(scheme: str, role: str, init_std=0.05) -> float:
    """Each scheme's std written out by hand for a Llama of L layers of width D."""
    r = 0.02
    if role == "embed":
        return {"small_init": math.sqrt(2 / (5 * D)), "deepnet": D**-0.5, "normal": init_std}.get(
            scheme, r
        )
    fan_in, fan_out = FANS[role]
    if scheme == "gpt2":
        return r / math.sqrt(2 * L) if role in ("o", "down") else r
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
        want = expected_std(scheme, role)
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
        ({"model_type": "llama", "initializer_range": 2.0}, "initializer_range must be <= 1"),
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


def test_attention_statistics_after_rope_with_shared_kv_heads():
    """Logits built here from the weights (RMSNorm, projections, RoPE, query head h reading key
    head h // (H / KV)) reproduce stock eager attention weights; their std and entropy per head
    are what llama_attention_statistics reports."""
    from hf_init.lm.llama_attention import llama_attention_statistics

    torch.manual_seed(0)
    model = llama("normal", init_std=0.2, n_layer=2, n_embd=64, attn_implementation="eager")
    model.eval()
    b, t, h, kv, hd = 3, 10, 4, 2, 16
    ids = torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_hidden_states=True)
    got = llama_attention_statistics(model, ids)
    assert got.shape == (2, h, 2)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i, layer in enumerate(model.model.layers):
        x = out.hidden_states[i].double()
        eps = model.config.rms_norm_eps
        x = x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * layer.input_layernorm.weight
        attn = layer.self_attn
        q = (x @ attn.q_proj.weight.double().T).view(b, t, h, hd).transpose(1, 2)
        k = (x @ attn.k_proj.weight.double().T).view(b, t, kv, hd).transpose(1, 2)
        q, k = rope_by_hand(q), rope_by_hand(k)
        logits = torch.stack(
            [q[:, j] @ k[:, j // (h // kv)].transpose(-1, -2) for j in range(h)], dim=1
        ) / math.sqrt(hd)
        probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        assert torch.allclose(probs, out.attentions[i].double(), atol=2e-5), i
        for j in range(h):
            entries = logits[:, j][:, causal]
            std = math.sqrt(((entries - entries.mean()) ** 2).mean().item())
            p = probs[:, j]
            entropy = -(p * torch.log(p.where(causal, torch.ones(()))))[:, causal].sum() / (b * t)
            assert got[i, j, 0].item() == pytest.approx(std, rel=1e-4), (i, j)
            assert got[i, j, 1].item() == pytest.approx(entropy.item(), rel=1e-4), (i, j)


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
