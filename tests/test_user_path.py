"""What a new user hits (issue 13): true provenance of the init options, a summary naming only the
outputs that exist, output-folder problems in one line before any data, a tokenizer that knows the
context length, .txt files one example per line, .tsv/.parquet files."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_init.core.cli import UsageError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pretrain.py"
TINY = [
    "--n_layer",
    "2",
    "--n_embd",
    "32",
    "--n_head",
    "2",
    "--block_size",
    "32",
    "--vocab_size",
    "300",
    "--max_train_documents",
    "40",
    "--max_eval_samples",
    "16",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--logging_steps",
    "5",
    "--variance_steps",
    "5",
    "--disable_tqdm",
    "true",
]


def run_script(*args, script=SCRIPT, timeout=300):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def kaiming_run(tmp_path_factory):
    """5 steps, kaiming_normal, no TensorBoard."""
    out = tmp_path_factory.mktemp("user") / "run"
    proc = run_script(
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


# --- 1. provenance -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, flag, value, reads",
    [
        ("kaiming_normal", "init_std", 0.1, "normal"),
        ("kaiming_normal", "init_gain", 2.0, "xavier_normal"),
        ("deepnet", "init_std", 0.1, "normal"),
        ("small_init", "initializer_range", 0.1, "gpt2"),
        ("gpt2", "init_fan_mode", "fan_out", "kaiming_normal"),
    ],
)
def test_an_option_the_scheme_does_not_read_is_refused(scheme, flag, value, reads):
    from hf_init.lm.args import ModelArguments

    with pytest.raises(
        UsageError, match=rf"init scheme '{scheme}' does not use --{flag} .*{reads}"
    ):
        ModelArguments(init_scheme=scheme, **{flag: value})


def test_options_a_scheme_reads_are_accepted():
    from hf_init.lm.args import ModelArguments

    ModelArguments(init_scheme="normal", init_std=0.1)
    ModelArguments(init_scheme="xavier_uniform", init_gain=2.0, initializer_range=0.01)
    ModelArguments(init_scheme="kaiming_uniform", init_fan_mode="fan_out", init_nonlinearity="tanh")


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
    specs = [WeightSpec(role, 64, 256, n_layer=4, d_model=64) for role in sorted(ROLES)]
    for name, scheme in SCHEMES.items():
        base = SchemeOptions(std=0.1)
        for option, value in changed.items():
            other = SchemeOptions(**{"std": 0.1, option: value})
            differs = any(scheme.std(s, base) != scheme.std(s, other) for s in specs)
            assert differs == (option in SCHEME_OPTIONS[name]), (name, option)


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
    proc = run_script(
        "--init_scheme", "kaiming_normal", "--init_std", "0.1", "--output_dir", tmp_path / "run"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "does not use --init_std" in proc.stderr and not (tmp_path / "run").exists()


# --- 3. the summary lists only outputs that exist -------------------------------------------------


def test_summary_lists_only_outputs_that_exist(kaiming_run):
    out, proc = kaiming_run
    assert not (out / "runs").exists()
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("run folder"))
    assert "runs/" not in line and "TensorBoard" not in line and "checkpoint" not in line
    for name in ("model", "tokenizer", "variance.jsonl", "figures/", "run_info.json", "README.md"):
        assert name in line


def test_a_partial_yaml_keeps_the_default_configs_other_values(tmp_path):
    """The layering rule: keys a user YAML leaves out keep pretrain_tiny.yaml's values."""
    import yaml

    from hf_init.lm.args import DEFAULT_CONFIG, parse_args

    cfg = tmp_path / "mine.yaml"
    cfg.write_text("n_layer: 2\nmax_steps: 7\noutput_dir: x\ninit_scheme: xavier_normal\n")
    model, data, run, training, _ = parse_args([str(cfg)])
    tiny = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert (model.n_layer, training.max_steps, model.init_scheme) == (2, 7, "xavier_normal")
    assert data.block_size == tiny["block_size"] and training.learning_rate == float(
        tiny["learning_rate"]
    )
    assert training.lr_scheduler_type.value == tiny["lr_scheduler_type"]
    assert [str(r) for r in training.report_to] == [tiny["report_to"]]
    assert training.save_strategy.value == "no"


# --- 4. output folder problems: one line, before any data -----------------------------------------


def test_a_file_in_the_way_of_the_output_folder_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = run_script("--output_dir", tmp_path / "afile" / "run")
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
    proc = run_script("--output_dir", target)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cannot write output folder" in proc.stderr


# --- 5. the saved tokenizer knows the context length ----------------------------------------------


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


# --- 6. text files: one example per line; .tsv and .parquet ---------------------------------------

LINES = [f"line {i}: the variance of a sum of {i} independent terms adds up." for i in range(40)]


