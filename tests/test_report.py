"""scripts/report.py (hf_init/report.py) on the shared init study and on one run plus an MLP
folder: the HTML is self-contained (every image a data: PNG, no network reference) and holds
the sections and the per-scheme numbers."""

import base64
import json
import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from conftest import STUDY_RUNS as RUNS
from conftest import study_script as script


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def section_markdown(section, tmp_path, *args) -> list[str]:
    """The markdown pieces one report section (``section(doc, *args)``) adds to an empty Document
    whose figures go to ``tmp_path``."""
    from hf_init.report import Document

    doc = Document(tmp_path, tmp_path)
    section(doc, *args)
    return doc.md


def check_self_contained(page: str) -> list[str]:
    parser = Tags()
    parser.feed(page)
    srcs = [a["src"] for t, a in parser.tags if t == "img"]
    assert srcs, "no figures"
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [t for t, a in parser.tags if t in ("script", "link", "iframe")]
    for t, a in parser.tags:
        for key in ("src", "href"):
            assert not str(a.get(key, "")).startswith(("http:", "https:", "//")), (t, a)
    return srcs


def test_study_report_is_self_contained_and_holds_the_sections(study):
    page = (study / "report.html").read_text()
    md = (study / "report.md").read_text()
    srcs = check_self_contained(page)
    # every figure of the markdown is embedded in the HTML
    assert len(srcs) == md.count("![")
    # 1 loss figure + per scheme (2) a Q/K/V variance and an attention figure
    assert len(srcs) == 5
    for section in (
        "## Configurations",
        "## Loss and perplexity",
        "## Q/K/V variance and attention, per scheme",
        "## Equilibration",
        "## The paper's claims",
        "narrower_band_at_end",
        "shallow_grow_faster",
    ):
        assert section in md
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings[0] == "# hf-init report" and "<h1>hf-init report</h1>" in page
    for name in ("Configurations", "Loss and perplexity", "Equilibration"):
        assert f"## {name}" in headings and f"<h2>{name}</h2>" in page  # level 2, no deeper
    assert "## Schedule and optimizer coupling" not in headings  # no run differs in schedule
    # the per-scheme mean eval loss equals the mean of the runs' own eval losses (numpy)
    losses = [json.loads((study / n / "run_info.json").read_text())["eval_loss"] for n in RUNS[:2]]
    row = next(line for line in md.splitlines() if line.startswith("| gpt2 | 2 |"))
    assert float(row.split("|")[3]) == pytest.approx(np.mean(losses), rel=1e-3)


