"""scripts/pretrain.py end to end (a 10-step run on the built-in corpus), its summary, its bad
inputs and output-folder problems in one line, and the tokenizer check across ranks."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import PRETRAIN_TINY as TINY  # tiny model and data; the shared run is tiny_run
from conftest import free_port, run_main

from hf_init.core.cli import UsageError, parse_yaml_and_cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pretrain.py"


def run_script(*args, cwd=ROOT, timeout=300):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_ten_step_run_leaves_a_complete_run_folder(tiny_run):
    out, proc = tiny_run
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "variance.jsonl",
        "run_info.json",
        "figures/qkv_variance_vs_step.png",
        "figures/qkv_variance_heatmap.png",
    ):
        assert (out / name).is_file(), name
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "variance.jsonl").read_text().splitlines()]
    weights = [r for r in records if r["role"] not in ("attn", "stability", None)]
    keys = [
        (r["step"], r["layer"], r["role"]) for r in weights
    ]  # one record per (step, layer, role)
    assert sorted(keys) == sorted(
        (s, layer, role)
        for s in (0, 5, 10)
        for layer in range(2)
        for role in ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj")
    )
    # next to them: attention per (step, layer, head) at the probe's own steps (every 20 by
    # default: step 0 and the last step here) and the learning rate per record step
    attn = sorted((r["step"], r["layer"], r["head"]) for r in records if r["role"] == "attn")
    assert attn == sorted(
        (s, layer, head) for s in (0, 10) for layer in range(2) for head in range(2)
    )
    assert [r["step"] for r in records if "learning_rate" in r] == [0, 5, 10]
    assert (out / "figures" / "attention_vs_step.png").is_file()
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 1 and info["optimizer_steps"] == 10
    assert info["tokens_seen"] == 10 * 4 * 32
    # the run's wall time spans its training and lies inside the whole process's
    assert info["train_runtime_s"] <= info["wall_time_s"] <= proc.wall_s
    assert info["init"]["scheme"] == "xavier_normal"
    assert info["corpus"]["sha256"] and info["corpus"]["n_chars"] > 0
    assert 0.0 <= info["next_token_accuracy"] <= 1.0
    # 16 eval blocks of 32 tokens: the last position of each block has no next token
    assert info["eval_tokens"] == 16 * (32 - 1)
    assert "population variance" in proc.stdout and "perplexity" in proc.stdout
    # the spike monitor: 10 steps never fill its 128-step window, and the run says so
    assert [r["step"] for r in records if r["role"] == "stability"] == [5, 10]
    assert info["spikes"]["steps_monitored"] == 0 and info["spikes"]["score"] is None
    assert "spikes: none monitored (z > 6 against the previous 128 steps" in proc.stdout


def test_next_token_accuracy_on_hand_made_logits():
    """The Trainer hooks of scripts/pretrain.py on logits whose answer is known by hand: the
    prediction at position t is scored against the label at t + 1; label -100 is ignored."""
    import numpy as np
    import torch
    from transformers import EvalPrediction

    from hf_init.lm.pretrain import next_token_metric

    compute_metrics, preprocess = next_token_metric()
    labels = torch.tensor([[5, 1, 2, 3, 4], [7, 7, 0, -100, 6]])
    # arg-max per position; position t predicts labels[:, t + 1]
    argmax = torch.tensor(
        [
            [1, 2, 9, 4, 0],  # t=0..3 vs 1,2,3,4: right, right, wrong, right
            [7, 0, 3, 6, 6],
        ]
    )  # vs 7,0,-100,6: right, right, ignored, right
    logits = torch.nn.functional.one_hot(argmax, 10).float() * 3.0 - 1.0
    preds = preprocess(logits, labels)
    assert torch.equal(preds, argmax)
    out = compute_metrics(
        EvalPrediction(predictions=np.asarray(preds), label_ids=np.asarray(labels))
    )
    # hand count: 3 of 4 in row 0, 3 of 3 in row 1 (unshifted it would be 0/5 + 1/4)
    assert out["accuracy_tokens"] == 7
    assert out["accuracy"] == pytest.approx(6 / 7, abs=1e-12)


def test_tensorboard_has_the_qkv_curves_from_step_0(tiny_run):
    """The variance callback writes through the Trainer's TensorBoard writer, from step 0 on."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = tiny_run
    event_dirs = {p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1  # one writer: the Trainer's, no second events file
    acc = EventAccumulator(str(event_dirs.pop()), size_guidance={"scalars": 0})
    acc.Reload()
    records = [json.loads(line) for line in (out / "variance.jsonl").read_text().splitlines()]
    for layer in range(2):
        for name in "qkv":
            events = acc.Scalars(f"{name}_var/layer_{layer:02d}")
            assert [e.step for e in events] == [0, 5, 10]
            expected = {
                r["step"]: r["var"] for r in records if r["layer"] == layer and r["role"] == name
            }
            assert [e.value for e in events] == pytest.approx(
                [expected[e.step] for e in events], rel=1e-6
            )
    assert (
        "train/loss" in acc.Tags()["scalars"]
    )  # the Trainer's own logs still go to the same writer


def test_saved_model_and_tokenizer_load_with_stock_classes(tiny_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    out, _ = tiny_run
    config = json.loads((out / "config.json").read_text())
    assert (
        config["architectures"] == ["GPT2LMHeadModel"] and config["init_scheme"] == "xavier_normal"
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model) is GPT2LMHeadModel
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 300) and torch.isfinite(logits).all()
    # the last record holds the saved weights: check one Q variance against them
    last = [
        r
        for r in map(json.loads, (out / "variance.jsonl").read_text().splitlines())
        if r["role"] == "q"
    ][-1]
    w = model.transformer.h[last["layer"]].attn.c_attn.weight.detach().double()
    assert last["var"] == pytest.approx(w[:, :32].var(unbiased=False).item(), rel=1e-6)


def run_in_process(*args):
    """scripts/pretrain.py's main in this process (conftest.run_main: no interpreter start and
    torch import, seconds per call), as a CompletedProcess-like object: stderr holds what the
    script's process would print (its writes, logging handlers and warnings; see run_main), so
    whole-stderr checks hold here too. The shared tiny_run and the runs whose point is a process
    (several ranks, an installed copy) keep :func:`run_script` or their own subprocess."""
    rc, out, err = run_main("pretrain", *args)
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def assert_clean_failure(proc, *words):
    assert proc.returncode == 2, proc.returncode  # a usage error: exit status 2
    err = proc.stderr.strip()
    assert "Traceback" not in err, err[-2000:]
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err[-2000:]
    for w in words:
        assert w in last, last


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--init_scheme", "nope"], ["nope"]),
        (["--init_scheme", "normal", "--init_std", "-0.1"], ["init_std"]),
        (["--train_file", "does/not/exist.txt"], ["does/not/exist.txt"]),
    ],
)
def test_bad_flags_fail_cleanly_and_write_nothing(tmp_path, flags, words):
    out = tmp_path / "run"
    proc = run_in_process(*TINY, "--max_steps", "2", "--output_dir", out, *flags)
    assert_clean_failure(proc, *words)
    assert not out.exists()


