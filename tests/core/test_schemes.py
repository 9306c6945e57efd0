"""The scheme registry and the GPT-2 override, checked against formulas written out here
(not read back from the registry) and against stock transformers."""

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from hf_init.core.schemes import SCHEMES, SchemeOptions, WeightSpec, fans, get_scheme
from hf_init.lm.modeling import build_model, make_config

L, D, H, V, T = 12, 128, 4, 512, 64  # layers, width, heads, vocab, positions


def expected_std(
    scheme: str, role: str, fan_in: int, fan_out: int, layer=None, init_std=0.05
) -> float:
    """Each scheme's std written out by hand, for GPT-2 with L layers of width D (``layer``: the
    0-based block of a block weight)."""
    r = 0.02
    emb = role in ("wte", "wpe")
    if scheme == "gpt2":
        return r / math.sqrt(2 * L) if role in ("attn_proj", "mlp_proj") else r
    if scheme == "depth_scaled":
        return r / math.sqrt(2 * (layer + 1)) if role in ("attn_proj", "mlp_proj") else r
    if scheme == "normal":
        return init_std
    if scheme.startswith("xavier"):
        return r if emb else math.sqrt(2 / (fan_in + fan_out))
    if scheme.startswith("kaiming"):
        return r if emb else math.sqrt(2) / math.sqrt(fan_in)
    if scheme == "small_init":
        return math.sqrt(2 / (5 * D))
    if scheme == "deepnet":
        if emb:
            return D**-0.5
        beta = (8 * L) ** -0.25 if role not in ("q", "k") else 1.0
        return beta * math.sqrt(2 / (fan_in + fan_out))
    raise AssertionError(scheme)


def weight_blocks(model):
    """(role, layer, tensor, fan_in, fan_out) for every weight kind, split by hand."""
    t = model.transformer
    yield "wte", None, t.wte.weight, V, D
    yield "wpe", None, t.wpe.weight, T, D
    for i, block in enumerate(t.h):
        w = block.attn.c_attn.weight  # Conv1D (in=D, out=3D): columns are [Q | K | V]
        assert tuple(w.shape) == (D, 3 * D)
        for j, role in enumerate(("q", "k", "v")):
            yield role, i, w[:, j * D : (j + 1) * D], D, D
        yield "attn_proj", i, block.attn.c_proj.weight, D, D
        yield "mlp_fc", i, block.mlp.c_fc.weight, D, 4 * D
        yield "mlp_proj", i, block.mlp.c_proj.weight, 4 * D, D


def sampling_tolerance(n: int, uniform: bool) -> float:
    # relative sd of the sample std ~ sqrt((kurtosis - 1) / (4 n)); 6 sigma, per tensor
    kurt = 1.8 if uniform else 3.0
    return 6 * math.sqrt((kurt - 1) / (4 * n))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_weight_kind_matches_formula(scheme):
    torch.manual_seed(0)
    model = build_model(
        init_scheme=scheme,
        init_std=0.05 if scheme == "normal" else None,
        n_layer=L,
        n_embd=D,
        n_head=H,
        vocab_size=V,
        n_positions=T,
    )
    uniform = scheme.endswith("uniform")
    for role, layer, w, fan_in, fan_out in weight_blocks(model):
        want = expected_std(scheme, role, fan_in, fan_out, layer)
        # population std over all entries, computed by hand in float64
        x = w.detach().double().flatten()
        got = math.sqrt(((x - x.mean()) ** 2).mean().item())
        tol = sampling_tolerance(x.numel(), uniform)
        assert abs(got / want - 1) < tol, (scheme, role, layer, got, want)
        assert abs(x.mean().item()) < 6 * want / math.sqrt(x.numel())
        if uniform:
            assert x.abs().max().item() <= math.sqrt(3) * want * (1 + 1e-6)
    # lm_head is tied to wte, biases 0, LayerNorm 1/0
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            assert torch.count_nonzero(p) == 0, name
        if ".ln_" in name and name.endswith(".weight"):
            assert torch.all(p == 1), name