def test_report_script_on_one_run_and_an_mlp_folder(study, tmp_path):
    # a stand-in MLP study folder: the files mlp_sweep writes that the report reads
    mlp = tmp_path / "mlp_sweep"
    mlp.mkdir()
    (mlp / "summary.json").write_text(
        json.dumps({"command": "python scripts/mlp_sweep.py", "setup": "digits"})
    )
    (mlp / "results.csv").write_text(
        "depth,std,seed,final_test_acc\n4,0.1,0,0.5\n4,0.1,1,0.7\n4,1.0,0,0.9\n"
    )
    png = next((study / "gpt2_seed0" / "figures").glob("*.png"))
    (mlp / "sweep_metrics.png").write_bytes(png.read_bytes())
    out = tmp_path / "rep"
    proc = script("report.py", study / "gpt2_seed0", mlp, "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "report.md").read_text()
    assert "## MLP study: mlp_sweep" in md
    assert "| 4 | 0.1 | 0.6 |" in md  # the mean over the two seeds
    assert "Per scheme, over seeds" not in md  # one run: no summary over seeds
    assert "command: `python scripts/mlp_sweep.py`" in md and "setup: digits\n" in md
    # the run's spikes in the results table, as its run_info.json has them
    lines = md.splitlines()
    at = next(i for i, line in enumerate(lines) if "| spikes | spike_score |" in line)
    header = [c.strip() for c in lines[at].split("|")]
    row = [c.strip() for c in lines[at + 2].split("|")]
    spikes = json.loads((study / "gpt2_seed0" / "run_info.json").read_text())["spikes"]
    assert float(row[header.index("spikes")]) == spikes["count"]
    srcs = check_self_contained((out / "report.html").read_text())
    assert len(srcs) == md.count("![") == 4  # loss, variance, attention of the run + the MLP figure


def test_coupling_section_reads_the_learning_rate_beside_the_variances(tmp_path):
    """The report's coupling section on hand-made runs (tests/lm/test_equilibration.py's: the
    same saturating Q/K/V curves under a constant and a cosine rate), with other statistics in
    the table too: the learning rate there / its peak at the cosine run's equilibration step is
    0.5 (1 + cos(pi eq / T)), and the constant run's curves all settle."""
    import importlib.util
    import math
    from pathlib import Path

    import pandas as pd

    from hf_init.lm.equilibration import TOLERANCE

    path = Path(__file__).resolve().parent / "lm" / "test_equilibration.py"
    spec = importlib.util.spec_from_file_location("equilibration_cases", path)
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    T, constant, cosine, saturating = cases.T, cases.constant, cases.cosine, cases.saturating
    coupling_frame, expected_eq_step = cases.coupling_frame, cases.expected_eq_step
    from hf_init.report import coupling_section

    def curve(t):
        return saturating(t, 4e-4, 1e-3, 80.0)

    runs = pd.concat(
        [
            coupling_frame(tmp_path, curve, lr, s)
            for lr, s in ((constant, "constant"), (cosine, "cosine"))
        ]
    )
    noise = runs[runs["statistic"] == "var"].assign(statistic="rms", value=7.0)  # not read
    tables = []
    doc = type("Doc", (), {"heading": lambda *a: None, "text": lambda *a: None,
                           "table": lambda self, df, *a: tables.append(df)})()  # fmt: skip
    coupling_section(doc, pd.concat([runs, noise], ignore_index=True))
    coupling = tables[0].set_index("schedule")
    eq = expected_eq_step(4e-4, 1e-3, 80.0, TOLERANCE, saturating(T, 4e-4, 1e-3, 80.0))
    assert coupling.loc["constant", "settled"] == 1.0
    assert coupling.loc["cosine", "lr_fraction"] == pytest.approx(
        0.5 * (1 + math.cos(math.pi * eq / T))
    )


def test_attention_summary_names_the_layers_by_final_entropy(tmp_path):
    """Hand-made attention records of 3 layers x 2 heads at steps 0 and 10, with logit stds
    ordered opposite to the entropies: the init/final means over layers and heads, and the
    lowest-entropy layer is read from the entropies only."""
    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.report import attention_summary

    entropy = {(0, 0): 2.0, (0, 1): 2.2, (0, 2): 2.1, (10, 0): 1.5, (10, 1): 0.4, (10, 2): 1.9}
    records = [
        make_record(step, layer, "attn", {"entropy": e + 0.1 * head, "logit_std": 5.0 - e},
                    head=head, scheme="s")
        for (step, layer), e in entropy.items()
        for head in (0, 1)
    ]  # fmt: skip
    table = read_records(write_records(tmp_path / "a.jsonl", records))
    (row,) = attention_summary(table, ["scheme"]).to_dict("records")
    assert row["lowest_entropy_layer"] == 1 and row["final_step"] == 10
    assert row["entropy_final"] == pytest.approx((1.5 + 0.4 + 1.9) / 3 + 0.05)
    assert row["logit_std_init"] == pytest.approx(5.0 - (2.0 + 2.2 + 2.1) / 3)


def test_configs_tables_split_settings_shared_by_every_run_from_those_that_differ(tmp_path):
    """Three hand-made runs: a setting with one value in all three is shared (one row, its
    value), one with two or three distinct values differs (a column, one row per run)."""
    from pathlib import Path

    from hf_init.report import Run, configs_tables

    def run(name, scheme, seed, lr, n_layer):
        info = {"init": {"scheme": scheme}, "seed": seed, "n_parameters": 1000,
                "config": {"model": {"model_type": "gpt2", "n_layer": n_layer, "n_embd": 64},
                           "training": {"learning_rate": lr, "optim": "adamw_torch"}}}  # fmt: skip
        return Run(Path(tmp_path / name), info, {})

    runs = [
        run("a", "gpt2", 0, 1e-3, 2),
        run("b", "gpt2", 1, 1e-3, 2),
        run("c", "xavier", 2, 3e-3, 2),
    ]
    shared, differ = configs_tables(runs)
    assert list(shared.columns) == ["setting", "value"]  # one value column, not one per run
    shared = dict(zip(shared["setting"], shared["value"]))
    assert shared["model.n_layer"] == "2" and shared["n_parameters"] == "1000"
    assert shared["training.optim"] == "adamw_torch" and shared["model.n_embd"] == "64"
    for key in ("init.scheme", "seed", "training.learning_rate"):
        assert key not in shared
    assert list(differ["run"]) == ["a", "b", "c"]
    assert list(differ["init.scheme"]) == ["gpt2", "gpt2", "xavier"]  # two values: differs
    assert list(differ["training.learning_rate"]) == ["0.001", "0.001", "0.003"]
    assert list(differ["seed"]) == ["0", "1", "2"]
    assert "model.n_layer" not in differ.columns

    # the section around them: the table of what differs only when more than scheme and seed do
    from hf_init.report import configs_section

    def section(runs):
        return "".join(section_markdown(configs_section, tmp_path, runs))

    only = "The runs differ in scheme and seed only, as their names say."
    table = "Settings that differ (one row per run):"
    assert table in section(runs) and only not in section(runs)
    same_lr = run("c", "xavier", 2, 1e-3, 2)  # c with a's and b's learning rate
    assert only in section([*runs[:2], same_lr]) and table not in section([*runs[:2], same_lr])
    assert only in section([runs[0], same_lr])  # two runs are enough
    assert table in section([runs[0], runs[2]])  # and two that differ in more get the table
    one = section(runs[:1])
    assert one.startswith("## Configurations\n1 pretraining runs.")
    assert only not in one and table not in one


def test_stability_section_on_hand_made_runs(tmp_path):
    """Two hand-made runs (seeds 0 and 1), 2 layers x 2 heads, attention records at steps 0 and
    10: the chance loss and uniform entropy are ln(vocab) and the mean of ln(1..T); the growth
    table is, per layer, the mean over heads of the last logit std over the first, to 3
    significant digits; the one head whose entropy falls below 10% of uniform is listed with
    its step, and every head is in attention_heads.csv."""
    import math

    import pandas as pd

    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.report import FILES_DIR, Run, stability_section

    block, vocab = 8, 50
    info = {"vocab_size": vocab, "blocks": {"block_size": block}, "eval_loss": 1.0}
    runs = [Run(tmp_path / f"r{s}", info, {"seed": s}) for s in (0, 1)]
    first = {
        (s, l, h): 1.0 + l + 0.5 * h + 0.25 * s for s in (0, 1) for l in (0, 1) for h in (0, 1)
    }
    last = {key: v * (1.5 + key[1] + 0.125 * key[2]) for key, v in first.items()}
    records = [
        make_record(
            step, l, "attn", {"entropy": entropy, "logit_std": std[s, l, h]}, head=h, seed=s
        )  # fmt: skip
        for step, std in ((0, first), (10, last))
        for s, l, h in std
        for entropy in [0.01 if (step, s, l, h) == (10, 1, 1, 0) else 2.0]
    ]
    table = read_records(write_records(tmp_path / "a.jsonl", records))
    calls = []

    class Doc:
        files = tmp_path

        def heading(self, text):
            calls.append(("heading", text, None))

        def text(self, text):
            calls.append(("text", text, None))

        def table(self, df, digits=4):
            calls.append(("table", df, digits))

    doc = Doc()
    stability_section(doc, runs, table)

    intro = calls[1][1]
    assert f"L0 = ln(vocab size) = {math.log(vocab):.3f}" in intro
    assert f"{np.mean(np.log(np.arange(1, block + 1))):.3f} nats" in intro
    texts = {c[1]: i for i, c in enumerate(calls) if c[0] == "text"}
    i = texts["Attention-logit growth (last / first record) per layer:"]
    _, growth, digits = calls[i + 1]
    assert digits == 3
    assert list(growth.columns) == ["seed", "layer 0", "layer 1"]
    for s in (0, 1):
        row = growth[growth["seed"] == s].iloc[0]
        for l in (0, 1):
            want = np.mean([last[s, l, h] for h in (0, 1)]) / np.mean(
                [first[s, l, h] for h in (0, 1)]
            )
            assert row[f"layer {l}"] == pytest.approx(want, rel=1e-12)
    i = texts["Collapsed heads, earliest first (1 of 1):"]
    (collapsed,) = calls[i + 1][1].to_dict("records")
    assert (collapsed["seed"], collapsed["layer"], collapsed["head"]) == (1, 1, 0)
    assert collapsed["collapse_step"] == 10
    heads = pd.read_csv(tmp_path / "attention_heads.csv")
    assert len(heads) == 8 and heads["collapse_step"].notna().sum() == 1
    assert any(f"Every head: `{FILES_DIR}/attention_heads.csv`" in t for t in texts)


def test_a_runs_scheme_label_carries_the_std_of_the_normal_scheme_only():
    """Runs are grouped and labelled by scheme: the plain normal scheme by its std too
    (normal:0.05 and normal:0.1 are different schemes); a scheme that sets its own stds is its
    name alone, whatever std the run's config also held."""
    from hf_init.report import scheme_label

    def info(scheme, std):
        return {"init": {"scheme": scheme, "std": std}}

    assert scheme_label(info("normal", 0.05)) == "normal:0.05"
    assert scheme_label(info("normal", 0.1)) == "normal:0.1"
    assert scheme_label(info("gpt2", 0.02)) == "gpt2"
    assert scheme_label(info("xavier_normal", None)) == "xavier_normal"


def test_collapse_sentence_counts_runs_that_diverged_and_heads_that_collapsed():
    """Four hand-made runs: two diverged (one after a head collapsed, one without), one healthy
    run with a collapsed head, one without attention records (no count: not a collapse)."""
    import pandas as pd

    from hf_init.report import collapse_sentence

    stability = pd.DataFrame({
        "diverged": [True, True, False, False],
        "collapse_before_divergence": [True, None, None, None],
        "collapsed_heads": [2.0, 0.0, 1.0, float("nan")],
    })  # fmt: skip
    assert collapse_sentence(stability) == (
        "2 of 4 runs diverged; in 1 of them a head collapsed before the divergence step; "
        "1 of the 2 runs that did not diverge had a collapsed head."
    )


@pytest.mark.parametrize("n_layer, shallow, deep", [(2, [0], [1]), (4, [0], [3]),
                                                    (6, [0, 1], [4, 5])])  # fmt: skip
def test_equilibration_summary_reads_the_shallow_and_deep_third(n_layer, shallow, deep):
    """Per scheme and projection, the medians of the shallow third of the layers (at least one
    layer) and of the deep third: with layer l's growth rate l and equilibration step 100 l, they
    are the medians of those layers' numbers; the relative change's median is over every layer,
    and the share never equilibrated counts NaN steps."""
    from hf_init.report import equilibration_summary

    layers = np.arange(n_layer)
    eq = pd.DataFrame({"scheme": "s", "projection": "q", "layer": layers,
                       "relative_change": 2.0 * layers, "early_growth_rate": layers.astype(float),
                       "equilibration_step": np.where(layers == 1, np.nan, 100.0 * layers),
                       "lr_fraction_of_peak": 0.5})  # fmt: skip
    (row,) = equilibration_summary(eq).to_dict("records")
    steps = {layer: math.nan if layer == 1 else 100.0 * layer for layer in layers}
    assert row["growth_shallow"] == np.median(shallow)
    assert row["growth_deep"] == np.median(deep)
    for third, which in (("shallow", shallow), ("deep", deep)):  # NaN steps skipped; none: NaN
        np.testing.assert_equal(
            row[f"eq_step_{third}"], pd.Series([steps[i] for i in which]).median()
        )
    assert row["rel_change_median"] == np.median(2.0 * layers)
    assert row["never_equilibrated"] == 1 / n_layer
    assert row["lr_fraction_at_eq"] == 0.5


def test_a_runs_model_family_from_run_info_else_its_config_else_gpt2():
    """run_info's model_type when it has one; a run from before it: the config's model_type;
    neither: gpt2 (runs that predate Llama)."""
    from hf_init.report import model_type

    assert model_type({"model_type": "llama", "config": {"model": {}}}) == "llama"
    assert model_type({"config": {"model": {"model_type": "llama"}}}) == "llama"
    assert model_type({"config": {"model": {}}}) == "gpt2"


def test_run_endings_date_a_divergence_by_the_stop_or_else_by_the_loss_curve(tmp_path, monkeypatch):
    """A run stopped on non-finite values diverged at its recorded stop; one that ended with eval
    loss >= L0 = ln(vocab) diverged at the first logged step after its lowest training loss whose
    loss is back at L0 or above (here 40: lowest 3.0 at 20, then 5.0 >= ln 100 = 4.61); a run that
    ended below L0 did not diverge (NaN step)."""
    from hf_init import report

    curve = pd.DataFrame({"step": [0, 10, 20, 30, 40, 50], "loss": [4.7, 4.0, 3.0, 4.5, 5.0, 6.0]})
    monkeypatch.setattr(report, "train_loss_curves", lambda run: curve)

    def run(name, **info):
        return report.Run(tmp_path / name, info, {"name": name})

    chance = math.log(100)
    runs = [run("stopped", diverged_at_step=7), run("climbed", eval_loss=4.9),
            run("learned", eval_loss=3.5)]  # fmt: skip
    endings = report.run_endings(runs, chance).set_index("name")
    assert list(endings["diverged"]) == [True, True, False]
    assert endings.loc["stopped", "divergence_step"] == 7
    assert endings.loc["climbed", "divergence_step"] == 40
    assert math.isnan(endings.loc["learned", "divergence_step"])
    assert math.isnan(endings.loc["stopped", "final_loss"])
    assert endings.loc["climbed", "final_loss"] == 4.9


def test_report_tables_round_to_four_significant_digits(tmp_path):
    """The report's tables show 4 significant digits (pi as 3.142, 12345.678 as 1.235e+04) in the
    markdown and the HTML alike; an empty table adds nothing."""
    from hf_init.report import Document

    doc = Document(tmp_path, tmp_path)
    doc.table(pd.DataFrame({"x": [math.pi, 12345.678]}))
    doc.table(pd.DataFrame())
    md, page = "".join(doc.md), "".join(doc.html)
    assert "| 3.142 |" in md and "| 1.235e+04 |" in md and "3.1416" not in md
    assert ">3.142</td>" in page and ">1.235e+04</td>" in page and len(doc.md) == 1


def test_discover_takes_ended_runs_with_records_and_whole_mlp_studies_only(tmp_path):
    """A run folder counts once it ended (run_info.json, or diverged.json) and holds its records
    (variance.jsonl); an MLP study once it has both summary.json and results.csv. A run still
    going (records, no ending), an ended run whose records are gone and half an MLP study are
    skipped, and a folder holding nothing else is one clear error."""
    from hf_init.report import discover

    layout = {
        "finished": ("variance.jsonl", "run_info.json"),
        "diverged": ("variance.jsonl", "diverged.json"),
        "running": ("variance.jsonl",),
        "records_gone": ("run_info.json",),
        "mlp": ("summary.json", "results.csv"),
        "mlp_half": ("summary.json",),
        "mlp_other_half": ("results.csv",),
    }
    for folder, files in layout.items():
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).write_text("{}")
    runs, mlp = discover([tmp_path])
    assert [p.name for p in runs] == ["diverged", "finished"]
    assert [p.name for p in mlp] == ["mlp"]
    with pytest.raises(ValueError, match="holds no finished pretraining run"):
        discover([tmp_path / "running"])


