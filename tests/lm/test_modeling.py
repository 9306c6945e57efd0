"""The init override (hf_init/lm/modeling.py) as scripts/inspect_init.py reports it, against the
stock GPT-2 parameters sliced by hand and the textbook formulas."""

import math

import pytest
from conftest import run_main


@pytest.mark.parametrize("scheme", ["xavier_normal", "kaiming_normal"])
def test_inspect_init_table_matches_hand_computation(scheme):
    """Measured std: population std of the stock GPT-2 parameters of the same seeded model, sliced
    here by hand (Conv1D stores (in, out): Q, K, V are the first, second, third n_embd columns of
    c_attn); scheme std: the textbook formula."""
    import torch

    from hf_init.lm.modeling import build_model

    L, d, V = 2, 32, 100
    rc, stdout, stderr = run_main(
        "inspect_init",
        "--init_scheme",
        scheme,
        "--n_layer",
        L,
        "--n_embd",
        d,
        "--n_head",
        2,
        "--vocab_size",
        V,
        "--seed",
        3,
    )
    assert rc == 0, stderr
    table = {}
    for line in stdout.splitlines()[2:]:
        role, fan_in, fan_out, measured, scheme_std, ratio = line.split()
        table[role] = (int(fan_in), int(fan_out), float(measured), float(scheme_std), float(ratio))

    torch.manual_seed(3)
    model = build_model(init_scheme=scheme, n_layer=L, n_embd=d, n_head=2, vocab_size=V)
    blocks = model.transformer.h
    cat = lambda ws: torch.cat([w.detach().double().reshape(-1) for w in ws])  # noqa: E731
    pieces = {
        "q": cat(b.attn.c_attn.weight[:, :d] for b in blocks),
        "k": cat(b.attn.c_attn.weight[:, d : 2 * d] for b in blocks),
        "v": cat(b.attn.c_attn.weight[:, 2 * d :] for b in blocks),
        "attn_proj": cat(b.attn.c_proj.weight for b in blocks),
        "mlp_fc": cat(b.mlp.c_fc.weight for b in blocks),
        "mlp_proj": cat(b.mlp.c_proj.weight for b in blocks),
        "wte": cat([model.transformer.wte.weight]),
        "wpe": cat([model.transformer.wpe.weight]),
    }
    fans = {
        "q": (d, d),
        "k": (d, d),
        "v": (d, d),
        "attn_proj": (d, d),
        "mlp_fc": (d, 4 * d),
        "mlp_proj": (4 * d, d),
    }
    assert set(table) == set(pieces)
    for role, w in pieces.items():
        fan_in, fan_out, measured, scheme_std, ratio = table[role]
        assert measured == pytest.approx(w.std(unbiased=False).item(), abs=1.5e-6), role
        if role in fans:
            assert (fan_in, fan_out) == fans[role]
            a, b = fans[role]
            hand = math.sqrt(2 / (a + b)) if scheme == "xavier_normal" else math.sqrt(2 / a)
        else:  # embeddings keep GPT-2's initializer_range
            hand = 0.02
        assert scheme_std == pytest.approx(hand, abs=1.5e-6), role
        assert ratio == pytest.approx(w.std(unbiased=False).item() / hand, abs=1.5e-4), role


def test_a_fused_weight_splits_only_as_a_conv1d_of_whole_blocks():
    """A fused (d, 3d) Conv1D weight splits into three (d, d) views of its column blocks; the same
    entry as an nn.Linear, a 1-D tensor or columns that are not a multiple of 3 is one error."""
    import torch

    from hf_init.lm.families import Weight

    fused = Weight("attn.c_attn", ("q", "k", "v"))
    w = torch.arange(4 * 12, dtype=torch.float32).reshape(4, 12)
    parts = fused.split(w)
    assert list(parts) == ["q", "k", "v"]
    for i, role in enumerate("qkv"):
        assert torch.equal(parts[role], w[:, 4 * i : 4 * (i + 1)])
        assert parts[role].data_ptr() == w[:, 4 * i].data_ptr()  # a view
    for entry, tensor in (
        (Weight("attn.c_attn", ("q", "k", "v"), layout="linear"), w),
        (fused, torch.zeros(12)),
        (fused, torch.zeros(4, 10)),
    ):
        with pytest.raises(ValueError, match="expected a"):
            entry.split(tensor)
    alone = Weight("mlp.c_fc", ("fc",))
    assert alone.split(w)["fc"] is w


def test_layer_norms_are_reset_to_gain_one_and_bias_zero():
    """_init_weights on a LayerNorm whose entries hold other values (an empty or meta-device
    allocation): weight 1 and bias 0, whatever the init scheme."""
    import torch

    from hf_init.lm.modeling import build_model

    model = build_model(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                        init_scheme="xavier_normal")  # fmt: skip
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3  # ln_1, ln_2, ln_f
    for m in norms:
        m.weight.data.fill_(7.0)
        m.bias.data.fill_(5.0)
        model._init_weights(m)
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))


@pytest.mark.parametrize("n_inner", [None, 48])
def test_gpt2_dims_read_the_mlp_width_stock_gpt2_builds(n_inner):
    """The family table's GPT-2 dims (which every scheme's MLP fans come from) against the model
    stock transformers builds from the same config: n_inner None means 4 x n_embd there too."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_init.lm.families import GPT2

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_inner=n_inner, vocab_size=64)
    stock = GPT2LMHeadModel(config)
    dims = GPT2.dims(config)
    assert dims.n_inner == stock.transformer.h[0].mlp.c_fc.weight.shape[1]
    assert dims.head_dim == stock.transformer.h[0].attn.head_dim


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_bos_and_eos_are_the_last_token_of_the_vocabulary(model_type):
    """GPT-2's tokenizer puts <|endoftext|> (bos and eos) at the last id, 50256; a config of a
    smaller vocabulary keeps it the last id, inside the vocabulary, unless it is given."""
    from hf_init.lm.modeling import make_config

    config = make_config("gpt2", model_type=model_type, vocab_size=96, n_layer=1, n_embd=16,
                         n_head=2)  # fmt: skip
    assert config.bos_token_id == config.eos_token_id == 95
    assert make_config("gpt2", model_type=model_type).eos_token_id == 50256
    given = make_config("gpt2", model_type=model_type, vocab_size=96, eos_token_id=3)
    assert given.eos_token_id == 3 and given.bos_token_id == 95


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_a_resized_untied_head_is_initialized_as_the_lm_head(model_type):
    """resize_token_embeddings(mean_resizing=False) initializes the new (untied) head before it is
    attached and before config.vocab_size changes: the head has the new vocabulary's rows while
    the config still says the old one. It must still be looked up as the family's lm_head (its
    role, fans (d, new vocab)), and its rows drawn with xavier's sqrt(2 / (d + new vocab))."""
    import torch

    from hf_init.lm.modeling import build_model

    torch.manual_seed(0)
    d, old, new = 64, 100, 4000
    model = build_model(
        init_scheme="xavier_normal",
        model_type=model_type,
        n_layer=1,
        n_embd=d,
        n_head=4,
        vocab_size=old,
        n_positions=16,
        tie_word_embeddings=False,
    )
    seen = []
    lookup = model._weight_of

    def spy(module):
        found = lookup(module)
        seen.append((type(module).__name__, found and found[0].parts))
        return found

    model._weight_of = spy
    model.resize_token_embeddings(new, mean_resizing=False)
    assert ("Linear", ("lm_head",)) in seen
    head = model.get_output_embeddings().weight
    assert head.shape == (new, d)
    assert head[old:].std().item() == pytest.approx(math.sqrt(2 / (d + new)), rel=0.03)