def test_stock_gpt2_scheme_matches_stock_transformers_statistics():
    """Our `gpt2` scheme against stock GPT2LMHeadModel built from the same GPT2Config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    stock = GPT2LMHeadModel(GPT2Config(n_layer=L, n_embd=D, n_head=H, vocab_size=V, n_positions=T))
    ours = build_model(
        init_scheme="gpt2", n_layer=L, n_embd=D, n_head=H, vocab_size=V, n_positions=T
    )
    for (role, _, ws, *_), (_, _, wo, *_) in zip(weight_blocks(stock), weight_blocks(ours)):
        n = ws.numel()
        assert abs(wo.std().item() / ws.std().item() - 1) < 2 * sampling_tolerance(n, False), role
    # GPT-2's 1/sqrt(2 n_layer) scaling of c_proj really ran (transformers skips it when it is
    # attached to a module with no direct parameters: docs/traps.md)
    cproj = torch.cat([b.attn.c_proj.weight.flatten() for b in ours.transformer.h])
    assert abs(cproj.std().item() / (0.02 / math.sqrt(2 * L)) - 1) < 0.01


def test_kaiming_reads_conv1d_fans_logically():
    """A d -> 4d layer: Kaiming fan_in is d whichever way the weight is stored. torch's
    kaiming_normal_ on the Conv1D storage (in, out) would use 4d instead."""
    d = 64
    conv = Conv1D(4 * d, d)  # weight (d, 4d)
    lin = torch.nn.Linear(d, 4 * d)  # weight (4d, d)
    assert fans(conv.weight.shape, "conv1d") == (d, 4 * d)
    assert fans(lin.weight.shape, "linear") == (d, 4 * d)
    model = build_model(
        init_scheme="kaiming_normal", n_layer=2, n_embd=256, n_head=4, vocab_size=V, n_positions=T
    )
    w = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    right, storage_based = math.sqrt(2 / 256), math.sqrt(2 / 1024)
    assert abs(w.std().item() / right - 1) < 0.02
    assert abs(w.std().item() / storage_based - 1) > 0.5
    # the mlp down-projection 4d -> d has fan_in 4d
    w = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    assert abs(w.std().item() / math.sqrt(2 / 1024) - 1) < 0.02


def test_kaiming_fan_out_mode_and_nonlinearity():
    model = build_model(
        init_scheme="kaiming_normal",
        init_fan_mode="fan_out",
        init_nonlinearity="linear",
        n_layer=2,
        n_embd=256,
        n_head=4,
        vocab_size=V,
        n_positions=T,
    )
    w = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])  # fan_out 1024
    assert abs(w.std().item() / math.sqrt(1 / 1024) - 1) < 0.02


def test_qkv_initialized_as_three_square_projections():
    """Xavier on fused c_attn (d -> 3d) would give 2/(4d); split Q/K/V gives 2/(2d) = 1/d."""
    model = build_model(
        init_scheme="xavier_normal", n_layer=4, n_embd=256, n_head=4, vocab_size=V, n_positions=T
    )
    w = torch.cat([b.attn.c_attn.weight.flatten() for b in model.transformer.h])
    assert abs(w.var().item() * 256 - 1) < 0.02


def test_save_stock_reload_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        init_scheme="kaiming_uniform", n_layer=2, n_embd=64, n_head=2, vocab_size=V, n_positions=T
    )
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2"
    assert cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["init_scheme"] == "kaiming_uniform" and cfg["init_fan_mode"] == "fan_in"
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()  # a freshly built model is in train mode (dropout on)
    with torch.no_grad():
        ours = model(ids).logits
    # a process that never imports hf_init
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "assert type(m).__name__ == 'GPT2LMHeadModel', type(m)\n"
        "assert 'hf_init' not in sys.modules\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        "with torch.no_grad(): torch.save(m(ids).logits, sys.argv[1])\n"
    )
    torch.save(ids, tmp_path / "ids.pt")
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(out), ours)


def test_from_pretrained_does_not_reinitialize(tmp_path):
    from hf_init.lm.modeling import SchemeGPT2LMHeadModel

    model = build_model(
        init_scheme="normal",
        init_std=0.3,
        n_layer=2,
        n_embd=64,
        n_head=2,
        vocab_size=V,
        n_positions=T,
    )
    model.save_pretrained(tmp_path)
    again = SchemeGPT2LMHeadModel.from_pretrained(tmp_path)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"init_scheme": "he_normal"}, "he_normal"),
        ({"init_scheme": "normal", "init_std": -0.1}, "-0.1"),
        ({"init_scheme": "normal", "init_std": 0.0}, "0.0"),
        ({"init_scheme": "normal", "init_std": float("nan")}, "nan"),
        ({"init_scheme": "normal", "init_std": float("inf")}, "inf"),
        ({"init_scheme": "normal"}, "init_std"),
        ({"init_scheme": "kaiming_normal", "init_fan_mode": "fan_avg"}, "fan_avg"),
    ],
)
def test_bad_scheme_input_names_value_and_choices(kwargs, needle):
    with pytest.raises(ValueError) as err:
        make_config(n_layer=1, n_embd=32, n_head=2, vocab_size=V, **kwargs)
    msg = str(err.value)
    assert needle in msg
    if "init_scheme" in kwargs and kwargs["init_scheme"] not in SCHEMES:
        assert all(name in msg for name in SCHEMES)
    if "init_std" in kwargs:
        assert "> 0" in msg


def test_registry_std_for_mlp_layer():
    spec = WeightSpec("linear", fan_in=300, fan_out=100)
    assert get_scheme("kaiming_normal").std(spec) == pytest.approx(math.sqrt(2 / 300))
    assert get_scheme("xavier_uniform").std(spec) == pytest.approx(math.sqrt(2 / 400))
    assert get_scheme("normal").std(spec, SchemeOptions(std=0.3)) == 0.3
    with pytest.raises(ValueError, match="init_std"):
        get_scheme("normal").std(spec)


def test_cross_attention_weights_follow_their_roles():
    """With add_cross_attention, GPT-2 adds q_attn (d -> d), c_attn (d -> 2d, [K | V]) and
    c_proj (residual). Stock scales every attention c_proj; xavier sees K and V as d -> d."""
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = dict(n_layer=L, n_embd=D, n_head=H, vocab_size=V, n_positions=T, add_cross_attention=True)
    torch.manual_seed(0)
    stock = GPT2LMHeadModel(GPT2Config(**kw))
    ours = build_model(init_scheme="gpt2", **kw)
    for name in ("q_attn", "c_attn", "c_proj"):
        s = torch.cat(
            [getattr(b.crossattention, name).weight.flatten() for b in stock.transformer.h]
        )
        o = torch.cat(
            [getattr(b.crossattention, name).weight.flatten() for b in ours.transformer.h]
        )
        assert abs(o.std().item() / s.std().item() - 1) < 0.02, name
    c_proj = torch.cat([b.crossattention.c_proj.weight.flatten() for b in ours.transformer.h])
    assert abs(c_proj.std().item() / (0.02 / math.sqrt(2 * L)) - 1) < 0.02

    xav = build_model(init_scheme="xavier_normal", **kw)
    kv = torch.cat([b.crossattention.c_attn.weight.flatten() for b in xav.transformer.h])
    assert abs(kv.var().item() * D - 1) < 0.03  # 2/(d+d); a fused d -> 2d draw would give 2/(3d)
    deep = build_model(init_scheme="deepnet", **kw)
    q = torch.cat([b.crossattention.q_attn.weight.flatten() for b in deep.transformer.h])
    assert abs(q.var().item() * D - 1) < 0.03  # beta = 1 for queries


def test_untied_lm_head_follows_scheme():
    model = build_model(
        init_scheme="xavier_normal",
        tie_word_embeddings=False,
        n_layer=2,
        n_embd=D,
        n_head=H,
        vocab_size=4096,
        n_positions=T,
    )
    head = model.lm_head.weight  # nn.Linear (vocab, d): fan_in d, fan_out vocab
    assert head.data_ptr() != model.transformer.wte.weight.data_ptr()
    assert abs(head.std().item() / math.sqrt(2 / (D + 4096)) - 1) < 0.02


def test_resized_embedding_rows_use_the_embedding_rule():
    """resize_token_embeddings initializes the new table before attaching it: the new rows
    must still get the embedding rule (kaiming: normal(0, r)), not a fan-based one."""
    torch.manual_seed(0)
    model = build_model(
        init_scheme="kaiming_normal", n_layer=1, n_embd=D, n_head=H, vocab_size=100, n_positions=T
    )
    model.resize_token_embeddings(4000, mean_resizing=False)
    new_rows = model.transformer.wte.weight[100:]
    assert abs(new_rows.std().item() / 0.02 - 1) < 0.02


def test_from_pretrained_initializes_only_missing_weights(tmp_path):
    """Keys missing from a checkpoint are initialized by the scheme; loaded ones are kept."""
    from safetensors.torch import load_file, save_file

    from hf_init.lm.modeling import SchemeGPT2LMHeadModel

    model = build_model(
        init_scheme="normal",
        init_std=0.5,
        n_layer=2,
        n_embd=256,
        n_head=H,
        vocab_size=V,
        n_positions=T,
    )
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = "transformer.h.1.mlp.c_fc.weight"
    del weights[dropped]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    again = SchemeGPT2LMHeadModel.from_pretrained(tmp_path)
    fresh = again.transformer.h[1].mlp.c_fc.weight
    assert abs(fresh.std().item() / 0.5 - 1) < 0.02  # the scheme ran for the missing key...
    assert not torch.equal(fresh, model.transformer.h[1].mlp.c_fc.weight)  # ...with a new draw
    for name, p in again.state_dict().items():
        if name != dropped and name in weights:
            assert torch.equal(p, weights[name]), name


@pytest.mark.parametrize(
    "kwargs, needle", [({"n_layer": 0}, "n_layer"), ({"n_head": 3}, "n_head (3)")]
)
def test_bad_shape_is_one_clear_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make_config(**{"n_embd": 128, "n_head": 4, "vocab_size": V, **kwargs})


def test_causal_loss_type_survives_build_and_reload(tmp_path):
    """Trainer scales the loss by the number of targets only when the model's loss_type maps
    to the shifted causal loss; our class must set it (stock GPT2LMHeadModel does not)."""
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

    from hf_init.lm.modeling import SchemeGPT2LMHeadModel

    model = build_model(n_layer=1, n_embd=32, n_head=2, vocab_size=V, n_positions=T)
    assert LOSS_MAPPING[model.loss_type] is ForCausalLMLoss
    model.save_pretrained(tmp_path)
    assert (
        LOSS_MAPPING[SchemeGPT2LMHeadModel.from_pretrained(tmp_path).loss_type] is ForCausalLMLoss
    )


def test_scheme_options_table_matches_the_std_rules():
    """SCHEME_OPTIONS lists exactly the options that change some weight's std under each scheme."""
    from hf_init.core.schemes import ROLES, SCHEME_OPTIONS, SCHEMES, SchemeOptions, WeightSpec

    assert set(SCHEME_OPTIONS) == set(SCHEMES)
    changed = {
        "std": 0.3,
        "initializer_range": 0.05,
        "fan_mode": "fan_out",
        "nonlinearity": "tanh",
        "gain": 3.0,
    }
    specs = [WeightSpec(role, 64, 256, n_layer=4, d_model=64, layer=1) for role in sorted(ROLES)]
    for name, scheme in SCHEMES.items():
        base = SchemeOptions(std=0.1)
        for option, value in changed.items():
            other = SchemeOptions(**{"std": 0.1, option: value})
            differs = any(scheme.std(s, base) != scheme.std(s, other) for s in specs)
            assert differs == (option in SCHEME_OPTIONS[name]), (name, option)