def test_train_loss_curves_reads_every_logged_point_and_a_resumed_steps_latest_value(tmp_path):
    """The loss curve from a run's TensorBoard events, written here with torch's SummaryWriter:
    all 50 points of the first writer (not a sample of them); a second, later event file (the
    resumed run) repeating steps 41..50 replaces their values and adds 51..60."""
    from torch.utils.tensorboard import SummaryWriter

    from hf_init.report import Run, train_loss_curves

    for sub, steps, loss in (("1_first", range(1, 51), 2.0), ("2_resumed", range(41, 61), 1.0)):
        with SummaryWriter(tmp_path / "runs" / sub) as w:
            for step in steps:
                w.add_scalar("train/loss", loss + step / 100, step)
            w.add_scalar("train/learning_rate", 1e-3, 1)
    curve = train_loss_curves(Run(tmp_path, {}, {}))
    assert curve["step"].tolist() == list(range(1, 61))
    want = [2.0 + s / 100 for s in range(1, 41)] + [1.0 + s / 100 for s in range(41, 61)]
    assert curve["loss"].to_numpy() == pytest.approx(want, rel=1e-6)
    assert train_loss_curves(Run(tmp_path / "nothing", {}, {})) is None


def test_results_section_summarises_over_seeds_from_two_runs_on(tmp_path):
    """The per-scheme summary over seeds appears from two runs on (not for one): mean and std
    (ddof=1, numpy's) of each scheme's eval loss and perplexity."""
    from hf_init.report import Run, results_section

    losses = {("a", 0): 3.0, ("a", 1): 3.5, ("b", 0): 4.0}

    def run(scheme, seed):
        info = {"eval_loss": losses[scheme, seed], "perplexity": math.exp(losses[scheme, seed])}
        return Run(tmp_path / f"{scheme}{seed}", info, {"scheme": scheme, "seed": seed})

    def summary(runs):
        return section_markdown(results_section, tmp_path, runs)

    one = summary([run("a", 0)])
    assert not any("Per scheme, over seeds" in part for part in one)
    md = summary([run("a", 0), run("a", 1)])
    at = md.index("Per scheme, over seeds (std with ddof=1; NaN with one seed):\n")
    lines = md[at + 1].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert (row["scheme"], row["seeds"]) == ("a", "2")
    assert float(row["eval_loss_mean"]) == pytest.approx(3.25)
    assert float(row["eval_loss_std"]) == pytest.approx(np.std([3.0, 3.5], ddof=1), rel=1e-3)
    ppl = np.exp([3.0, 3.5])
    assert float(row["perplexity_std"]) == pytest.approx(np.std(ppl, ddof=1), rel=1e-3)


