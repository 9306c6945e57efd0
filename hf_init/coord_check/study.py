"""The coord check behind ``scripts/coord_check.py``: one model per (scheme, width, seed) trained
for a few steps, the RMS of its activations per layer and step, and log-log slopes against width.

microsoft/mup's idea: a parametrization is width-stable when every activation's typical coordinate
size stays the same as the model widens, at initialization and after updates. So the same depth,
head size, data, optimizer and learning rate are used at every width, and at each step ``s``
(0 = at initialization, ``s`` = after ``s`` AdamW updates) one forward pass on that step's
training batch records (statistic ``rms``, the root mean square over every entry):

- ``embeddings`` (layer null): the residual stream entering block 0 (token + position
  embeddings), over batch x positions x width;
- ``residual`` (layer i): the residual stream after block i, over batch x positions x width;
- ``attn_logits`` (layer i): ``q.k / sqrt(d_head)`` of block i, over batch x heads x the causal
  (query, key) pairs;
- ``mlp_out`` (layer i): what block i's MLP adds to the residual stream;
- ``output_logits`` (layer null): the LM head's logits, over batch x positions x vocabulary;

and role null the step's ``loss``. Keys: ``scheme`` (a registry name or ``normal:STD``),
``width``, ``seed``. The slope of log RMS against log width (one fit per seed, then the mean)
says how a quantity scales: ``width^slope``; :func:`verdict` calls it flat below a threshold.

Data: windows of the built-in corpus (Python's own English docs), tokenized with a ByteLevel BPE
trained on it (:mod:`hf_init.lm.data`); the same batches for every scheme and width of a seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from hf_init.core.cli import UsageError
from hf_init.core.moments import moments
from hf_init.core.records import make_record

ROLES = ("embeddings", "residual", "attn_logits", "mlp_out", "output_logits")

# A slope below this (in absolute value) is "flat": over the default 8x range of widths the RMS then
# moves by less than 8^0.1 = 1.23x, while the exponents of width theory gives at step 0 are 0, 1/2
# and 1; the seed standard error of a slope is far smaller (docs/coord_check.md).
SLOPE_THRESHOLD = 0.1
ADAM_BETAS = (0.9, 0.95)  # pretrain_tiny.yaml's adam_beta2; transformers' default beta1


def default_schemes() -> list[str]:
    """Every shipped scheme (:data:`hf_init.core.schemes.SCHEMES`); ``normal`` at GPT-2's 0.02."""
    from hf_init.core.schemes import SCHEMES

    return [f"{n}:0.02" if s.needs_std else n for n, s in SCHEMES.items()]


class GPT2Coord:
    """How the coord check builds and reads a GPT-2 (another ``--model_type`` gives the same two
    functions: build a model of a width, hook the activations of :data:`ROLES`)."""

    @staticmethod
    def build(scheme: str, init_std: float | None, width: int, args, vocab_size: int):
        """A GPT-2 of ``width`` with ``args.n_layer`` blocks of heads of ``args.head_dim``, built
        by :func:`hf_init.lm.modeling.build_model` (the scheme override), no dropout."""
        from hf_init.lm.modeling import build_model

        return build_model(
            init_scheme=scheme,
            init_std=init_std,
            n_layer=args.n_layer,
            n_embd=width,
            n_head=width // args.head_dim,
            vocab_size=vocab_size,
            n_positions=args.seq_len,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )

    @staticmethod
    def hook(model, rms: dict) -> list:
        """Forward hooks that put ``(role, layer) -> RMS`` of the embeddings and of each block's
        activations into ``rms``."""
        from hf_init.lm.recorders import model_blocks

        def put(key, value):
            rms[key] = moments(value).rms

        body = getattr(model, "transformer", model)
        handles = [body.drop.register_forward_hook(lambda m, a, o: put(("embeddings", None), o))]
        for i, block in enumerate(model_blocks(model)[1]):
            handles += [
                block.register_forward_hook(lambda m, a, o, i=i: put(("residual", i), o)),
                block.mlp.register_forward_hook(lambda m, a, o, i=i: put(("mlp_out", i), o)),
                block.attn.c_attn.register_forward_hook(
                    lambda m, a, o, i=i, attn=block.attn: put(
                        ("attn_logits", i), causal_attention_logits(attn, o)
                    )
                ),
            ]
        return handles


