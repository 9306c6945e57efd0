"""The one record format: writing, streaming, the long table, and the old variance.jsonl."""

import json
import math

import pytest

from hf_init.core.records import (
    STATISTICS,
    append_records,
    make_record,
    read_records,
    split_at_step,
    to_wide,
    write_records,
)

FIXTURE = "tests/fixtures/behaviour_kept/pretrain_variance.jsonl"


def test_legacy_variance_lines_become_records():
    lines = [json.loads(l) for l in open(FIXTURE)]
    frame = read_records(FIXTURE)
    # every non-null legacy number appears once, under the (role, statistic) its name spells
    names = {"": "var", "_mean": "mean", "_rms": "rms"}
    expected = {}
    for line in lines:
        for role in ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj"):
            for suffix, stat in names.items():
                expected[(line["step"], line["layer"], role, stat)] = line[role + suffix]
            expected[(line["step"], line["layer"], role, "grad_var")] = line["grad_" + role]
            expected[(line["step"], line["layer"], role, "grad_rms")] = line[
                "grad_" + role + "_rms"
            ]
    assert len(frame) == len(expected)
    for row in frame.itertuples():
        want = expected[(row.step, row.layer, row.role, row.statistic)]
        assert (want is None and math.isnan(row.value)) or row.value == want


def test_round_trip_keys_nulls_and_wide(tmp_path):
    recs = [
        make_record(0, 1, "linear", {"act_var": 2.5, "preact_var": float("inf")}, std=0.1, seed=3),
        make_record(5, None, None, {"train_loss": 1.25}, std=0.1, seed=3),
    ]
    path = write_records(tmp_path / "r.jsonl", recs)
    assert json.loads(path.read_text().splitlines()[0])["preact_var"] is None  # strict JSON
    frame = read_records(path, scheme="s")
    assert list(frame.columns) == [
        "scheme",
        "std",
        "seed",
        "step",
        "layer",
        "role",
        "statistic",
        "value",
    ]
    assert len(frame) == 3 and set(frame["scheme"]) == {"s"}
    wide = to_wide(frame)
    assert len(wide) == 2
    row = wide[wide["role"] == "linear"].iloc[0]
    assert row["act_var"] == 2.5 and math.isnan(row["preact_var"]) and row["layer"] == 1


def test_append_streams_whole_lines_and_torn_tail_is_skipped(tmp_path):
    path = tmp_path / "v.jsonl"
    with open(path, "w") as f:
        assert (
            append_records(
                f, [make_record(0, 0, "q", {"var": 1.0}), make_record(0, 1, "q", {"var": 2.0})]
            )
            == 2
        )
    with open(path, "a") as f:
        f.write('{"step": 1, "layer": 0, "ro')  # a crash mid-line
    frame = read_records(path)
    assert frame["value"].tolist() == [1.0, 2.0]
    with open(path, "a") as f:
        f.write('\n{"step": 2, "layer": 0, "role": "q", "var": 3.0}\n')
    with pytest.raises(ValueError, match=r"v.jsonl:3"):
        read_records(path)


def test_unknown_statistic_and_key_clash_refused():
    with pytest.raises(KeyError, match="STATISTICS"):
        make_record(0, 0, "q", {"variance": 1.0})
    with pytest.raises(KeyError, match="collide"):
        make_record(0, 0, "q", {"var": 1.0}, mean=3)
    assert all(isinstance(v, str) and v for v in STATISTICS.values())


def test_split_at_step_keeps_lines_as_written(tmp_path):
    lines = [
        '{"step": 3, "layer": 0, "role": "q", "var": 1.0}\n',
        "\n",
        '{"step": null, "layer": null, "role": null, "loss": 2.0}\n',
        '{"step": 5, "layer": 0, "role": "q", "var": 3.0}\n',
        '{"step": 4, "layer": 0, "role": "q", "var":   4.0}\n',  # spacing kept as written
        '{"step": 6, "la',
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(lines))
    up_to, after = split_at_step(path, 4)
    assert up_to == [lines[0], lines[2], lines[4]]  # blank line dropped, no-step record kept
    assert after == [lines[3], lines[5] + "\n"]  # later and torn, each ending in a newline
    assert split_at_step(tmp_path / "missing.jsonl", 4) == ([], [])