def test_corpus_shorter_than_one_block_fails_cleanly(tmp_path):
    (tmp_path / "short.txt").write_text("too short\n")
    (tmp_path / "val.txt").write_text("also short\n")
    out = tmp_path / "run"
    proc = run_in_process(
        *TINY,
        "--block_size",
        "64",
        "--train_file",
        tmp_path / "short.txt",
        "--validation_file",
        tmp_path / "val.txt",
        "--output_dir",
        out,
    )
    assert_clean_failure(proc, "block")
    assert not out.exists()


def test_unknown_yaml_key_fails_cleanly(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("n_layer: 2\nlearning_rat: 0.001\n")
    proc = run_in_process(cfg, "--output_dir", tmp_path / "run")
    assert_clean_failure(proc, "learning_rat")
    assert not (tmp_path / "run").exists()


def test_existing_run_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "variance.jsonl").write_text('{"step": 0}\n')
    (out / "run_info.json").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run_in_process(*TINY, "--max_steps", "2", "--output_dir", out)
    assert_clean_failure(proc, "--overwrite_output_dir")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_yaml_values_are_defaults_and_flags_override(tmp_path):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_init.lm.args import ModelArguments

    cfg = tmp_path / "c.yaml"
    cfg.write_text("n_layer: 3\nlearning_rate: 3e-4\noutput_dir: from_yaml\nmax_steps: 7\n")
    parser = HfArgumentParser((ModelArguments, TrainingArguments))
    (model_args, training_args), path = parse_yaml_and_cli(parser, [str(cfg), "--max_steps", "9"])
    assert str(path) == str(cfg)
    assert model_args.n_layer == 3 and model_args.n_embd == 128  # YAML, dataclass default
    assert training_args.learning_rate == 3e-4 and isinstance(training_args.learning_rate, float)
    assert (
        training_args.max_steps == 9 and training_args.output_dir == "from_yaml"
    )  # flag wins over YAML
    with pytest.raises(UsageError, match="no_such_flag"):
        parse_yaml_and_cli(HfArgumentParser((ModelArguments,)), ["--no_such_flag", "1"])


