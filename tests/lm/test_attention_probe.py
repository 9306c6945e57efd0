"""The attention probe against independent computations: stock GPT-2's eager attention
probabilities (output_attentions) and a hand-written q.k from the hidden states and weights."""

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_init.core.records import read_records
from hf_init.lm.attention_probe import (
    AttentionProbeCallback,
    attention_records,
    attention_scaling,
    attention_statistics,
    logit_statistics,
    probe_batch,
)
from hf_init.lm.recorders import LearningRateCallback
from hf_init.lm.sinks import AttentionTensorBoardSink, JsonlSink, WholeModelTensorBoardSink


def stock_model(scale_by_layer=False, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=3,
        n_embd=24,
        n_head=3,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        scale_attn_by_inverse_layer_idx=scale_by_layer,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # larger weights than GPT-2's 0.02 so attention is far from uniform
        for block in model.transformer.h:
            block.attn.c_attn.weight.normal_(0, 0.5)
            block.attn.c_attn.bias.normal_(0, 0.3)
    return model.train()


def reference(model, ids):
    """Per layer and head: (std of the causal logits, mean entropy of eager attention
    probabilities), in numpy, from the model's hidden states, ln_1 and c_attn weights, and its
    output_attentions."""
    model.eval()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    cfg = model.config
    dh = cfg.n_embd // cfg.n_head
    t = ids.shape[1]
    rows = []
    for layer, block in enumerate(model.transformer.h):
        with torch.no_grad():
            x = block.ln_1(out.hidden_states[layer]).double().numpy()
        w = block.attn.c_attn.weight.detach().double().numpy()
        b = block.attn.c_attn.bias.detach().double().numpy()
        qkv = x @ w + b
        scale = 1 / math.sqrt(dh) / ((layer + 1) if cfg.scale_attn_by_inverse_layer_idx else 1)
        probs = out.attentions[layer].double().numpy()  # (B, H, T, T), zeros above the diagonal
        heads = []
        for h in range(cfg.n_head):
            q = qkv[..., h * dh : (h + 1) * dh]
            k = qkv[..., cfg.n_embd + h * dh : cfg.n_embd + (h + 1) * dh]
            logits = np.einsum("bid,bjd->bij", q, k) * scale
            causal = np.tril(np.ones((t, t), bool))
            std = logits[:, causal].std()  # population std over every causal entry of every block
            p = probs[:, h]
            with np.errstate(divide="ignore", invalid="ignore"):
                ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
            heads.append((std, ent.mean()))
        rows.append(heads)
    return np.array(rows)


@pytest.mark.parametrize("scale_by_layer", [False, True])
def test_attention_statistics_match_stock_eager_attention(scale_by_layer):
    model = stock_model(scale_by_layer)
    ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    got = attention_statistics(model, ids).numpy()
    assert model.training  # the training mode is restored
    want = reference(model, ids)
    assert got.shape == (3, 3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # far from trivial: not uniform attention, heads differ
    uniform = np.mean([math.log(i + 1) for i in range(12)])
    assert (got[..., 1] < uniform - 0.05).all()
    assert np.ptp(got[0, :, 0]) > 0.01


def test_logit_statistics_on_known_logits():
    # one head, T = 2: q.k are chosen so the causal logits are 0 (t=0), and (a, b) at t=1
    a, b = 1.0, 3.0
    q = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    k = torch.tensor([[[[a, 5.0], [b, -2.0]]]])  # q.k: [[a, b], [a, b]]; causal entries: a, a, b
    std, ent = logit_statistics(q, k, scaling=1.0)
    assert std.item() == pytest.approx(np.std([a, a, b]))
    p = np.exp([a, b]) / np.exp([a, b]).sum()
    assert ent.item() == pytest.approx((0.0 + -(p * np.log(p)).sum()) / 2)


def test_records_and_probe_batch():
    stats = torch.tensor([[[1.0, 2.0], [3.0, float("nan")]]])
    recs = attention_records(7, stats)
    assert recs == [
        {"head": 0, "step": 7, "layer": 0, "role": "attn", "logit_std": 1.0, "entropy": 2.0},
        {"head": 1, "step": 7, "layer": 0, "role": "attn", "logit_std": 3.0, "entropy": None},
    ]
    ds = [{"input_ids": [i, i + 1]} for i in range(5)]
    assert probe_batch(iter(ds), 3).tolist() == [[0, 1], [1, 2], [2, 3]]
    with pytest.raises(ValueError, match="at least one held-out block"):
        probe_batch(iter([]), 3)


class ListSink:
    def __init__(self):
        self.steps = []

    def write(self, records):
        self.steps.append(records)

    def close(self):
        pass


class Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_probe_and_lr_recorders_in_a_trainer_record_at_the_record_steps(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = stock_model()
    data = [
        {"input_ids": torch.randint(0, 50, (12,), generator=torch.Generator().manual_seed(i))}
        for i in range(32)
    ]
    for row in data:
        row["labels"] = row["input_ids"]
    probe = torch.stack([r["input_ids"] for r in data[:4]])
    sink, lr_sink, writer = ListSink(), ListSink(), Writer()
    jsonl = JsonlSink(tmp_path / "variance.jsonl")
    probe_sinks = [sink, jsonl, AttentionTensorBoardSink(writer, owns_writer=False)]
    lr_sinks = [lr_sink, jsonl, WholeModelTensorBoardSink(writer, owns_writer=False)]
    callbacks = [
        AttentionProbeCallback(probe, probe_sinks, every=3),
        LearningRateCallback(lr_sinks, every=3),
    ]
    lr, warmup, steps = 1e-2, 4, 7
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=lr,
        warmup_steps=warmup,
        lr_scheduler_type="linear",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()
    assert [recs[0]["step"] for recs in sink.steps] == [0, 3, 6, 7]
    assert [recs[0]["step"] for recs in lr_sink.steps] == [0, 3, 6, 7]

    # HF linear schedule with warmup, by hand: update s (1-based) uses the lr of scheduler step s-1
    def sched(i):
        return lr * (i / warmup if i < warmup else max(0.0, (steps - i) / (steps - warmup)))

    lrs = {r["step"]: r["learning_rate"] for recs in lr_sink.steps for r in recs}
    assert lrs == pytest.approx({0: sched(0), 3: sched(2), 6: sched(5), 7: sched(6)})
    # the last step's attention records are the model's attention on the probe batch, now
    final = [r for r in sink.steps[-1] if r["role"] == "attn"]
    ref = reference(model, probe)
    assert [r["logit_std"] for r in final] == pytest.approx(ref[..., 0].ravel(), rel=1e-5)
    # through the record reader: attention and lr next to each other
    table = read_records(tmp_path / "variance.jsonl")
    assert set(table["statistic"]) == {"logit_std", "entropy", "learning_rate"}
    assert len(table[table["statistic"] == "logit_std"]) == 4 * 3 * 3
    tags = {t for t, _, _ in writer.scalars}
    assert {
        "attn_logit_std/layer_00",
        "attn_entropy/layer_02",
        "attn_entropy_heads/layer_01_head_2",
        "study/learning_rate",
    } <= tags
    mean0 = [v for t, v, s in writer.scalars if t == "attn_logit_std/layer_00" and s == 7][0]
    assert mean0 == pytest.approx(ref[0, :, 0].mean(), rel=1e-5)


def test_the_flags_defaults_are_the_probes_documented_defaults():
    """hf_init/lm/args.py writes the probe's defaults as literals (importing the probe module
    would import torch before --help): they must stay the module's one block every 20 steps,
    the setting docs/benchmarks.md measured."""
    from hf_init.lm.args import RunArguments
    from hf_init.lm.attention_probe import PROBE_BLOCKS, PROBE_STEPS

    run = RunArguments()
    assert (run.attention_probe_blocks, run.attention_probe_steps) == (PROBE_BLOCKS, PROBE_STEPS)
    assert (PROBE_BLOCKS, PROBE_STEPS) == (1, 20)


@pytest.mark.parametrize("scale_weights", [True, False])
@pytest.mark.parametrize("by_layer", [True, False])
def test_attention_scaling_without_the_attribute_is_stock_gpt2s(scale_weights, by_layer):
    """An attention module without ``scaling`` (older transformers): the factor recomputed from
    its config flags equals the one stock GPT2Attention precomputes (layer 2, d_head 16)."""
    from types import SimpleNamespace

    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    cfg = GPT2Config(n_embd=64, n_head=4, scale_attn_weights=scale_weights,
                     scale_attn_by_inverse_layer_idx=by_layer)  # fmt: skip
    stock = GPT2Attention(cfg, layer_idx=2)
    bare = SimpleNamespace(
        head_dim=stock.head_dim,
        scale_attn_weights=stock.scale_attn_weights,
        scale_attn_by_inverse_layer_idx=stock.scale_attn_by_inverse_layer_idx,
        layer_idx=stock.layer_idx,
    )
    assert attention_scaling(bare) == pytest.approx(stock.scaling, rel=1e-15)
    assert attention_scaling(stock) == stock.scaling
