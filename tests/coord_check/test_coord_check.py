"""The coord check against independent computations: every RMS against a hand computation (numpy,
float64) from the stock GPT-2's hidden states and weights, at initialization and after an update;
the step-0 width scaling against theory (the tied embedding's std x sqrt(width) for the output
logits, the variance recursion of hf_init.theory for the blocks); the slope table against the
closed-form least-squares slope; the script's outputs, its refusal and bad input in one line."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_main
from transformers import GPT2LMHeadModel

from hf_init.coord_check.study import (
    GPT2Coord,
    default_schemes,
    slope_table,
    slopes_markdown,
    summary_lines,
    token_batches,
    train_and_record,
)
from hf_init.core.records import make_record, read_records, write_records
from hf_init.core.schemes import SchemeOptions, WeightSpec, get_scheme, scheme_std
from hf_init.lm.study import parse_scheme


class Shape:
    """The fields of CoordCheckArguments that GPT2Coord.build reads."""

    def __init__(self, n_layer=2, head_dim=8, seq_len=12):
        self.n_layer, self.head_dim, self.seq_len = n_layer, head_dim, seq_len


def stock_copy(model) -> GPT2LMHeadModel:
    """Stock transformers GPT-2 holding ``model``'s current weights."""
    stock = GPT2LMHeadModel(model.config)
    stock.load_state_dict(model.state_dict())
    return stock.eval()


def rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def hand_rms(stock: GPT2LMHeadModel, ids: torch.Tensor) -> tuple[dict, float]:
    """({(role, layer): RMS}, loss) of a forward pass computed in numpy float64 from the weights,
    each block checked against the stock model's hidden states (``output_hidden_states``)."""
    with torch.no_grad():
        out = stock(ids, output_hidden_states=True)
    cfg = stock.config
    d, heads, eps = cfg.n_embd, cfg.n_head, cfg.layer_norm_epsilon
    dh = d // heads
    b, t = ids.shape
    hidden = [h.double().numpy() for h in out.hidden_states]

    def wb(module):
        return module.weight.detach().double().numpy(), module.bias.detach().double().numpy()

    def layer_norm(x, module):
        g, beta = wb(module)
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * g + beta

    def gelu_tanh(z):  # GPT-2's gelu_new
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))

    wte = stock.transformer.wte.weight.detach().double().numpy()
    wpe = stock.transformer.wpe.weight.detach().double().numpy()
    x = wte[ids.numpy()] + wpe[np.arange(t)]
    np.testing.assert_allclose(x, hidden[0], atol=1e-6)
    expected = {("embeddings", None): rms(x)}
    causal = np.tril(np.ones((t, t), bool))
    for i, block in enumerate(stock.transformer.h):
        w, bias = wb(block.attn.c_attn)
        qkv = layer_norm(x, block.ln_1) @ w + bias
        q, k, v = (
            qkv[..., j * d : (j + 1) * d].reshape(b, t, heads, dh).transpose(0, 2, 1, 3)
            for j in range(3)
        )
        logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
        expected["attn_logits", i] = rms(logits[..., causal])
        p = np.exp(np.where(causal, logits, -np.inf) - logits.max(-1, keepdims=True))
        ctx = (p / p.sum(-1, keepdims=True)) @ v
        w, bias = wb(block.attn.c_proj)
        x = x + ctx.transpose(0, 2, 1, 3).reshape(b, t, d) @ w + bias
        (w1, b1), (w2, b2) = wb(block.mlp.c_fc), wb(block.mlp.c_proj)
        mlp = gelu_tanh(layer_norm(x, block.ln_2) @ w1 + b1) @ w2 + b2
        expected["mlp_out", i] = rms(mlp)
        x = x + mlp
        expected["residual", i] = rms(x)
        if i + 1 < len(stock.transformer.h):  # the last entry has ln_f applied
            np.testing.assert_allclose(x, hidden[i + 1], atol=1e-5)
    final = layer_norm(x, stock.transformer.ln_f)
    np.testing.assert_allclose(final, hidden[-1], atol=1e-5)
    logits = final @ wte.T  # tied head
    np.testing.assert_allclose(logits, out.logits.double().numpy(), atol=1e-4)
    expected["output_logits", None] = rms(logits)
    shifted, targets = logits[:, :-1], ids.numpy()[:, 1:]
    top = shifted.max(-1, keepdims=True)
    log_z = np.log(np.exp(shifted - top).sum(-1)) + top[..., 0]
    loss = float(np.mean(log_z - np.take_along_axis(shifted, targets[..., None], -1)[..., 0]))
    return expected, loss