def test_shipped_configs_only_use_known_keys():
    from hf_init.core.cli import read_yaml_config
    from hf_init.lm.args import build_parser

    known = {a.dest for a in build_parser()._actions}
    for cfg in (ROOT / "configs").glob("*.yaml"):
        if cfg.name.startswith(("pretrain", "gpt2", "llama")):
            assert set(read_yaml_config(cfg)) <= known, cfg.name


def test_variance_table_summary_on_hand_made_records(tmp_path):
    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.lm.variance import (
        half_change_steps,
        layer_spread,
        start_end_summary,
        variance_table,
    )

    # layer 0: 1 -> 2, half the change by step 10; layer 1: 2 -> 5, a third of the change by
    # step 10 (not yet half) and half by step 20
    values = {0: {0: 1.0, 10: 1.8, 20: 1.9, 30: 2.0}, 1: {0: 2.0, 10: 2.9, 20: 3.5, 30: 5.0}}
    records = [
        make_record(s, l, role, {"var": v})
        for l, row in values.items()
        for s, v in row.items()
        for role in "qkv"
    ]
    table = variance_table(
        read_records(write_records(tmp_path / "v.jsonl", records[::-1]))
    )  # order does not matter
    assert table.steps.tolist() == [0, 10, 20, 30]
    assert half_change_steps(table, "q").tolist() == [10, 20]
    rows = start_end_summary(table)
    assert rows[0]["q"] == {"start": 1.0, "end": 2.0, "ratio": 2.0, "half_change_step": 10}
    assert rows[1]["q"] == {"start": 2.0, "end": 5.0, "ratio": 2.5, "half_change_step": 20}
    assert layer_spread(table, "v").tolist() == [2.0, 2.9 / 1.8, 3.5 / 1.9, 2.5]