def test_depth_scaled_step0_records_give_each_block_its_formula_std(tmp_path):
    """A pretraining run's step-0 records (before any update): block l's attn/mlp c_proj has
    std r / sqrt(2 (l + 1)), every other block weight r; sample std against the formula within
    6 sampling standard deviations for its entry count (sqrt(1 / (2 n)) relative, normal)."""
    from conftest import PRETRAIN_TINY

    from hf_init.core.records import read_records, to_wide
    from hf_init.lm.pretrain import run

    n_layer, d = 4, 64
    out = tmp_path / "run"
    sizes = ["--n_layer", n_layer, "--n_embd", d, "--n_head", 2]
    run(
        [*map(str, PRETRAIN_TINY), *map(str, sizes), "--max_steps", "1"]
        + ["--init_scheme", "depth_scaled", "--output_dir", str(out)]
    )
    wide = to_wide(read_records(out / "variance.jsonl"))
    init = wide[wide["step"] == 0].set_index(["layer", "role"])["var"]
    n_entries = {"q": d * d, "k": d * d, "v": d * d, "attn_proj": d * d}
    n_entries |= {"mlp_fc": 4 * d * d, "mlp_proj": 4 * d * d}
    for layer in range(n_layer):
        for role, n in n_entries.items():
            want = 0.02 / math.sqrt(2 * (layer + 1)) if role.endswith("proj") else 0.02
            got = math.sqrt(init[layer, role])
            assert abs(got / want - 1) < 6 * math.sqrt(1 / (2 * n)), (layer, role, got, want)
    # run_info.json keeps the scheme's std of every block's residual writers
    stds = json.loads((out / "run_info.json").read_text())["init"]["std_by_weight"]
    assert stds["mlp_proj.3"]["scheme"] == pytest.approx(0.02 / math.sqrt(8))
    assert stds["q"]["scheme"] == 0.02 and "q.0" not in stds