def test_a_txt_file_is_one_document_per_line_by_default(tmp_path):
    from hf_init.lm.data.args import DataArguments
    from hf_init.lm.data.loaders import load_raw_text

    path = tmp_path / "train.txt"
    path.write_text("\n".join(LINES[:20]) + "\n\n" + "\n".join(LINES[20:]) + "\n", encoding="utf-8")
    raw, info = load_raw_text(DataArguments(train_file=str(path), validation_split_percentage=10))
    docs = sorted(t.rstrip("\n") for split in raw.values() for t in split["text"])
    assert docs == sorted(LINES) and len(raw["validation"]) == 4 and info["n_documents"] == 40
    para, _ = load_raw_text(
        DataArguments(train_file=str(path), validation_split_percentage=50, sample_by="paragraph")
    )
    assert len(para["train"]) + len(para["validation"]) == 2
    with pytest.raises(
        ValueError,
        match=r"1 training document\(s\) \(a \.txt file holds one document per "
        r"document with --sample_by document; choose line, paragraph or document\)",
    ):
        load_raw_text(DataArguments(train_file=str(path), sample_by="document"))
    with pytest.raises(
        UsageError, match="--sample_by must be one of line, paragraph, document, got 'lines'"
    ):
        DataArguments(sample_by="lines")


def test_tsv_and_parquet_files_are_read(tmp_path):
    import pandas as pd

    from hf_init.lm.data.args import DataArguments
    from hf_init.lm.data.loaders import load_raw_text

    frame = pd.DataFrame({"id": range(len(LINES)), "body": [f"{t}, with a comma" for t in LINES]})
    frame.to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "train.parquet")
    for name in ("train.tsv", "train.parquet"):
        raw, info = load_raw_text(
            DataArguments(train_file=str(tmp_path / name), text_column="body")
        )
        assert sorted(t for split in raw.values() for t in split["text"]) == sorted(
            frame["body"]
        ), name
        assert info["n_documents"] == len(LINES)


# --- 7. a quick, strict command line --------------------------------------------------------------

HEAVY = ("torch", "transformers", "datasets", "accelerate")


def _modules_after(*argv):
    """Run scripts/pretrain.py's main in a fresh interpreter; return (exit status, stderr, the heavy
    modules it imported)."""
    code = (
        "import sys, runpy; sys.argv = ['pretrain.py', *sys.argv[1:]]\n"
        f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    *lines, heavy = proc.stderr.strip().splitlines()
    return proc.returncode, proc.stdout, lines, heavy


def test_help_answers_without_importing_torch_or_transformers():
    rc, out, err, heavy = _modules_after("--help")
    assert rc == 0 and heavy == "HEAVY []", (err, heavy)
    out = " ".join(out.split())  # argparse wraps the help to the terminal's width
    assert "--learning_rate LEARNING_RATE" in out and "(default: 0.001)" in out  # built-in YAML
    assert "--init_scheme" in out and "(default: 'gpt2')" in out and "--sample_by" in out


def test_a_mistyped_flag_is_one_line_naming_the_closest_flag():
    rc, out, err, heavy = _modules_after("--max_stepz", "3")
    assert rc == 2 and err == [
        "error: unknown argument --max_stepz (did you mean --max_steps? see --help for valid flags)"
    ]


@pytest.mark.parametrize("flag", ["--max_step", "--learn", "--init_sch"])
def test_abbreviations_are_refused(flag):
    from hf_init.lm.args import parse_args

    with pytest.raises(UsageError, match=f"unknown argument {flag} "):
        parse_args([flag, "3"])


def test_help_lists_the_full_parsers_flags():
    """The flags --help reads from source are exactly the option strings HfArgumentParser builds."""
    import re

    from hf_init.lm.args import build_parser, help_text

    listed = set(re.findall(r"^  --(\w+)", help_text(), flags=re.M))
    options = {
        o[2:].replace("-", "_")
        for a in build_parser()._actions
        for o in a.option_strings
        if o.startswith("--") and o != "--help"
    }
    assert {o for o in options if not (o.startswith("no_") and o[3:] in listed)} == listed


def test_an_uninstalled_report_to_integration_is_one_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    proc = run_script("--report_to", "wandb", "--output_dir", tmp_path / "run")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: --report_to wandb: its package is not installed (pip install wandb); "
        "installed here: tensorboard (or --report_to none)"
    ]


# --- 8. the studies: consistent with each other ---------------------------------------------------