def test_two_process_ddp_on_cpu(tmp_path):
    """accelerate launch with 2 gloo ranks: one world of size 2, one writer, no duplicate lines."""
    out = tmp_path / "ddp"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        *TINY,
        "--max_steps",
        "6",
        "--output_dir",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert info["tokens_seen"] == 6 * 4 * 2 * 32  # steps x per-device batch x ranks x block
    records = [json.loads(line) for line in (out / "variance.jsonl").read_text().splitlines()]
    all_keys = [(r["step"], r["layer"], r["role"], r.get("head")) for r in records]
    assert len(all_keys) == len(set(all_keys))  # one writer: no duplicated line
    other = ("attn", "stability", None)
    keys = [(r["step"], r["layer"], r["role"]) for r in records if r["role"] not in other]
    assert sorted(keys) == sorted(
        (s, layer, role)
        for s in (0, 5, 6)
        for layer in range(2)
        for role in ("q", "k", "v", "attn_proj", "mlp_fc", "mlp_proj")
    )
    # one TensorBoard stream: one events folder, written by rank 0 only (the final evaluation's
    # metrics come after the Trainer closed its training writer, so it opens a second file in the
    # same folder)
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert (
        len({p.parent for p in events}) == 1
        and len({p.name.rsplit(".", 2)[-2] for p in events}) == 1
    )
    assert len(list(out.rglob("*.safetensors"))) == 1  # one saved model


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    "flags",
    [["--learning_rate", "-1"], ["--per_device_eval_batch_size", "0"], ["--learning_rate", "nan"]],
)
def test_bad_optimizer_or_batch_flag_with_overwrite_keeps_previous_run(tiny_run, tmp_path, flags):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    (out / "notes.txt").write_text("mine\n")  # not a run file: must stay too
    before = snapshot(out)
    proc = run_in_process(
        *TINY, "--max_steps", "2", "--output_dir", out, "--overwrite_output_dir", "true", *flags
    )
    assert_clean_failure(proc, flags[0].lstrip("-"))
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no backup folder left behind