def test_a_spec_without_n_layer_is_one_block():
    """A WeightSpec built without n_layer (a plain MLP layer, or a user's own weight) is one
    block: GPT-2's residual scaling is 0.02 / sqrt(2 * 1), and no block index but 0 exists."""
    spec = WeightSpec("attn_proj", 64, 64, d_model=64)
    assert spec.n_layer == 1
    assert get_scheme("gpt2").std(spec) == pytest.approx(0.02 / math.sqrt(2))
    with pytest.raises(ValueError, match="layer must be in"):
        WeightSpec("attn_proj", 64, 64, layer=1)


def test_depth_scaled_needs_the_layer_and_inspect_init_prints_every_block():
    from conftest import run_main

    spec = WeightSpec("attn_proj", 64, 64, n_layer=4, d_model=64)
    with pytest.raises(ValueError, match="layer index"):
        get_scheme("depth_scaled").std(spec)
    with pytest.raises(ValueError, match="layer must be in"):
        WeightSpec("attn_proj", 64, 64, n_layer=4, layer=4)
    rc, stdout, stderr = run_main(
        "inspect_init", "--init_scheme", "depth_scaled", "--n_layer", 3, "--n_embd", 64
    )
    assert rc == 0, stderr
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()[2:]}
    want = {
        f"{role}.{i}": 0.02 / math.sqrt(2 * (i + 1))
        for role in ("attn_proj", "mlp_proj")
        for i in range(3)
    }
    want |= {role: 0.02 for role in ("wte", "wpe", "q", "k", "v", "mlp_fc")}
    assert set(rows) == set(want)
    for weight, std in want.items():
        assert float(rows[weight][3]) == pytest.approx(std, abs=2e-6), weight