MODEL_TYPES = {"gpt2": GPT2Coord}


@torch.no_grad()
def causal_attention_logits(attn, qkv: torch.Tensor) -> torch.Tensor:
    """The logits ``q.k * scaling`` of every head at every causal (query, key) pair, float64,
    from the output of a ``GPT2Attention``'s fused ``c_attn``."""
    from hf_init.lm.attention_probe import attention_scaling, causal_logits, query_key_heads

    q, k = query_key_heads(attn, qkv.detach())
    logits, causal = causal_logits(q, k, attention_scaling(attn))
    return logits[..., causal]


def corpus_token_ids(vocab_size: int) -> tuple[np.ndarray, int]:
    """(token ids of the whole built-in corpus, documents joined by ``<|endoftext|>``; vocabulary
    size) with a ByteLevel BPE of ``vocab_size`` trained on it."""
    from hf_init.lm.data.builtin_corpus import builtin_corpus
    from hf_init.lm.data.tokenizer import train_bpe_tokenizer

    docs = builtin_corpus()
    tokenizer = train_bpe_tokenizer(docs, vocab_size)
    eos = tokenizer.eos_token_id
    ids = [i for doc in tokenizer(docs)["input_ids"] for i in (*doc, eos)]
    return np.asarray(ids, dtype=np.int64), len(tokenizer)


