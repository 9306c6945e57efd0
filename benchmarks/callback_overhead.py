"""Cost of the project's pretraining job against a plain Trainer on a stock GPT2LMHeadModel, at the
shapes and optimizer of configs/pretrain_tiny.yaml on random tokens.

    PYTHONPATH=. python benchmarks/callback_overhead.py                          # torch's threads
    PYTHONPATH=. python benchmarks/callback_overhead.py --threads 1 --rounds 20  # a busy machine
    PYTHONPATH=. python benchmarks/callback_overhead.py --precision    # float32 blocks vs float64
    PYTHONPATH=. python benchmarks/callback_overhead.py --threads 1 --direct 60  # recording vs step

Variants: plain Trainer; the project without recording; the project recording every 10 steps and
every step. Each round runs a chunk of K optimizer steps of every variant in a rotated order
(round 0 warms up and is dropped); reported per variant: the median step time and the median
over rounds of its ratio to the plain Trainer's chunk of the same round, in wall time and in this
process's CPU time (which does not count waiting for a core on a shared machine). ``--direct``
times one whole recording against one training step instead. What each variant holds, and the
figures: docs/benchmarks.md ("Pretraining: recording cost").
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from hf_init.lm.families import GPT2
from hf_init.lm.modeling import build_model
from hf_init.lm.recorders import block_statistics, build_recorders

CLOCKS = ("wall time", "process CPU time")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pretrain_tiny.yaml"


class ChunkTimer(TrainerCallback):
    """Wall time and this process's CPU time from the first step's start to the last step's end
    (added after every other callback, so its ``on_step_end`` runs after the recording)."""

    def __init__(self):
        self.start = self.end = None

    def on_step_begin(self, args, state, control, **kw):
        if self.start is None:
            self.start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kw):
        self.end = (time.perf_counter(), time.process_time())


class TokenBlocks(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def project_dataset(ids):
    """The random blocks as the project's data path hands them to the Trainer (the columns and
    format of ``hf_init.lm.data.blocks.tokenize_and_group``)."""
    from datasets import Dataset

    rows = ids.tolist()
    return Dataset.from_dict(
        {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": rows}
    )


def precision_check():
    """Relative error of the variance from float32 accumulation in blocks (merged in float64)
    and of the engine (float64), against an independent float64 torch.var(unbiased=False)."""
    from hf_init.core.moments import LocalPart, moments_from_sums, stacked_block_sums

    g = torch.Generator().manual_seed(0)
    shapes = {
        "tiny c_attn q (128 x 128)": (128, 128),
        "tiny mlp (128 x 512)": (128, 512),
        "124M c_attn q (768 x 768)": (768, 768),
        "124M mlp (768 x 3072)": (768, 3072),
    }
    print(
        "relative error of the variance vs float64 torch.var(unbiased=False), "
        "N(0, 0.02^2) and N(0.02, 0.02^2):"
    )
    for name, shape in shapes.items():
        worst = {}
        for mu in (0.0, 0.02):
            w = torch.randn(shape, generator=g) * 0.02 + mu
            ref = torch.var(w.double(), unbiased=False).item()
            for block in (16, 256, 4096):
                x = w.reshape(-1, block)
                s = x.sum(1).double().sum()
                q = (x * x).sum(1).double().sum()
                n = w.numel()
                var = (q / n - (s / n) ** 2).item()
                key = f"float32 blocks of {block}"
                worst[key] = max(worst.get(key, 0.0), abs(var - ref) / ref)
            var64 = moments_from_sums(stacked_block_sums([LocalPart(w, shape, (0, 0))], 1))[
                0, 0, 1
            ].item()
            worst["float64 engine"] = max(worst.get("float64 engine", 0.0), abs(var64 - ref) / ref)
        print(f"  {name:>26}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    print("float32 blocks miss 1e-12 by orders of magnitude: the recording stays float64.")


def direct_check(n: int):
    """CPU time of one whole recording (what the callback does at a recorded step: weight and
    gradient statistics, the records, the JSONL and TensorBoard sinks) against one training step
    of the plain model (forward, backward, clipping, AdamW), interleaved n times."""
    from torch.utils.tensorboard import SummaryWriter

    from hf_init.lm.recorders import variance_records
    from hf_init.lm.sinks import JsonlSink, TensorBoardSink

    cfg = yaml.safe_load(CONFIG.read_text())
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=cfg["n_layer"],
            n_embd=cfg["n_embd"],
            n_head=cfg["n_head"],
            vocab_size=cfg["vocab_size"],
            n_positions=cfg["block_size"],
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"],
        betas=(0.9, cfg["adam_beta2"]),
    )
    ids = torch.randint(
        0, cfg["vocab_size"], (cfg["per_device_train_batch_size"], cfg["block_size"])
    )
    with tempfile.TemporaryDirectory() as tmp:
        sinks = [
            JsonlSink(Path(tmp, "variance.jsonl")),
            TensorBoardSink(SummaryWriter(f"{tmp}/tb")),
        ]
        steps, records = [], []
        for i in range(n + 2):
            t0 = time.process_time()
            model(input_ids=ids, labels=ids).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
            opt.step()
            t1 = time.process_time()
            g = block_statistics(model, grads=True)
            w = block_statistics(model)
            recs = variance_records(i, w, g, roles=GPT2.block_roles)
            for sink in sinks:
                sink.write(recs)
            t2 = time.process_time()
            opt.zero_grad(set_to_none=False)
            if i >= 2:  # two warm-up pairs
                steps.append(t1 - t0)
                records.append(t2 - t1)
        for sink in sinks:
            sink.close()
    step, rec = statistics.median(steps), statistics.median(records)
    share = sorted(r / s for r, s in zip(records, steps))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"direct, {n} interleaved pairs, torch threads {torch.get_num_threads()}, "
        f"load average {load}: training step {step * 1e3:.1f} ms CPU, one whole recording "
        f"(statistics + records + JSONL + TensorBoard) {rec * 1e3:.2f} ms CPU = {rec / step:.2%} "
        f"(paired quartiles {share[len(share) // 4]:.2%} - {share[3 * len(share) // 4]:.2%}); "
        f"every 10 steps -> {rec / step / 10:.3%}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps_per_chunk", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice). On a machine shared with other "
        "jobs use 1: two spinning OpenMP threads per process collapse under contention",
    )
    p.add_argument(
        "--precision", action="store_true", help="only the float32-blocks vs float64 accuracy check"
    )
    p.add_argument(
        "--direct",
        type=int,
        default=0,
        metavar="N",
        help="only the direct measure: N interleaved pairs of "
        "(one training step, one whole recording)",
    )
    args = p.parse_args(argv)
    if args.precision:
        return precision_check()
    if args.direct:
        if args.threads:
            torch.set_num_threads(args.threads)
        return direct_check(args.direct)
    if args.steps_per_chunk % 10:
        p.error("--steps_per_chunk must be a multiple of 10 (the recording interval)")
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = yaml.safe_load(CONFIG.read_text())
    shape = dict(
        n_layer=cfg["n_layer"],
        n_embd=cfg["n_embd"],
        n_head=cfg["n_head"],
        vocab_size=cfg["vocab_size"],
        n_positions=cfg["block_size"],
        resid_pdrop=cfg["dropout"],
        embd_pdrop=cfg["dropout"],
        attn_pdrop=cfg["dropout"],
        bos_token_id=0,
        eos_token_id=0,
    )
    batch, block = cfg["per_device_train_batch_size"], cfg["block_size"]
    torch.manual_seed(0)
    project_model = build_model(**shape)
    plain_model = GPT2LMHeadModel(GPT2Config(**shape))
    plain_model.load_state_dict(project_model.state_dict())
    ids = torch.randint(
        0,
        cfg["vocab_size"],
        (batch * args.steps_per_chunk, block),
        generator=torch.Generator().manual_seed(0),
    )
    plain_data, project_data = TokenBlocks(ids), project_dataset(ids)

    tmp = tempfile.TemporaryDirectory()
    variants = {
        "plain Trainer": None,
        "project, no recording": 0,
        "project, every 10 steps": 10,
        "project, every step": 1,
    }
    names = list(variants)
    times = {clock: {name: [] for name in names} for clock in CLOCKS}
    ratios = {clock: {name: [] for name in names} for clock in CLOCKS}
    record_cost = []
    for rnd in range(args.rounds + 1):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        chunk = {}
        for name in order:
            every = variants[name]
            out = Path(tmp.name, f"{rnd}-{names.index(name)}")
            targs = TrainingArguments(
                output_dir=str(out),
                max_steps=args.steps_per_chunk,
                per_device_train_batch_size=batch,
                learning_rate=cfg["learning_rate"],
                weight_decay=cfg["weight_decay"],
                adam_beta2=cfg["adam_beta2"],
                warmup_steps=cfg["warmup_steps"],
                lr_scheduler_type=cfg["lr_scheduler_type"],
                max_grad_norm=cfg["max_grad_norm"],
                logging_steps=cfg["logging_steps"],
                report_to=cfg["report_to"],
                save_strategy="no",
                eval_strategy="no",
                use_cpu=True,
                disable_tqdm=True,
                dataloader_num_workers=0,
                dataloader_pin_memory=False,
                seed=rnd,
            )
            if every is None:
                trainer = Trainer(model=plain_model, args=targs, train_dataset=plain_data)
            else:
                trainer = Trainer(
                    model=project_model,
                    args=targs,
                    train_dataset=project_data,
                    data_collator=default_data_collator,
                )
                if every:
                    build_recorders(trainer, out, every=every)
            timer = ChunkTimer()
            trainer.add_callback(timer)
            trainer.train()
            chunk[name] = [(e - s) / args.steps_per_chunk for s, e in zip(timer.start, timer.end)]
        # direct: one recording (weights + gradients of the last step, all layers, read to the host)
        batch_ids = ids[:batch]
        project_model(input_ids=batch_ids, labels=batch_ids).loss.backward()
        t0 = time.process_time()
        w, g = block_statistics(project_model), block_statistics(project_model, grads=True)
        torch.stack([w, g]).tolist()
        cost = time.process_time() - t0
        project_model.zero_grad(set_to_none=True)
        if rnd == 0:  # warm-up round
            continue
        record_cost.append(cost / chunk["plain Trainer"][1])
        for name in names:
            for clock in CLOCKS:
                times[clock][name].append(chunk[name][CLOCKS.index(clock)])
                ratios[clock][name].append(
                    chunk[name][CLOCKS.index(clock)] / chunk["plain Trainer"][CLOCKS.index(clock)]
                )
        print(
            f"round {rnd} (wall / cpu ms per step): "
            + ", ".join(f"{n} {chunk[n][0] * 1e3:.1f} / {chunk[n][1] * 1e3:.1f}" for n in names),
            flush=True,
        )

    def quartiles(xs):
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        return q[0], q[1], q[2]

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\nGPT-2 {shape['n_layer']} x {shape['n_embd']}, batch {batch} x {block}, "
        f"{args.rounds} interleaved rounds of {args.steps_per_chunk} steps, "
        f"torch threads {torch.get_num_threads()}, load average {load}"
    )
    for clock in CLOCKS:
        print(f"{clock}:")
        for name in names:
            lo, med, hi = quartiles(ratios[clock][name])
            print(
                f"{name:>24}: median step {statistics.median(times[clock][name]) * 1e3:7.1f} ms"
                f"   ratio to plain: median {med:.4f} (quartiles {lo:.4f} - {hi:.4f})"
            )
    lo, med, hi = quartiles(record_cost)
    print(
        "one recording's statistics (weights + gradients, all layers, to host, CPU time): "
        f"median {med:.2%} of a plain step's CPU time "
        f"(quartiles {lo:.2%} - {hi:.2%}); every 10 steps -> {med / 10:.3%}"
    )
    tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
