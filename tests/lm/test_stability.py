"""Training-stability statistics (hf_init.lm.stability) on hand-made records and results:
entropy of uniform causal attention, collapse steps, logit growth, divergence and the
Wortsman et al. learning-rate sensitivity, each checked against a hand computation."""

import math

import numpy as np
import pandas as pd
import pytest

from hf_init.core.records import make_record, read_records, write_records
from hf_init.lm import stability as S


def test_uniform_entropy_is_the_mean_of_log_t_plus_one():
    assert S.uniform_entropy(1) == 0.0
    assert S.uniform_entropy(3) == pytest.approx((math.log(1) + math.log(2) + math.log(3)) / 3)
    # the probe's own quantity: entropy of a uniform softmax over t + 1 keys, mean over t
    t = 64
    by_hand = np.mean([-(t1 * (1 / t1) * math.log(1 / t1)) for t1 in range(1, t + 1)])
    assert S.uniform_entropy(t) == pytest.approx(by_hand)


def attention_table(tmp_path, entropies, logit_stds, seed=0):
    """entropies / logit_stds: {(layer, head): values at steps 0, 10, 20, ...}."""
    recs = []
    for (layer, head), values in entropies.items():
        for i, (e, s) in enumerate(zip(values, logit_stds[layer, head])):
            stats = {"entropy": e, "logit_std": s}
            recs.append(make_record(10 * i, layer, "attn", stats, head=head))
    path = tmp_path / f"att{seed}.jsonl"
    write_records(path, recs)
    return read_records(path, scheme="s", seed=seed)


def test_collapse_step_and_logit_growth_by_hand(tmp_path):
    block = 8  # uniform entropy mean(ln 1..8) = 1.324; threshold 0.1324
    ent = {
        (0, 0): [1.3, 1.0, 0.2, 0.1],
        (0, 1): [1.3, 1.2, 1.1, 1.0],
        (1, 0): [1.3, 0.12, 0.5, 0.05],
    }
    std = {(0, 0): [0.1, 0.2, 0.3, 0.5], (0, 1): [0.1, 0.1, 0.1, 0.3], (1, 0): [0.2, 0.2, 0.2, 0.2]}
    table = attention_table(tmp_path, ent, std)
    heads = S.head_collapse(table, ["scheme", "seed"], block).set_index(["layer", "head"])
    assert heads.loc[(0, 0), "collapse_step"] == 30  # 0.1 < 0.1324; 0.2 is not
    assert math.isnan(heads.loc[(0, 1), "collapse_step"])
    assert heads.loc[(1, 0), "collapse_step"] == 10  # 0.12 < 0.1324
    assert heads.loc[(1, 0), "entropy_min"] == 0.05
    growth = S.logit_growth(table, ["scheme", "seed"]).set_index("layer")
    assert growth.loc[0, "growth"] == pytest.approx(((0.5 + 0.3) / 2) / 0.1)
    assert growth.loc[1, "growth"] == pytest.approx(1.0)


def test_divergence_by_loss_and_by_stop():
    l0 = math.log(1024)
    curve = pd.DataFrame({"step": [10, 20, 30, 40, 50], "loss": [6.9, 6.0, 5.5, 6.5, 7.2]})
    assert S.diverged(None, 7.1, l0) and S.diverged(None, float("nan"), l0)
    assert not S.diverged(None, 5.0, l0) and S.diverged(25, None, l0)
    assert S.divergence_step(None, curve, l0) == 50  # first at >= ln 1024 after the minimum (30)
    assert S.divergence_step(25, curve, l0) == 25  # stopped on non-finite values
    never = pd.DataFrame({"step": [10, 20], "loss": [7.5, 7.4]})
    assert S.divergence_step(None, never, l0) == 10


def test_lr_sensitivity_is_wortsmans_mean_gap_to_the_best_capped_at_chance():
    l0 = math.log(1024)
    rows = [  # scheme a: two seeds per rate; the last rate diverged (NaN) in one seed
        ("a", 1e-4, 6.0), ("a", 1e-4, 6.2), ("a", 1e-3, 5.0), ("a", 1e-3, 5.2),
        ("a", 1e-2, 5.5), ("a", 1e-2, float("nan")),
        ("b", 1e-4, 6.5), ("b", 1e-3, 5.4), ("b", 1e-2, 8.0),
    ]  # fmt: skip
    results = pd.DataFrame(rows, columns=["scheme", "lr", "final_loss"]).assign(chance_loss=l0)
    out = S.lr_sensitivity(results, ["scheme"]).set_index("scheme")
    a = [6.1, 5.1, (5.5 + l0) / 2]
    b = [6.5, 5.4, l0]
    assert out.loc["a", "lr_sensitivity"] == pytest.approx(np.mean(a) - 5.1)
    assert out.loc["b", "lr_sensitivity"] == pytest.approx(np.mean(b) - 5.4)
    assert out.loc["a", "best_lr"] == 1e-3 and out.loc["b", "lrs_below_chance"] == "0.0001, 0.001"


def test_collapse_before_divergence_per_run():
    keys = ["scheme", "seed"]
    runs = pd.DataFrame(
        {"scheme": ["s"] * 3, "seed": [0, 1, 2], "diverged": [True, True, False]}
    ).assign(divergence_step=[40.0, 20.0, math.nan])
    heads = pd.DataFrame(
        {"scheme": ["s"] * 4, "seed": [0, 0, 1, 2], "collapse_step": [30.0, math.nan, 30.0, 10.0]}
    )
    growth = pd.DataFrame({"scheme": ["s"] * 3, "seed": [0, 1, 2], "growth": [2.0, 3.0, 1.5]})
    out = S.run_stability(runs, heads, growth, keys).set_index("seed")
    assert out.loc[0, "collapse_before_divergence"] is True  # 30 < 40
    assert out.loc[1, "collapse_before_divergence"] is False  # 30 after 20
    assert out.loc[2, "collapse_before_divergence"] is None  # did not diverge
    assert (out.loc[0, "collapsed_heads"], out.loc[0, "heads"]) == (1, 2)
    assert out.loc[2, "max_logit_growth"] == 1.5