def test_figures_section_draws_one_run_per_scheme_and_the_attention_table_when_there_is_one(
    tmp_path,
):
    """Runs a/0, a/1 and b/0: the figures of a/0 and b/0 only (each scheme's first run); the
    attention summary's table when the records hold attention, no such text when they do not."""
    from hf_init.core.records import make_record, read_records, write_records
    from hf_init.report import Run, figures_section

    keys = [("a", 0), ("a", 1), ("b", 0)]
    runs = [Run(tmp_path / f"{s}{seed}", {}, {"scheme": s, "seed": seed}) for s, seed in keys]

    def table(attention: bool):
        frames = []
        for s, seed in keys:
            recs = [make_record(step, l, p, {"var": 1e-3 * (1 + step + l), "rms": 0.0})
                    for step in (0, 10) for l in (0, 1) for p in ("q", "k", "v")]  # fmt: skip
            if attention:
                recs += [make_record(step, l, "attn", {"entropy": 2.0 - l, "logit_std": 1.0},
                                     head=0) for step in (0, 10) for l in (0, 1)]  # fmt: skip
            path = write_records(tmp_path / f"{s}{seed}_{attention}.jsonl", recs)
            frames.append(read_records(path, scheme=s, seed=seed))
        return pd.concat(frames, ignore_index=True)

    for attention in (True, False):
        md = "".join(section_markdown(figures_section, tmp_path, runs, table(attention)))
        shown = [line for line in md.splitlines() if line.startswith("![Q/K/V weight variance")]
        assert len(shown) == 2
        assert f"{runs[0].label}]" in shown[0] and f"{runs[2].label}]" in shown[1]
        said = "Attention, mean over layers and heads, at the first and the last record step:"
        assert (said in md) == attention
        assert ("lowest_entropy_layer" in md) == attention