# Fail inside the run, after training wrote variance.jsonl and TensorBoard events: the Trainer's
# final evaluate() raises (a ValueError = bad input, or Ctrl-C).
@pytest.mark.parametrize(
    "exc, rc, line",
    [
        (ValueError("bad eval setting"), 2, "error: bad eval setting"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_failure_during_training_with_overwrite_keeps_both_runs(
    tiny_run, tmp_path, monkeypatch, exc, rc, line
):
    """A run that fails after it wrote records is never deleted (issue 11): it stays in the folder,
    the earlier run moves, byte for byte, to run.previous-1, and a note line says which is which."""
    import shutil

    import transformers

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    (out / "notes.txt").write_text("mine\n")
    before = {
        k: v for k, v in snapshot(out).items() if k not in ("notes.txt", "README.md")
    }  # not run markers

    def boom(self, *a, **k):
        raise exc

    monkeypatch.setattr(transformers.Trainer, "evaluate", boom)
    args = [
        *TINY,
        "--max_steps",
        "2",
        "--variance_steps",
        "1",
        "--output_dir",
        str(out),
        "--overwrite_output_dir",
        "true",
    ]
    proc = run_in_process(*args)
    assert proc.returncode == rc, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and err.splitlines()[-1] == line, err[-3000:]
    assert err.splitlines()[-2].startswith("note: the failed run's outputs")
    assert (
        snapshot(tmp_path / "run.previous-1") == before
    )  # old variance.jsonl (steps 0, 5, 10), events, model
    steps = {json.loads(x)["step"] for x in (out / "variance.jsonl").read_text().splitlines()}
    assert (
        steps == {0, 1, 2} and (out / "notes.txt").read_text() == "mine\n"
    )  # the failed run's records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.previous-1"]


def test_overwrite_replaces_previous_run_completely(tiny_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    (out / "checkpoint-3").mkdir()
    (out / "notes.txt").write_text("mine\n")
    proc = run_in_process(
        *TINY, "--max_steps", "2", "--output_dir", out, "--overwrite_output_dir", "true"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "checkpoint-3").exists() and (out / "notes.txt").read_text() == "mine\n"
    steps = {json.loads(line)["step"] for line in (out / "variance.jsonl").read_text().splitlines()}
    assert steps == {0, 2}  # only the new run's records
    assert len(list((out / "runs").iterdir())) == 1  # one TensorBoard run, the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("n_layer", 0, "n_layer must be an integer >= 1, got 0"),
        ("n_head", 3, "n_head (3) must divide n_embd (32)"),
        ("dropout", 1.0, "dropout must be in [0, 1), got 1.0"),
    ],
)
def test_bad_model_args_are_refused_naming_the_value(field, value, needle):
    import re

    from hf_init.lm.args import ModelArguments

    with pytest.raises(ValueError, match=re.escape(needle)):
        ModelArguments(**{"n_layer": 2, "n_embd": 32, "n_head": 2, field: value})


def test_run_folder_has_a_from_scratch_model_card(tiny_run):
    out, _ = tiny_run
    card = (out / "README.md").read_text()
    assert "init-xavier_normal" in card and "hf-init" in card
    assert "trained from scratch" in card and "fine-tuned version" not in card
    assert "- spikes: none monitored" in card


def test_push_to_hub_offline_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    proc = run_in_process(*TINY, "--max_steps", "2", "--output_dir", out, "--push_to_hub", "true")
    assert_clean_failure(proc, "--push_to_hub", "hf upload")
    assert not out.exists()


def test_user_yaml_goes_on_top_of_the_default_yaml(tmp_path):
    """Built-in YAML first, the user's on top (keys it leaves out keep the built-in values), flags
    last."""
    import yaml
    from transformers import HfArgumentParser, TrainingArguments

    from hf_init.lm.args import ModelArguments

    default = tmp_path / "default.yaml"
    default.write_text(
        "n_layer: 5\nn_embd: 64\noutput_dir: from_default\nmax_steps: 11\nlearning_rate: 2e-3\n"
    )
    user = tmp_path / "user.yaml"
    user.write_text("n_layer: 3\nmax_steps: 7\n")
    parser = HfArgumentParser((ModelArguments, TrainingArguments))
    (model_args, training_args), path = parse_yaml_and_cli(
        parser, [str(user), "--learning_rate", "1e-4"], default_config=default
    )
    assert str(path) == str(user)
    assert model_args.n_layer == 3 and training_args.max_steps == 7  # user YAML over the default
    assert model_args.n_embd == 64 and training_args.output_dir == "from_default"  # default kept
    assert training_args.learning_rate == 1e-4  # flag over both
    assert model_args.n_head == 4  # in neither YAML: the dataclass default

    # the pretraining job: a 2-key user YAML keeps every other value of the shipped default config
    from hf_init.lm.args import DEFAULT_CONFIG, parse_args

    user.write_text("n_layer: 2\nlearning_rate: 5e-4\n")
    model_args, data_args, run_args, training_args, path = parse_args([str(user)])
    shipped = yaml.safe_load((ROOT / "configs" / "pretrain_tiny.yaml").read_text())
    assert DEFAULT_CONFIG.read_text() == (ROOT / "configs" / "pretrain_tiny.yaml").read_text()
    assert model_args.n_layer == 2 and training_args.learning_rate == 5e-4
    for key in (
        "n_embd",
        "n_head",
        "block_size",
        "vocab_size",
        "max_eval_samples",
        "max_steps",
        "warmup_steps",
        "adam_beta2",
        "variance_steps",
        "output_dir",
        "dataloader_pin_memory",
    ):
        value = next(
            getattr(a, key)
            for a in (model_args, data_args, run_args, training_args)
            if hasattr(a, key)
        )
        assert value == shipped[key], key


def test_text_column_other_than_text_end_to_end(tmp_path):
    """--text_column body, no --tokenizer_name, on a file whose `text` column is a decoy: trains,
    saves, and the tokenizer was trained on `body` (its words are in the vocabulary, the decoy's
    not)."""
    import random

    rng = random.Random(0)
    words = ["zebra", "quokka", "narwhal", "axolotl", "pangolin", "okapi"]
    data = tmp_path / "docs.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "id": i,
                    "text": "decoycolumn " * 5,
                    "body": " ".join(rng.choice(words) for _ in range(60)),
                }
            )
            + "\n"
            for i in range(40)
        )
    )
    out = tmp_path / "run"
    proc = run_in_process(
        *TINY,
        "--train_file",
        data,
        "--text_column",
        "body",
        "--max_steps",
        "2",
        "--output_dir",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["optimizer_steps"] == 2 and info["corpus"]["n_documents"] == 40
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert any("quokka" in t for t in vocab) and not any("decoy" in t for t in vocab)


@pytest.mark.slow  # a pip install into a fresh venv
def test_default_config_is_found_from_an_installed_copy(tmp_path):
    """`pip install .` (not editable) into a folder, then the script from another folder: the
    built-in config comes from the installed package, not from a repository checkout."""
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--target",
            str(site),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (site / "hf_init" / "configs" / "pretrain_tiny.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=str(site),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    probe = (
        "import hf_init, hf_init.lm.pretrain as a; m, d, r, t, c = a.parse_args([]); "
        "print(hf_init.__file__); print(c); print(t.max_steps, d.block_size)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    package_file, config, values = proc.stdout.split("\n")[:3]
    assert Path(package_file).is_relative_to(site) and Path(config).is_relative_to(site)
    assert values == "600 64"  # configs/pretrain_tiny.yaml: max_steps 600, block_size 64
    # and the script itself, copied out of the repository, runs from there (2 steps)
    script = elsewhere / "pretrain.py"
    script.write_text(SCRIPT.read_text())
    run = subprocess.run(
        [sys.executable, str(script), *map(str, TINY), "--max_steps", "2", "--output_dir", "run"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((elsewhere / "run" / "run_info.json").read_text())
    assert Path(info["config_file"]).is_relative_to(site) and info["optimizer_steps"] == 2


@pytest.fixture(scope="module")
def kaiming_run(tmp_path_factory):
    """5 steps, kaiming_normal, no TensorBoard."""
    out = tmp_path_factory.mktemp("user") / "run"
    proc = run_in_process(
        *TINY,
        "--max_steps",
        "5",
        "--output_dir",
        out,
        "--init_scheme",
        "kaiming_normal",
        "--report_to",
        "none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_the_summary_prints_the_std_each_weight_kind_got(kaiming_run):
    out, proc = kaiming_run
    # kaiming_normal, fan_in, relu: sqrt(2 / fan_in); n_embd 32, MLP 4 * 32 = 128 wide;
    # embeddings r = 0.02
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("init kaiming_normal"))
    assert f"{math.sqrt(2 / 32):.4g} (" in line and f"{math.sqrt(2 / 128):.4g} (mlp_proj)" in line
    assert "0.02 (" in line and "None" not in line
    stds = json.loads((out / "run_info.json").read_text())["init"]["std_by_weight"]
    assert stds["mlp_proj"]["scheme"] == pytest.approx(math.sqrt(2 / 128))
    assert stds["mlp_fc"]["scheme"] == pytest.approx(math.sqrt(2 / 32))
    # measured on the freshly built weights (32 x 128 x 2 draws for mlp_fc): within 5% of the scheme
    assert stds["mlp_fc"]["measured"] == pytest.approx(math.sqrt(2 / 32), rel=0.05)


def test_unused_option_fails_the_script_in_one_line_before_writing(tmp_path):
    proc = run_in_process(
        "--init_scheme", "kaiming_normal", "--init_std", "0.1", "--output_dir", tmp_path / "run"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "does not use --init_std" in proc.stderr and not (tmp_path / "run").exists()


def test_summary_lists_only_outputs_that_exist(kaiming_run):
    out, proc = kaiming_run
    assert not (out / "runs").exists()
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("run folder"))
    assert "runs/" not in line and "TensorBoard" not in line and "checkpoint" not in line
    for name in ("model", "tokenizer", "variance.jsonl", "figures/", "run_info.json", "README.md"):
        assert name in line


def test_a_file_in_the_way_of_the_output_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_in_process("--output_dir", tmp_path / "afile" / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"error: cannot create output folder {str(tmp_path / 'afile' / 'run')!r}: "
        f"{str(tmp_path / 'afile')!r} is a file, not a folder; choose another --output_dir"
    )


def test_an_unwritable_output_folder_is_one_line_before_any_data(tmp_path):
    from hf_init.core.outputs import check_output_dir

    if os.geteuid() == 0:  # root writes anywhere chmod forbids: use a read-only file system
        target = Path("/sys/hf_init_run")
        if os.access("/sys", os.W_OK) and not Path("/sys").exists():
            pytest.skip("no read-only folder to try")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "run"
    with pytest.raises(
        UsageError, match=r"^cannot write output folder .*; choose another --output_dir$"
    ):
        check_output_dir(target, overwrite=False)
    proc = run_in_process("--output_dir", target)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot write output folder" in proc.stderr


def test_saved_tokenizer_has_the_context_length_and_generation_past_it_works(kaiming_run):
    from transformers import AutoTokenizer, pipeline

    out, _ = kaiming_run
    n_positions = json.loads((out / "config.json").read_text())["n_positions"]
    assert n_positions == 32
    assert AutoTokenizer.from_pretrained(out).model_max_length == n_positions
    generate = pipeline("text-generation", model=str(out))
    prompt = "def foo(x):\n    return x + 1\n" * 4  # longer than the context on its own
    assert len(generate.tokenizer(prompt)["input_ids"]) > n_positions
    # the README's snippet: the prompt is cut on the left so prompt + new tokens fit the context
    text = generate(prompt, max_new_tokens=20, handle_long_generation="hole", do_sample=False)[0][
        "generated_text"
    ]
    assert isinstance(text, str) and len(text) > 0
    # asking for more new tokens than the context holds: refused with one line, not an IndexError
    with pytest.raises(ValueError, match="exceeds the models max length") as err:
        generate("def foo", max_new_tokens=100, handle_long_generation="hole")
    assert len(str(err.value).splitlines()) == 1


def test_an_uninstalled_report_to_integration_is_one_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    proc = run_in_process("--report_to", "wandb", "--output_dir", tmp_path / "run")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: --report_to wandb: its package is not installed (pip install wandb); "
        "installed here: tensorboard (or --report_to none)"
    ]


def test_offline_push_to_hub_message_is_whole(tmp_path):
    from huggingface_hub import whoami

    try:
        whoami()
        pytest.skip("logged in to a reachable Hub")
    except Exception as err:
        expected = " ".join(str(err).split())
    proc = run_in_process("--push_to_hub", "true", "--output_dir", tmp_path / "run")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything is written
    assert expected in proc.stderr and proc.stderr.strip().endswith(
        "upload the run folder later with `hf upload`"
    )


_RANK = textwrap.dedent("""
    import os
    import torch.distributed as dist
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from hf_init.lm.pretrain import check_same_tokenizer

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for mode in ("same", "differ"):
        texts = ["the quick brown fox jumps"] * 20
        if mode == "differ" and rank == 1:
            texts = ["lorem ipsum dolor sit amet"] * 20
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]))
        try:
            check_same_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tok), world_size=2)
            print(mode, "same")
        except RuntimeError as e:
            print(mode, "refused:", e)
    dist.destroy_process_group()
""")


def test_tokenizer_mismatch_across_ranks_is_refused_on_every_rank(tmp_path):
    """Two gloo ranks: the same tokenizer passes on both; different tokenizers are refused on
    both (one process pair runs both cases)."""
    port = free_port()
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        same, differ = [x for x in out.splitlines() if x.startswith(("same ", "differ "))]
        assert same == "same same"
        assert (
            differ.startswith("differ refused: ranks built different tokenizers")
            and "--tokenizer_name" in differ
        )