def test_heatmap_cells_are_centred_on_their_recorded_steps(tmp_path, monkeypatch):
    import numpy as np

    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.lm import plots
    from hf_init.lm.variance import variance_table

    steps = [0, 10, 20, 25]  # the last step off the recording grid, as a run's final step can be
    records = [
        make_record(s, layer, role, {"var": 1.0 + s + layer})
        for s in steps
        for layer in range(3)
        for role in "qkv"
    ]
    table = variance_table(read_records(write_records(tmp_path / "v.jsonl", records)))
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    plots.variance_heatmap(table, tmp_path / "h.png")
    mesh = figures[0].axes[0].collections[0]
    xy = np.asarray(mesh.get_coordinates())  # (layers + 1, steps + 1, 2) cell corners
    x_edges, y_edges = xy[0, :, 0], xy[:, 0, 1]
    # each cell spans half the smaller gap to its neighbours on each side: 20 has neighbours 10
    # and 25, so [17.5, 22.5], and the strip 15 .. 17.5 is left empty
    assert x_edges.tolist() == [-5, 5, 15, 17.5, 22.5, 27.5]
    z = np.ma.getdata(mesh.get_array()).reshape(3, 5)
    mask = np.ma.getmaskarray(mesh.get_array()).reshape(3, 5)
    drawn = [j for j in range(5) if not mask[0, j]]
    assert [(x_edges[j] + x_edges[j + 1]) / 2 for j in drawn] == steps
    assert ((y_edges[1:] + y_edges[:-1]) / 2).tolist() == [0, 1, 2]
    assert z[2, drawn[2]] == pytest.approx(np.log10(1 + 20 + 2))  # cell (layer 2, step 20)


def test_a_one_std_stable_band_is_a_visible_strip(tmp_path, monkeypatch):
    import numpy as np
    from matplotlib.patches import Polygon, Rectangle

    from hf_init.mlp import plots

    stds = [1e-2, 1e-1, 1.0, 10.0]
    rows = [
        {
            "depth": 2,
            "std": s,
            "seed": 0,
            "final_train_loss": 1.0,
            "final_test_loss": 1.0,
            "final_test_acc": 0.5,
            "regime": "stable" if s == 1e-1 else "vanishing",
        }
        for s in stds
    ]
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    plots.sweep_metrics(rows, {"2": {"lo": 0.1, "hi": 0.1}}, tmp_path / "m.png")
    spans = [p for p in figures[0].axes[0].patches if isinstance(p, (Polygon, Rectangle))]
    assert len(spans) == 1
    xs = (
        spans[0].get_xy()[:, 0]
        if isinstance(spans[0], Polygon)
        else [spans[0].get_x(), spans[0].get_x() + spans[0].get_width()]
    )
    # out to the geometric midpoints with the neighbours: sqrt(0.01 * 0.1) .. sqrt(0.1 * 1)
    assert min(xs) == pytest.approx(np.sqrt(1e-3)) and max(xs) == pytest.approx(np.sqrt(0.1))
    # at the grid's end: half a grid step (a factor sqrt(10)) beyond the last std
    assert plots.band_span(stds, 1.0, 10.0) == pytest.approx(
        (np.sqrt(0.1 * 1.0), 10.0 * np.sqrt(10.0))
    )


def test_study_summary_records_the_package_versions(tmp_path):
    import importlib.util

    import torch
    import transformers

    spec = importlib.util.spec_from_file_location(
        "mlp_init_compare", ROOT / "scripts" / "mlp_init_compare.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "cmp"
    assert mod.main(
        [
            "--dataset",
            "wine",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--activations",
            "relu",
            "--output_dir",
            str(out),
            "--no_progress",
        ]
    ) in (None, 0)
    versions = json.loads((out / "summary.json").read_text())["versions"]
    assert (
        versions["torch"] == torch.__version__
        and versions["transformers"] == transformers.__version__
    )
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))


def test_offline_push_to_hub_message_is_whole(tmp_path):
    from huggingface_hub import whoami

    try:
        whoami()
        pytest.skip("logged in to a reachable Hub")
    except Exception as err:
        expected = " ".join(str(err).split())
    proc = run_script("--push_to_hub", "true", "--output_dir", tmp_path / "run")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert expected in proc.stderr and proc.stderr.strip().endswith(
        "upload the run folder later with `hf upload`"
    )


def test_after_the_setup_a_plain_accelerate_launch_prints_one_line(tmp_path):
    """The README's set-up (python -m hf_init.lm.accelerate_config) then `accelerate launch -q`: no
    "values were not passed" block, and a bad flag is the script's one line (no launcher
    traceback)."""
    import shutil

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)
    setup = subprocess.run(
        [sys.executable, "-m", "hf_init.lm.accelerate_config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        setup.returncode == 0 and (tmp_path / "hf" / "accelerate" / "default_config.yaml").is_file()
    )
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    proc = subprocess.run(
        [launcher, "launch", "-q", str(SCRIPT), "--max_stepz", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: unknown argument --max_stepz (did you mean --max_steps? see --help for valid flags)"
    ]
    assert "were not passed" not in proc.stdout