def token_batches(ids: np.ndarray, n: int, batch_size: int, seq_len: int, seed: int):
    """``n`` batches (n, batch_size, seq_len) of windows of ``ids`` at random starts (fixed by
    ``seed``)."""
    if len(ids) <= seq_len:
        raise UsageError(f"seq_len must be below the corpus' {len(ids)} tokens, got {seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len, size=(n, batch_size))
    return torch.from_numpy(ids[starts[..., None] + np.arange(seq_len)])


def record_order(key: tuple[str, int | None]) -> tuple[float, int]:
    """Sort key of a ``(role, layer)``: the embeddings, then block by block in :data:`ROLES`
    order, then the output logits."""
    role, layer = key
    position = -1 if role == "embeddings" else math.inf if layer is None else layer
    return position, ROLES.index(role)


def train_and_record(
    model, hook, batches: torch.Tensor, learning_rate: float, **keys
) -> list[dict]:
    """Records of ``rms`` per (role, layer) and the ``loss`` at steps 0..len(batches) - 1: step s
    is a forward pass on ``batches[s]`` after s AdamW updates (constant learning rate, no weight
    decay or clipping), each update on the batch its step recorded."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=ADAM_BETAS, weight_decay=0.0
    )
    model.train()
    rms: dict = {}
    handles = hook(model, rms)
    records = []
    try:
        for step, ids in enumerate(batches):
            last = step == len(batches) - 1
            with torch.set_grad_enabled(not last):
                out = model(input_ids=ids, labels=ids, use_cache=False)
            rms[("output_logits", None)] = moments(out.logits).rms
            records += [
                make_record(step, layer, role, {"rms": rms[role, layer]}, **keys)
                for role, layer in sorted(rms, key=record_order)
            ]
            records.append(make_record(step, None, None, {"loss": out.loss.item()}, **keys))
            rms.clear()
            if not last:
                out.loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        for h in handles:
            h.remove()
    return records


def run_coord_check(args: CoordCheckArguments, log=print) -> list[dict]:
    """Every (seed, scheme, width) of ``args``: build, train ``args.steps`` steps, record."""
    from hf_init.lm.study import parse_scheme

    adapter = MODEL_TYPES[args.model_type]
    ids, vocab_size = corpus_token_ids(args.vocab_size)
    records: list[dict] = []
    started = time.time()
    for seed in range(args.seeds):
        batches = token_batches(ids, args.steps + 1, args.batch_size, args.seq_len, seed)
        for spec in args.schemes:
            name, std = parse_scheme(spec)
            for width in args.widths:
                torch.manual_seed(seed)
                model = adapter.build(name, std, width, args, vocab_size)
                records += train_and_record(
                    model,
                    adapter.hook,
                    batches,
                    args.learning_rate,
                    scheme=spec,
                    width=width,
                    seed=seed,
                )
            log(f"seed {seed} {spec}: done ({time.time() - started:.0f}s)")
    return records


# --- slopes against width ---------------------------------------------------------------------


def verdict(slope: float, threshold: float = SLOPE_THRESHOLD) -> str:
    """``flat`` when |slope| < threshold, else ``grows`` / ``shrinks``; ``n/a`` when not finite."""
    if not math.isfinite(slope):
        return "n/a"
    if abs(slope) < threshold:
        return "flat"
    return "grows" if slope > 0 else "shrinks"


def rms_tables(frame) -> dict:
    """``(scheme, role, layer, step) -> DataFrame`` of the RMS, one row per seed and one column per
    width (sorted), from the long record table (``read_records``); layer ``None`` for whole-model
    activations."""
    import pandas as pd

    rms = frame[frame["statistic"] == "rms"]
    tables = {}
    for (scheme, role, layer, step), group in rms.groupby(
        ["scheme", "role", "layer", "step"], dropna=False, sort=False
    ):
        key = (scheme, role, None if pd.isna(layer) else int(layer), int(step))
        tables[key] = group.pivot_table(index="seed", columns="width", values="value").sort_index(
            axis=1
        )
    return tables


def slope_table(frame, threshold: float = SLOPE_THRESHOLD) -> list[dict]:
    """One row per (scheme, role, layer, step) of the long record table (``read_records``): the
    least-squares slope of ln RMS against ln width fitted per seed, its mean and standard error
    over seeds (nan for one seed), the mean RMS at the smallest and largest width, the verdict."""
    rows = []
    for (scheme, role, layer, step), table in rms_tables(frame).items():
        widths = np.asarray(table.columns, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(table.to_numpy())
        slopes = (
            np.polyfit(np.log(widths), logs.T, 1)[0]
            if np.isfinite(logs).all()
            else np.full(len(logs), np.nan)
        )
        slope = float(slopes.mean())
        sem = float(slopes.std(ddof=1) / math.sqrt(len(slopes))) if len(slopes) > 1 else math.nan
        mean = table.mean()
        rows.append(
            {
                "scheme": scheme,
                "role": role,
                "layer": layer,
                "step": step,
                "slope": slope,
                "slope_sem": sem,
                "rms_min_width": float(mean.iloc[0]),
                "rms_max_width": float(mean.iloc[-1]),
                "verdict": verdict(slope, threshold),
            }
        )
    return rows


def _quantity(row: dict) -> str:
    return row["role"] if row["layer"] is None else f"{row['role']} {row['layer']}"


def _by_scheme(rows: list[dict]) -> dict[str, dict[tuple, dict[int, dict]]]:
    """scheme -> (role, layer) in record order -> step -> row."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["scheme"], {}).setdefault((r["role"], r["layer"]), {})[r["step"]] = r
    return {
        scheme: dict(sorted(quantities.items(), key=lambda kv: record_order(kv[0])))
        for scheme, quantities in out.items()
    }


def slopes_markdown(rows: list[dict], threshold: float = SLOPE_THRESHOLD) -> str:
    """The slope table as Markdown: per scheme, a row per quantity and a column per step, each
    cell the slope (mean over seeds) and its verdict."""
    lines = [
        "# Coord check: slope of ln RMS against ln width",
        "",
        f"RMS ~ width^slope; flat when |slope| < {threshold:g}. Slopes: mean over seeds of the "
        "per-seed least-squares fit.",
    ]
    for scheme, quantities in _by_scheme(rows).items():
        steps = sorted({step for by_step in quantities.values() for step in by_step})
        lines += ["", f"## {scheme}", ""]
        lines.append("| quantity | " + " | ".join(f"step {s}" for s in steps) + " |")
        lines.append("|---" * (len(steps) + 1) + "|")
        for by_step in quantities.values():
            cells = [f"{by_step[s]['slope']:+.2f} {by_step[s]['verdict']}" for s in steps]
            lines.append(f"| {_quantity(by_step[steps[0]])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_lines(rows: list[dict]) -> list[str]:
    """One line per scheme: how many quantities are flat at the first and the last step, and the
    steepest one at the last step."""
    lines = []
    for scheme, quantities in _by_scheme(rows).items():
        steps = sorted({step for by_step in quantities.values() for step in by_step})
        parts = []
        for step in dict.fromkeys((steps[0], steps[-1])):
            at = [by_step[step] for by_step in quantities.values()]
            flat = sum(r["verdict"] == "flat" for r in at)
            parts.append(f"step {step}: {flat}/{len(at)} flat")
        steep = max(
            (by_step[steps[-1]] for by_step in quantities.values()),
            key=lambda r: abs(r["slope"]) if math.isfinite(r["slope"]) else math.inf,
        )
        lines.append(
            f"{scheme:<16} {'; '.join(parts)} (steepest at step {steps[-1]}: "
            f"{_quantity(steep)} {steep['slope']:+.2f})"
        )
    return lines


@dataclass
class CoordCheckArguments:
    """What ``scripts/coord_check.py`` builds, trains and measures; checked when made (one line
    on a bad value). Lists are space-separated on the command line."""

    output_dir: str = field(
        default="outputs/coord_check", metadata={"help": "folder the check writes"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace the results of an existing output folder"}
    )
    model_type: str = field(
        default="gpt2", metadata={"help": f"model family, of: {', '.join(MODEL_TYPES)}"}
    )
    schemes: list[str] = field(
        default_factory=default_schemes,
        metadata={"help": "init schemes (hf_init.core.schemes); normal:STD for scheme normal"},
    )
    widths: list[int] = field(
        default_factory=lambda: [64, 128, 256, 512],
        metadata={"help": "model widths (n_embd), each a multiple of --head_dim; at least two"},
    )
    n_layer: int = field(
        default=2, metadata={"help": "transformer blocks (the same at every width)"}
    )
    head_dim: int = field(
        default=32, metadata={"help": "width of an attention head (heads = width / head_dim)"}
    )
    steps: int = field(default=5, metadata={"help": "AdamW updates (records at steps 0..steps)"})
    seeds: int = field(default=3, metadata={"help": "seeds 0..N-1: model draws and data windows"})
    batch_size: int = field(default=8, metadata={"help": "sequences per step"})
    seq_len: int = field(default=64, metadata={"help": "tokens per sequence"})
    vocab_size: int = field(
        default=8192, metadata={"help": "BPE vocabulary trained on the built-in corpus"}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate, constant"})
    slope_threshold: float = field(
        default=SLOPE_THRESHOLD, metadata={"help": "|slope| below this is flat"}
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads (0: torch's choice)"})

    def __post_init__(self):
        from hf_init.core.schemes import get_scheme
        from hf_init.lm.data.tokenizer import MIN_VOCAB_SIZE
        from hf_init.lm.study import parse_scheme

        if self.model_type not in MODEL_TYPES:
            raise UsageError(
                f"unknown model_type {self.model_type!r}; valid: {', '.join(MODEL_TYPES)}"
            )
        if not self.schemes:
            raise UsageError("schemes must name at least one init scheme")
        if len(set(self.schemes)) < len(self.schemes):
            raise UsageError(f"--schemes names a scheme twice: {' '.join(self.schemes)}")
        for spec in self.schemes:
            get_scheme(parse_scheme(spec)[0])  # one line listing the valid names
        for name in ("n_layer", "head_dim", "seeds", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name, low in (("steps", 0), ("threads", 0), ("vocab_size", MIN_VOCAB_SIZE)):
            if getattr(self, name) < low:
                raise UsageError(f"--{name} must be >= {low}, got {getattr(self, name)}")
        if len(set(self.widths)) < 2:
            raise UsageError(f"--widths needs at least two different widths, got {self.widths}")
        if min(self.widths) < 1:
            raise UsageError(f"--widths must be >= 1, got {min(self.widths)}")
        bad = [w for w in self.widths if w % self.head_dim]
        if bad:
            raise UsageError(
                f"--widths must be multiples of --head_dim {self.head_dim}, got {bad[0]}"
            )
        for name in ("learning_rate", "slope_threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"--{name} must be finite and > 0, got {value}")
        self.widths = sorted(set(self.widths))