@pytest.mark.parametrize("scheme", ["gpt2", "kaiming_normal"])
def test_rms_match_hand_computation_at_init_and_after_an_update(scheme):
    vocab = 64
    batches = torch.randint(0, vocab, (2, 3, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = GPT2Coord.build(scheme, None, 32, Shape(), vocab)
    at_init = stock_copy(model)
    records = train_and_record(
        model, GPT2Coord.hook, batches, 1e-2, scheme=scheme, width=32, seed=0
    )
    after = stock_copy(model)  # the weights of step 1: one update, none after the last record
    w0 = at_init.transformer.h[0].attn.c_attn.weight
    assert not torch.equal(w0, after.transformer.h[0].attn.c_attn.weight)
    for step, stock in ((0, at_init), (1, after)):
        expected, loss = hand_rms(stock, batches[step])
        got = {
            (r["role"], r["layer"]): r["rms"] for r in records if r["step"] == step and "rms" in r
        }
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-5), (step, key)
        (loss_record,) = [r for r in records if r["step"] == step and "loss" in r]
        assert loss_record["loss"] == pytest.approx(loss, rel=1e-5)
        assert all(r["scheme"] == scheme and r["width"] == 32 and r["seed"] == 0 for r in records)
    assert {r["step"] for r in records} == {0, 1}


def _fit(widths, values) -> float:
    """Least-squares slope of ln value against ln width, closed form."""
    x, y = np.log(widths), np.log(values)
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def test_step0_width_scaling_follows_theory():
    """At step 0, for every shipped scheme, widths 64..256 (two blocks, heads of 16; RMS over two
    seeds' models), random tokens of a 4096-word vocabulary (so that the tied head's self term
    d/(2V) stays below 4 %):

    - output logits: LayerNorm leaves each position with ||x||^2 = d, so a logit x.w_j of the tied
      N(0, s^2) embedding has RMS s sqrt(d): slope 1/2 where s is GPT-2's fixed 0.02 (gpt2,
      normal:0.02, xavier_*, kaiming_*), 0 where s ~ d^-1/2 (small_init, deepnet);
    - embeddings: RMS sqrt(s_wte^2 + s_wpe^2): flat for a fixed 0.02, slope -1/2 for d^-1/2;
    - the residual stream after each block is flat for the fan-scaled schemes (xavier_*,
      kaiming_*, small_init): each branch adds an amount set by fan x std^2, fixed; with a fixed
      0.02 (gpt2, normal:0.02) the attention logits grow as the width (slope 1); under every
      scheme, residual, attention logits and MLP output follow the slopes of the variance
      recursion (hf_init.theory.recursions.gpt2_residual_variance) within 0.1.
    """
    from hf_init.theory.recursions import gpt2_residual_variance, gpt2_scheme_stds

    widths, vocab, n_layer, t = (64, 128, 256), 4096, 2, 32
    ids = torch.randint(0, vocab, (1, 4, t), generator=torch.Generator().manual_seed(0))
    shape = Shape(n_layer=n_layer, head_dim=16, seq_len=t)
    for spec in default_schemes():
        name, std = parse_scheme(spec)
        if get_scheme(name).per_layer:
            continue  # the GPT-2 recursion takes one std per role, not one per block
        options = SchemeOptions(std=std)
        measured, predicted = {}, {}
        for width in widths:
            squares = {}  # mean square over the seeds' models
            for seed in range(2):
                torch.manual_seed(seed)
                model = GPT2Coord.build(name, std, width, shape, vocab)
                for r in train_and_record(model, GPT2Coord.hook, ids, 1e-3, scheme=spec):
                    if "rms" in r:
                        squares.setdefault((r["role"], r["layer"]), []).append(r["rms"] ** 2)
            for key, values in squares.items():
                measured.setdefault(key, []).append(math.sqrt(np.mean(values)))
            s_wte = scheme_std(name, WeightSpec("wte", vocab, width, n_layer, width), options)
            s_wpe = scheme_std(name, WeightSpec("wpe", t, width, n_layer, width), options)
            predicted.setdefault(("output_logits", None), []).append(s_wte * math.sqrt(width))
            predicted.setdefault(("embeddings", None), []).append(math.hypot(s_wte, s_wpe))
            stds, _ = gpt2_scheme_stds(
                name, n_layer, width, vocab_size=vocab, n_positions=t, std=std
            )
            theory = gpt2_residual_variance(stds, n_layer, width, t)
            for i in range(n_layer):
                predicted.setdefault(("residual", i), []).append(theory.residual[i + 1] ** 0.5)
                predicted.setdefault(("attn_logits", i), []).append(theory.score_var[i] ** 0.5)
                predicted.setdefault(("mlp_out", i), []).append(theory.mlp_add[i] ** 0.5)
        fixed_embedding = name not in ("small_init", "deepnet")
        for key in (("output_logits", None), ("embeddings", None)):
            np.testing.assert_allclose(
                measured[key], predicted[key], rtol=0.05, err_msg=f"{spec} {key}"
            )
        out_slope = _fit(widths, measured["output_logits", None])
        assert out_slope == pytest.approx(0.5 if fixed_embedding else 0.0, abs=0.05), spec
        emb_slope = _fit(widths, measured["embeddings", None])
        assert emb_slope == pytest.approx(0.0 if fixed_embedding else -0.5, abs=0.05), spec
        for i in range(n_layer):
            if name.startswith(("xavier", "kaiming")) or name == "small_init":
                assert abs(_fit(widths, measured["residual", i])) < 0.1, (spec, i)
            if name in ("gpt2", "normal"):  # q, k coordinates of variance d 0.02^2: logits ~ d
                assert _fit(widths, measured["attn_logits", i]) == pytest.approx(1, abs=0.05)
            for role in ("residual", "attn_logits", "mlp_out"):
                got, want = _fit(widths, measured[role, i]), _fit(widths, predicted[role, i])
                assert got == pytest.approx(want, abs=0.1), (spec, role, i)


def test_slope_table_is_the_least_squares_slope_per_seed(tmp_path):
    widths = (64, 128, 256, 512)
    exponents = {"flat_one": 0.05, "grows_one": 0.5, "shrinks_one": -0.3}
    noise = np.random.default_rng(0).normal(0, 0.02, size=(3, len(widths)))
    records = []
    for role_index, (name, a) in enumerate(exponents.items()):
        for seed in range(3):
            for j, w in enumerate(widths):
                value = 0.7 * w**a * math.exp(noise[seed, j] * (role_index + 1))
                records.append(
                    make_record(2, 0, name, {"rms": value}, scheme="s", width=w, seed=seed)
                )
    records.append(make_record(2, None, "zero", {"rms": 0.0}, scheme="s", width=64, seed=0))
    records.append(make_record(2, None, "zero", {"rms": 1.0}, scheme="s", width=128, seed=0))
    frame = read_records(write_records(tmp_path / "r.jsonl", records))
    rows = {r["role"]: r for r in slope_table(frame, threshold=0.1)}
    for role_index, (name, a) in enumerate(exponents.items()):
        per_seed = [
            _fit(
                widths,
                [
                    0.7 * w**a * math.exp(noise[s, j] * (role_index + 1))
                    for j, w in enumerate(widths)
                ],
            )
            for s in range(3)
        ]
        row = rows[name]
        assert row["slope"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert row["slope_sem"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(3), rel=1e-9)
        assert row["verdict"] == name.split("_")[0]
        assert (row["layer"], row["step"]) == (0, 2)
        for key, j in (("rms_min_width", 0), ("rms_max_width", len(widths) - 1)):
            mean_rms = np.mean([0.7 * widths[j] ** a * math.exp(noise[s, j] * (role_index + 1))
                                for s in range(3)])  # fmt: skip
            assert row[key] == pytest.approx(mean_rms, rel=1e-12), key
    assert rows["zero"]["verdict"] == "n/a" and rows["zero"]["layer"] is None
    # two seeds are enough for a standard error, one seed has none
    for seeds in (2, 1):
        few = frame[frame["seed"] < seeds]
        row = {r["role"]: r for r in slope_table(few, threshold=0.1)}["grows_one"]
        per_seed = [
            _fit(widths, [0.7 * w**0.5 * math.exp(noise[s, j] * 2) for j, w in enumerate(widths)])
            for s in range(seeds)
        ]
        if seeds == 2:
            assert row["slope_sem"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(2))
        else:
            assert math.isnan(row["slope_sem"]) and row["slope"] == pytest.approx(per_seed[0])


def test_a_slope_of_exactly_the_threshold_is_not_flat():
    """|slope| < threshold is flat: at exactly 0.1 (or -0.1) the quantity grows (shrinks)."""
    from hf_init.coord_check.study import verdict

    assert [verdict(s, 0.1) for s in (0.1, -0.1, 0.0999, -0.0999, math.nan)] == [
        "grows", "shrinks", "flat", "flat", "n/a",
    ]  # fmt: skip


def test_summary_line_counts_flat_quantities_at_the_first_and_last_step():
    """Hand-made slope rows at three steps: the printed line counts the flat ones at the first
    (0) and the last (20) step, never the middle one, and names the steepest at the last step;
    the Markdown table has one column per step in order."""

    def row(role, layer, step, slope, verdict):
        return dict(scheme="s", role=role, layer=layer, step=step, slope=slope, verdict=verdict)

    rows = [
        row("residual", 0, 0, 0.01, "flat"),
        row("attn_logits", 0, 0, 0.02, "flat"),
        row("output_logits", None, 0, 0.9, "grows"),
        row("residual", 0, 10, 0.5, "grows"),  # the middle step: in no count
        row("attn_logits", 0, 10, 0.5, "grows"),
        row("output_logits", None, 10, 0.5, "grows"),
        row("residual", 0, 20, 0.03, "flat"),
        row("attn_logits", 0, 20, -0.7, "shrinks"),
        row("output_logits", None, 20, 0.4, "grows"),
    ]
    (line,) = summary_lines(rows)
    assert line.split(None, 1) == [
        "s",
        "step 0: 2/3 flat; step 20: 1/3 flat (steepest at step 20: attn_logits 0 -0.70)",
    ]
    table = slopes_markdown(rows, threshold=0.1).splitlines()
    assert "| quantity | step 0 | step 10 | step 20 |" in table
    assert "| attn_logits 0 | +0.02 flat | +0.50 grows | -0.70 shrinks |" in table


TINY = [
    "--widths", "32", "64",
    "--n_layer", "1",
    "--head_dim", "16",
    "--steps", "1",
    "--seeds", "1",
    "--schemes", "gpt2", "normal:0.02",
    "--vocab_size", "300",
    "--batch_size", "2",
    "--seq_len", "16",
]  # fmt: skip


def test_script_writes_records_slopes_and_figures_and_refuses_its_folder(tmp_path):
    out = tmp_path / "cc"
    rc, stdout, stderr = run_main("coord_check", *TINY, "--output_dir", out)
    assert rc == 0, stderr[-2000:]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    rms = [r for r in records if "rms" in r]
    assert {tuple(r) for r in rms} == {("scheme", "width", "seed", "step", "layer", "role", "rms")}
    got = {(r["scheme"], r["width"], r["step"], r["role"], r["layer"]) for r in rms}
    roles = [("embeddings", None), ("residual", 0), ("attn_logits", 0), ("mlp_out", 0)]
    roles.append(("output_logits", None))
    assert got == {
        (s, w, step, role, layer)
        for s in ("gpt2", "normal:0.02")
        for w in (32, 64)
        for step in (0, 1)
        for role, layer in roles
    }
    assert len(rms) == len(got)  # one record each, seed 0
    assert all(r["rms"] > 0 for r in rms)
    slopes = (out / "slopes.csv").read_text().splitlines()
    assert len(slopes) == 1 + 2 * len(roles) * 2
    assert (out / "figures" / "coord_check_gpt2.png").stat().st_size > 0
    assert (out / "figures" / "coord_check_normal_0.02.png").stat().st_size > 0
    assert "## normal:0.02" in (out / "slopes.md").read_text()
    assert stdout.splitlines()[-1].startswith(f"wrote {out}")

    before = (out / "records.jsonl").read_bytes()
    rc, _, stderr = run_main("coord_check", *TINY, "--output_dir", out)
    assert rc == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert "--overwrite_output_dir" in stderr
    assert (out / "records.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--widths", "64"], "at least two"),
        (["--widths", "32", "40", "--head_dim", "16"], "multiples of --head_dim"),
        (["--schemes", "nope"], "unknown init scheme"),
        (["--schemes", "normal"], "needs its std"),
        (["--schemes", "gpt2", "deepnet", "gpt2"], "names a scheme twice"),
        (["--steps", "-1"], "--steps must be >= 0"),
        (["--learning_rate", "nan"], "--learning_rate must be finite"),
        (["--model_type", "llama"], "unknown model_type"),
        (["--vocab_size", "100"], "--vocab_size must be >= 257"),
        (["--widht", "64"], "unknown argument"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, argv, message):
    rc, stdout, stderr = run_main("coord_check", *argv, "--output_dir", tmp_path / "cc")
    assert rc == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert not (tmp_path / "cc").exists()


def test_log_axes_centre_the_values_and_span_at_least_the_widths():
    """The y range is centred (in log) on the values' min and max and spans at least as many
    e-folds as the widths, times 1.1: a flat line stays inside and looks flat, a steep one fits."""
    import math

    from hf_init.coord_check.plots import log_axes
    from hf_init.core.figures import pyplot

    plt = pyplot()
    for values, span in (((0.5, 0.6), math.log(8)), ((1e-3, 1e2), math.log(1e5))):
        fig, ax = plt.subplots()
        log_axes(ax, [32, 64, 128, 256], values)
        low, high = ax.get_ylim()
        mid = (math.log(values[0]) + math.log(values[1])) / 2
        assert math.log(low) == pytest.approx(mid - 0.55 * span, rel=1e-9)
        assert math.log(high) == pytest.approx(mid + 0.55 * span, rel=1e-9)
        assert low < values[0] and values[1] < high
        plt.close(fig)


def test_the_defaults_are_the_default_run_docs_coord_check_md_reports():
    """docs/coord_check.md's figures and slope statistics come from the default run, which it
    states as 9 schemes x widths 64..512 x 3 seeds, 2 blocks, heads of 32, 5 steps, batches of 8
    windows of 64 tokens, a BPE of 8192, AdamW at 1e-3: the flags' defaults must be those."""
    from pathlib import Path

    from hf_init.coord_check.study import CoordCheckArguments

    doc = (Path(__file__).resolve().parents[2] / "docs" / "coord_check.md").read_text()
    stated = ("9 schemes x widths 64, 128, 256, 512 x 3 seeds, 2 blocks, heads of 32, 5 steps",
              "`--seq_len` 64 tokens", "`--vocab_size` 8192", "`--batch_size` 8 windows",
              "(default 5)")  # fmt: skip
    assert all(s in " ".join(doc.split()) for s in stated)
    a = CoordCheckArguments()
    assert (len(a.schemes), a.widths, a.seeds, a.n_layer, a.head_dim, a.steps) == (
        9, [64, 128, 256, 512], 3, 2, 32, 5
    )  # fmt: skip
    assert (a.seq_len, a.vocab_size, a.batch_size, a.learning_rate) == (64, 8192, 8, 1e-3)
    assert a.threads == 1  # the timing in docs/coord_check.md: one torch thread
    # no training steps (the init only) and torch's own thread count (0) are valid values
    b = CoordCheckArguments(steps=0, threads=0)
    assert (b.steps, b.threads) == (0, 0)


def test_records_are_ordered_embeddings_then_block_by_block_then_the_output():
    """The order the records, the summary and the figure's panels follow: the embeddings first,
    then each block's quantities in ROLES order, block 0 before block 1, the output logits last."""
    import random

    from hf_init.coord_check.study import record_order

    blocks = [(role, layer) for layer in (0, 1) for role in ("residual", "attn_logits", "mlp_out")]
    want = [("embeddings", None), *blocks, ("output_logits", None)]
    shuffled = want[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(shuffled, key=record_order) == want


def test_token_batches_fit_windows_up_to_a_corpus_one_token_longer_and_refuse_as_long():
    """A corpus one token longer than seq_len has exactly one window, at its start, and every
    batch row is it; a corpus no longer than seq_len is one clear usage error."""
    from hf_init.core.cli import UsageError

    ids = np.arange(100, 109)  # 9 tokens
    got = token_batches(ids, 2, 3, 8, seed=0)
    assert got.shape == (2, 3, 8) and (got == torch.arange(100, 108)).all()
    for seq_len in (9, 10):
        with pytest.raises(UsageError, match="seq_len must be below the corpus' 9 tokens"):
            token_batches(ids, 1, 1, seq_len, seed=0)
