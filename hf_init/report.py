"""One shareable report from result folders: ``report.md`` (figures as PNG files next to it, in
``report_files/``) and a self-contained ``report.html`` (every figure embedded as a base64
``data:`` URI; no script, style sheet or image is fetched from anywhere).

Folders it understands (each given folder, or its subfolders one level down):

- a pretraining run (``scripts/pretrain.py``: ``variance.jsonl`` + ``run_info.json``, or
  ``diverged.json`` for a run stopped on divergence); a study (``scripts/init_study.py``) is a
  folder of such runs. Runs are labelled by scheme (``normal`` with its std), seed and, when they
  differ between runs, model family (``model``: gpt2, llama; a GPT-2 study and a Llama study
  given together compare the families), learning rate, schedule, warm-up and optimizer
  (:data:`SETTINGS`).
  Sections: configs side by side, loss and perplexity, Q/K/V variance and attention figures per
  scheme (the run with the lowest seed of each), the equilibration table and the paper's claims
  with their power (:mod:`hf_init.lm.equilibration`), stability (learning-rate sensitivity,
  divergence, attention-entropy collapse: :mod:`hf_init.lm.stability`) and, when schedules are
  crossed, schedule and optimizer coupling.
- an MLP study (``scripts/mlp_sweep.py`` / ``scripts/mlp_init_compare.py``: ``summary.json`` +
  ``results.csv``): its setup and command, the per-configuration means of ``results.csv`` and its
  figures.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hf_init.core.outputs import write_atomic
from hf_init.core.records import read_records
from hf_init.lm.run_folder import DIVERGED, RUN_INFO, TENSORBOARD_DIR, VARIANCE_FILE, RunFolder
from hf_init.lm.study import STUDY_FILE

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FILES_DIR = "report_files"


@dataclass
class Run:
    path: Path
    info: dict
    keys: dict

    @property
    def label(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.keys.items())

    @property
    def stem(self) -> str:
        """A file-name stem unique among the report's runs (folder names repeat across studies,
        e.g. gpt2_seed0 in a GPT-2 and a Llama study): its key values."""
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", "-".join(str(v) for v in self.keys.values()))

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)


def is_run(path: Path) -> bool:
    """A pretraining run that ended (finished, or stopped on divergence) with its records."""
    folder = RunFolder(path)
    return folder.has_ended() and folder.records.is_file()


def is_mlp_study(path: Path) -> bool:
    return (path / "summary.json").is_file() and (path / "results.csv").is_file()


def discover(paths) -> tuple[list[Path], list[Path]]:
    """(run folders, MLP study folders) in the given folders or one level below them."""
    runs, mlp = [], []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{str(p)!r} is not a folder")
        found = False
        for cand in [p, *sorted(c for c in p.iterdir() if c.is_dir())]:
            if is_run(cand):
                runs.append(cand)
                found = True
            elif is_mlp_study(cand):
                mlp.append(cand)
                found = True
        if not found:
            raise ValueError(
                f"{str(p)!r} holds no finished pretraining run ({VARIANCE_FILE} + {RUN_INFO} or "
                f"{DIVERGED}), "
                f"study of runs, or MLP study (summary.json + results.csv)"
            )
    return runs, mlp


def scheme_label(info: dict) -> str:
    init = info["init"]
    return (
        f"{init['scheme']}:{init['std']:g}"
        if init["scheme"] == "normal" and init.get("std")
        else init["scheme"]
    )


def model_type(info: dict) -> str:
    """The model family of a run (``gpt2``, ``llama``); ``gpt2`` for runs that predate Llama."""
    return info.get("model_type") or info["config"]["model"].get("model_type") or "gpt2"


#: What tells the runs of a study apart besides scheme and seed, each read from the run's
#: training config; a run's keys hold those that differ between the runs of the report.
SETTINGS = {
    "lr": lambda t: t["learning_rate"],
    "schedule": lambda t: str(t["lr_scheduler_type"]),
    "warmup": lambda t: t["warmup_steps"],
    "optimizer": lambda t: str(t["optim"]) + (f":{t['optim_args']}" if t.get("optim_args") else ""),
}
GROUP_KEYS = ("model", "scheme", *SETTINGS)  # a run group: every key but the seed


def load_runs(paths: list[Path]) -> list[Run]:
    """The runs, labelled by scheme and seed and, when they differ between runs, model family
    (first), learning rate and schedule."""
    infos = [RunFolder(p).read_info() for p in paths]
    tr = [i["config"]["training"] for i in infos]
    varied = [k for k, read in SETTINGS.items() if len({read(t) for t in tr}) > 1]
    families = {model_type(i) for i in infos}
    runs = []
    for p, info, t in zip(paths, infos, tr):
        keys = {"model": model_type(info)} if len(families) > 1 else {}
        keys.update(scheme=scheme_label(info), seed=info["seed"])
        keys.update({k: SETTINGS[k](t) for k in varied})
        runs.append(Run(p, info, keys))
    return sorted(runs, key=lambda r: tuple(str(v) for v in r.keys.values()))


def records_table(runs: list[Run]) -> pd.DataFrame:
    return pd.concat([read_records(r.folder.records, **r.keys) for r in runs], ignore_index=True)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


CONFIG_KEYS = (
    "model.model_type",
    "model.n_layer",
    "model.n_embd",
    "model.n_head",
    "model.n_kv_head",
    "model.n_inner",
    "data.dataset_name",
    "data.block_size",
    "data.vocab_size",
    "training.max_steps",
    "training.per_device_train_batch_size",
    "training.gradient_accumulation_steps",
    "training.learning_rate",
    "training.lr_scheduler_type",
    "training.warmup_steps",
    "training.weight_decay",
    "training.adam_beta2",
    "training.max_grad_norm",
    "run.variance_steps",
    "run.attention_probe_blocks",
    "run.attention_probe_steps",
)


def run_names(runs: list[Run]) -> list[str]:
    """Each run's folder name, or ``study/run`` when folder names repeat across the folders given
    (two studies' ``gpt2_seed0``)."""
    names = [r.path.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.path.parent.name}/{r.path.name}" for r in runs]


def configs_tables(runs: list[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(settings shared by every run, settings that differ: one row per run, so a study of many
    runs stays as wide as its few differing settings)."""
    flat = {name: _flat(r.info["config"]) for name, r in zip(run_names(runs), runs)}
    for name, r in zip(flat, runs):
        flat[name].update(
            {
                "init.scheme": scheme_label(r.info),
                "seed": r.info["seed"],
                "n_parameters": r.info.get("n_parameters"),
            }
        )
    keys = ["init.scheme", "seed", "n_parameters", *CONFIG_KEYS, "training.optim"]
    table = pd.DataFrame({name: {k: str(f.get(k)) for k in keys} for name, f in flat.items()})
    same = table.nunique(axis=1) == 1
    shared = table[same].iloc[:, :1].rename(columns={table.columns[0]: "value"})
    shared.index.name = "setting"
    differ = table[~same].T
    differ.index.name = "run"
    return shared.reset_index(), differ.reset_index()


def results_table(runs: list[Run]) -> pd.DataFrame:
    """Per run: steps trained, losses, perplexity, accuracy and runtime (empty for a run that
    diverged, with the step it diverged at)."""
    rows = []
    for r in runs:
        i = r.info
        rows.append(
            {
                **r.keys,
                "steps": i.get("optimizer_steps"),
                "train_loss": i.get("train_loss"),
                "eval_loss": i.get("eval_loss", math.nan),
                "perplexity": i.get("perplexity", math.nan),
                "next_token_accuracy": i.get("next_token_accuracy"),
                **spike_columns(i.get("spikes")),
                "train_runtime_s": i.get("train_runtime_s"),
                "diverged_at_step": i.get("diverged_at_step"),
            }
        )
    return pd.DataFrame(rows)


def spike_columns(spikes: dict | None) -> dict:
    """A run's spikes for the results table: how many, the score, the updates skipped (None in a
    run from before the spike monitor; the score None when no step was monitored)."""
    spikes = spikes or {}
    return {
        "spikes": spikes.get("count"),
        "spike_score": spikes.get("score"),
        "skipped_updates": spikes.get("skipped_updates"),
    }


def scheme_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of eval loss and perplexity per run group (scheme and settings)."""
    group = [c for c in results.columns if c in GROUP_KEYS]
    agg = results.groupby(group, sort=True).agg(
        seeds=("seed", "count"),
        eval_loss_mean=("eval_loss", "mean"),
        eval_loss_std=("eval_loss", "std"),
        perplexity_mean=("perplexity", "mean"),
        perplexity_std=("perplexity", "std"),
    )
    return agg.reset_index()


def train_loss_curves(run: Run) -> pd.DataFrame | None:
    """(step, loss) of the training loss the Trainer logged to TensorBoard (``train/loss``), every
    logged point; a step logged twice (a resumed run repeats the steps after its checkpoint) keeps
    the later event file's value, as the variance records keep the latest."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    rows = []
    for events in sorted((run.path / TENSORBOARD_DIR).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags().get("scalars", []):
            rows += [(e.step, e.value) for e in acc.Scalars("train/loss")]
    return (
        pd.DataFrame(rows, columns=["step", "loss"])
        .drop_duplicates("step", keep="last")
        .sort_values("step")
        if rows
        else None
    )


def loss_figure(runs: list[Run], path: Path):
    """The logged training loss of every run, one colour per run group (scheme and settings); a
    log y axis when the losses span more than 20x (a diverged run)."""
    from hf_init.core.figures import pyplot, save_figure

    curves = [(r, train_loss_curves(r)) for r in runs]
    curves = [(r, c) for r, c in curves if c is not None]  # None: no loss logged
    if not curves:
        return None
    plt = pyplot()

    def group(r):
        return ", ".join(f"{k} {v}" for k, v in r.keys.items() if k != "seed")

    groups = sorted({group(r) for r, _ in curves})
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")  # tab20 pairs pale shades
    colors = {g: cmap(i % cmap.N) for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    seen = set()
    for r, c in curves:
        g = group(r)
        marker = "o" if len(c) < 3 else None  # a run that stopped early: its few points
        label = g * (g not in seen)
        ax.plot(
            c["step"], c["loss"], color=colors[g], lw=1.2, alpha=0.8, marker=marker, label=label
        )
        seen.add(g)
    losses = pd.concat([c["loss"] for _, c in curves])
    losses = losses[np.isfinite(losses) & (losses > 0)]
    if len(losses) and losses.max() > 20 * losses.min():
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (logged mean)")
    ax.set_title("training loss, every run (one colour per scheme and setting)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=1 + len(groups) // 12)
    return save_figure(fig, path)


def run_figures(run: Run, files: Path, table: pd.DataFrame) -> list[tuple[str, Path]]:
    """Q/K/V variance and attention figures of one run (drawn from its records)."""
    from hf_init.lm.plots import attention_vs_step, variance_vs_step
    from hf_init.lm.variance import variance_table

    stem = run.stem
    out = [
        (
            f"Q/K/V weight variance, {run.label}",
            variance_vs_step(variance_table(table), files / f"{stem}_qkv_variance.png"),
        )
    ]
    att = attention_vs_step(table, files / f"{stem}_attention.png", title=run.label)
    if att is not None:
        out.append((f"attention logit std and entropy, {run.label}", att))
    return out


def equilibration_summary(eq: pd.DataFrame) -> pd.DataFrame:
    """Per run group (scheme and settings) and projection, over seeds and layers: median relative
    change, the median early growth rate of the shallow and the deep third of the layers, the
    median equilibration step of each third, the share of curves that never equilibrated, and the
    median learning rate at equilibration as a fraction of the peak."""
    group = [c for c in eq.columns if c in GROUP_KEYS] + ["projection"]
    n_layer = int(eq["layer"].max()) + 1
    third = max(1, n_layer // 3)
    eq = eq.assign(
        depth=np.where(
            eq["layer"] < third,
            "shallow",
            np.where(eq["layer"] >= n_layer - third, "deep", "middle"),
        )
    )
    rows = []
    for key, sub in eq.groupby(group, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        sh, dp = sub[sub["depth"] == "shallow"], sub[sub["depth"] == "deep"]
        rows.append(
            {
                **dict(zip(group, key)),
                "rel_change_median": sub["relative_change"].median(),
                "growth_shallow": sh["early_growth_rate"].median(),
                "growth_deep": dp["early_growth_rate"].median(),
                "eq_step_shallow": sh["equilibration_step"].median(),
                "eq_step_deep": dp["equilibration_step"].median(),
                "never_equilibrated": float(sub["equilibration_step"].isna().mean()),
                "lr_fraction_at_eq": sub["lr_fraction_of_peak"].median()
                if "lr_fraction_of_peak" in sub
                else math.nan,
            }
        )
    return pd.DataFrame(rows)


def attention_summary(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per run keys: attention logit std and entropy (mean over layers and heads) at the first and
    the last record step, and the layer with the lowest final entropy."""
    att = table[(table["role"] == "attn")]
    if att.empty:
        return pd.DataFrame()
    rows = []
    for key, sub in att.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        first, last = sub["step"].min(), sub["step"].max()
        row = dict(zip(keys, key))
        for stat in ("logit_std", "entropy"):
            s = sub[sub["statistic"] == stat]
            row[f"{stat}_init"] = s[s["step"] == first]["value"].mean()
            row[f"{stat}_final"] = s[s["step"] == last]["value"].mean()
        ent = (
            sub[(sub["statistic"] == "entropy") & (sub["step"] == last)]
            .groupby("layer")["value"]
            .mean()
        )
        row["lowest_entropy_layer"] = int(ent.idxmin())
        row["final_step"] = int(last)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- MLP studies


def mlp_study_contents(folder: Path) -> tuple[dict, pd.DataFrame, list[Path]]:
    """(summary.json, per-configuration means of results.csv's numeric columns, PNG figures)."""
    summary = json.loads((folder / "summary.json").read_text())
    results = pd.read_csv(folder / "results.csv")
    keys = [
        c
        for c in ("depth", "std", "scheme", "init", "activation", "optimizer")
        if c in results.columns
    ]
    numeric = [c for c in results.select_dtypes("number").columns if c not in (*keys, "seed")]
    means = results.groupby(keys, sort=True)[numeric].mean().reset_index() if keys else results
    return summary, means, sorted(folder.glob("*.png"))


# ---------------------------------------------------------------- output


class Document:
    """Sections as markdown and HTML at once: headings, text, tables, figures."""

    def __init__(self, files: Path, md_dir: Path):
        self.md: list[str] = []
        self.html: list[str] = []
        self.files = files
        self.md_dir = md_dir

    def heading(self, text: str, level: int = 2):
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str):
        self.md.append(text + "\n")
        self.html.append(_md_to_html(text))

    def table(self, df: pd.DataFrame, digits: int = 4):
        from hf_init.lm.equilibration import to_markdown

        if df is None or df.empty:
            return
        text = to_markdown(df, digits=digits)
        self.md.append(text + "\n")
        self.html.append(_md_to_html(text))

    def figure(self, caption: str, path: Path | None):
        if path is None:
            return
        path = Path(path)
        rel = path.relative_to(self.md_dir) if path.is_relative_to(self.md_dir) else path
        self.md.append(f"![{caption}]({rel.as_posix()})\n")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def write(self, md_path: Path, html_path: Path) -> list[Path]:
        """The markdown file and the self-contained HTML page, each written atomically."""
        md = "\n".join(self.md)
        page = (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>hf-init report</title>'
            f"<style>{STYLE}</style></head><body>" + "\n".join(self.html) + "</body></html>"
        )
        return [
            write_atomic(md_path, lambda f: f.write(md)),
            write_atomic(html_path, lambda f: f.write(page)),
        ]


def _md_to_html(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
    "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}"
    "figcaption{font-size:13px;color:#555}code{background:#f3f3f3}"
)


def write_report(paths, output_dir) -> list[Path]:
    """Build report.md (+ report_files/) and report.html in ``output_dir`` from the folders."""
    run_dirs, mlp_dirs = discover(paths)  # bad folders are refused before anything is written
    out = Path(output_dir)
    files = out / FILES_DIR
    files.mkdir(parents=True, exist_ok=True)
    doc = Document(files, out)
    doc.heading("hf-init report", 1)
    doc.text("Sources: " + ", ".join(f"`{p}`" for p in map(str, paths)) + ".")
    if run_dirs:
        pretraining_sections(doc, load_runs(run_dirs), paths)
    for folder in mlp_dirs:
        mlp_study_section(doc, folder)
    return doc.write(out / REPORT_MD, out / REPORT_HTML)


def pretraining_sections(doc: Document, runs: list[Run], paths) -> None:
    """The sections on pretraining runs: the study command (when a folder is a study), configs,
    loss and perplexity, figures per scheme, equilibration and the paper's claims."""
    for study in (Path(p) / STUDY_FILE for p in paths):
        if study.is_file():
            doc.text(f"Study command: `{json.loads(study.read_text())['command']}`")
    configs_section(doc, runs)
    results_section(doc, runs)
    table = records_table(runs)
    figures_section(doc, runs, table)
    equilibration_section(doc, table)
    stability_section(doc, runs, table)
    if "schedule" in runs[0].keys:
        coupling_section(doc, table)


def configs_section(doc: Document, runs: list[Run]) -> None:
    doc.heading("Configurations")
    shared, differ = configs_tables(runs)
    doc.text(f"{len(runs)} pretraining runs. Settings shared by every run:")
    doc.table(shared)
    if len(runs) > 1 and set(differ.columns) <= {"run", "init.scheme", "seed"}:
        doc.text("The runs differ in scheme and seed only, as their names say.")
    elif len(runs) > 1:
        doc.text("Settings that differ (one row per run):")
        doc.table(differ)


def results_section(doc: Document, runs: list[Run]) -> None:
    doc.heading("Loss and perplexity")
    results = results_table(runs)
    doc.text(
        "Final evaluation on the held-out split (eval loss = mean next-token cross-entropy, "
        "perplexity = exp(eval loss)); train_loss = mean logged training loss over the run; "
        "spikes = steps whose training loss or gradient norm was more than the run's threshold "
        "(default 6) standard deviations above the mean of its previous window (default 128) of "
        "steps; spike_score = spikes / steps with a full window (empty: the run was shorter than "
        "its window); skipped_updates: with --skip_spike_updates."
    )
    doc.table(results)
    if len(runs) > 1:
        doc.text("Per scheme, over seeds (std with ddof=1; NaN with one seed):")
        doc.table(scheme_summary(results))
    doc.figure("training loss of every run", loss_figure(runs, doc.files / "training_loss.png"))


def figures_section(doc: Document, runs: list[Run], table: pd.DataFrame) -> None:
    """Q/K/V variance and attention figures of one run per scheme (its lowest seed), and the
    attention summary of every run."""
    doc.heading("Q/K/V variance and attention, per scheme")
    doc.text(
        "One run per scheme (its lowest seed): weight variance of Q, K, V per layer (shallow "
        "dark, deep yellow), and on a fixed probe batch of held-out blocks the std of the "
        "attention logits q.k/sqrt(d_head) and the mean attention entropy, per layer (mean over "
        "heads)."
    )
    shown = set()
    for r in runs:
        group = tuple(v for k, v in r.keys.items() if k != "seed")
        if group in shown:
            continue
        shown.add(group)
        sub = table
        for k, v in r.keys.items():
            sub = sub[sub[k] == v]
        for caption, path in run_figures(r, doc.files, sub):
            doc.figure(caption, path)
    att = attention_summary(table, list(runs[0].keys))
    if not att.empty:
        doc.text("Attention, mean over layers and heads, at the first and the last record step:")
        doc.table(att)


def variance_and_rate_records(table: pd.DataFrame) -> pd.DataFrame:
    """The records the equilibration and coupling tables read: every run's Q/K/V weight
    variances and learning rates (without the attention probe's head column)."""
    from hf_init.lm.equilibration import PROJECTIONS

    chosen = table[
        ((table["statistic"] == "var") & table["role"].isin(list(PROJECTIONS)))
        | (table["statistic"] == "learning_rate")
    ]
    return chosen.drop(columns=[c for c in ("head",) if c in chosen])


def equilibration_section(doc: Document, table: pd.DataFrame) -> None:
    """The equilibration table and the paper's claims, from the Q/K/V variances and learning
    rates of every run (each also written as CSV next to the report)."""
    from hf_init.lm.equilibration import check_claims, claims_markdown, equilibration_table

    variances = variance_and_rate_records(table)
    eq = equilibration_table(variances)
    eq.to_csv(doc.files / "equilibration.csv", index=False)
    doc.heading("Equilibration")
    doc.text(
        "Per scheme and projection, medians over seeds and layers (shallow / deep = first / last "
        "third of the layers). growth = early growth rate of ln variance per step; eq_step = "
        "equilibration step (NaN: never within the tolerance); lr_fraction_at_eq = learning rate "
        "at the equilibration step / its peak (near 0: the schedule, not the weights, settled). "
        f"Every (run, projection, layer): `{FILES_DIR}/equilibration.csv`."
    )
    doc.table(equilibration_summary(eq))
    doc.heading("The paper's claims")
    verdicts, per_seed = check_claims(variances)
    per_seed.to_csv(doc.files / "claims_per_seed.csv", index=False)
    doc.text(claims_markdown(verdicts))
    doc.text(f"Per-seed statistics: `{FILES_DIR}/claims_per_seed.csv`.")


def run_endings(runs: list[Run], chance: float) -> pd.DataFrame:
    """Per run: its keys, final_loss (eval loss; NaN for a run stopped on divergence), diverged
    and divergence_step (:mod:`hf_init.lm.stability`)."""
    from hf_init.lm import stability as S

    rows = []
    for r in runs:
        stopped = r.info.get("diverged_at_step")
        loss = r.info.get("eval_loss", math.nan)
        diverged = S.diverged(stopped, loss, chance)
        curve = train_loss_curves(r) if diverged and stopped is None else None
        step = S.divergence_step(stopped, curve, chance) if diverged else math.nan
        rows.append({**r.keys, "final_loss": loss, "diverged": diverged, "divergence_step": step})
    return pd.DataFrame(rows)


def stability_section(doc: Document, runs: list[Run], table: pd.DataFrame) -> None:
    """Learning-rate sensitivity (when the runs cross learning rates), and per run: divergence,
    attention-entropy collapse and logit growth, and whether collapse came first."""
    from hf_init.lm import stability as S

    keys = list(runs[0].keys)
    chance = S.chance_loss(runs[0].info["vocab_size"])
    block = runs[0].info["blocks"]["block_size"]
    endings = run_endings(runs, chance)
    doc.heading("Stability: learning rate, attention logits and entropy")
    doc.text(
        f"Chance loss L0 = ln(vocab size) = {chance:.3f}: a run diverged when it stopped on "
        "non-finite values or ended with eval loss >= L0 (its divergence step: where it stopped, "
        "or the first logged step after its lowest training loss with loss >= L0). A head's "
        f"attention collapsed when its probe entropy fell below {S.COLLAPSE_FRACTION:g} x "
        f"{S.uniform_entropy(block):.3f} nats, the entropy of uniform causal attention over "
        f"{block}-token blocks (mean over positions of ln(t + 1)); logit growth = last / first "
        "record of a layer's attention-logit std (mean over heads)."
    )
    if "lr" in keys:
        lr_sensitivity_part(doc, endings, keys, chance)
    heads = S.head_collapse(table, keys, block)
    heads.to_csv(doc.files / "attention_heads.csv", index=False)
    growth = S.logit_growth(table, keys)
    stability = S.run_stability(endings, heads, growth, keys)
    doc.table(stability)
    if len(growth):
        doc.text("Attention-logit growth (last / first record) per layer:")
        wide = growth.pivot_table(index=keys, columns="layer", values="growth")
        wide.columns = [f"layer {c}" for c in wide.columns]
        doc.table(wide.reset_index(), digits=3)
    doc.text(collapse_sentence(stability) + f" Every head: `{FILES_DIR}/attention_heads.csv`.")
    collapsed = heads[heads["collapse_step"].notna()] if len(heads) else heads
    if len(collapsed):
        shown = collapsed.sort_values("collapse_step").head(COLLAPSED_SHOWN)
        doc.text(f"Collapsed heads, earliest first ({len(shown)} of {len(collapsed)}):")
        doc.table(shown)


COLLAPSED_SHOWN = 40  # collapsed heads listed in the report (all of them: attention_heads.csv)


def lr_sensitivity_part(doc: Document, endings: pd.DataFrame, keys: list[str], chance: float):
    """Final loss against learning rate (table and figure) and the LR sensitivity per group."""
    from hf_init.lm import stability as S
    from hf_init.lm.plots import loss_vs_learning_rate

    group = [k for k in keys if k not in ("seed", "lr")]
    results = endings.assign(chance_loss=chance)
    capped = results.assign(capped=np.fmin(results["final_loss"].fillna(np.inf), chance))
    doc.text(
        "Final eval loss against the peak learning rate (mean over seeds, capped at L0; a "
        "diverged run counts as L0). LR sensitivity (Wortsman et al. 2023): the mean over the "
        "learning rates of (capped loss - the best one), in nats; 0 = every rate as good as the "
        "best."
    )
    wide = capped.pivot_table(index=group, columns="lr", values="capped", aggfunc="mean")
    wide.columns = [f"lr {c:g}" for c in wide.columns]
    doc.table(wide.reset_index())
    doc.table(S.lr_sensitivity(results, group))
    labelled = capped.assign(group=capped[group].astype(str).agg(", ".join, axis=1))
    figure = loss_vs_learning_rate(labelled, doc.files / "loss_vs_lr.png", chance)
    doc.figure("final loss against learning rate", figure)


def collapse_sentence(stability: pd.DataFrame) -> str:
    """Whether entropy collapse preceded divergence, counted over the runs."""
    div = stability[stability["diverged"]]
    collapsed = stability["collapsed_heads"].fillna(0) > 0
    first = div["collapse_before_divergence"].eq(True).sum()
    return (
        f"{len(div)} of {len(stability)} runs diverged; in {first} of them a head collapsed "
        f"before the divergence step; {int(collapsed[~stability['diverged']].sum())} of the "
        f"{int((~stability['diverged']).sum())} runs that did not diverge had a collapsed head."
    )


def coupling_section(doc: Document, table: pd.DataFrame) -> None:
    """Equilibration per schedule, warm-up and optimizer, and whether it follows the schedule or
    the weights (:func:`hf_init.lm.equilibration.coupling_verdicts`)."""
    from hf_init.lm import equilibration as E

    coupling = E.coupling_table(variance_and_rate_records(table))
    doc.heading("Schedule and optimizer coupling")
    doc.text(
        "Per run group over seeds, layers and Q/K/V: the share of curves that settled (left the "
        f"{E.TOLERANCE:g} band around their final level, then stayed in it for at least the last "
        f"{E.STAY:g} of the run), that have no equilibration step at all, and "
        "the median equilibration step and learning rate there / its peak of the settled ones. "
        "Does equilibration follow the weights or the schedule? Each constant schedule against "
        f"the decaying ones of the same settings: 'weights' when >= {E.SETTLED_SHARE:g} of the "
        f"curves settle under the constant rate and the equilibration steps agree within "
        f"{E.SAME_STEP:g} of the run; 'schedule' when fewer settle under the constant rate and "
        f"under decay they settle below {E.DECAYED_LR:g} of the peak rate; else 'mixed'."
    )
    doc.table(coupling)
    doc.table(E.coupling_verdicts(coupling))


def mlp_study_section(doc: Document, folder: Path) -> None:
    summary, means, figures = mlp_study_contents(folder)
    doc.heading(f"MLP study: {folder.name}")
    for k in ("command", "setup"):
        if k in summary:
            doc.text(f"{k}: `{summary[k]}`" if k == "command" else f"{k}: {summary[k]}")
    doc.text("Means over seeds of `results.csv`:")
    doc.table(means)
    for fig in figures:
        doc.figure(f"{folder.name}: {fig.name}", fig)
