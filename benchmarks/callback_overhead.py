"""Cost of QKVVarianceCallback: the same tiny GPT-2 training with and without it, interleaved.

    PYTHONPATH=. python benchmarks/callback_overhead.py            # 12 x 128, batch 8 x 64 (the tiny config)
    PYTHONPATH=. python benchmarks/callback_overhead.py --threads 1 --rounds 3   # on a busy machine

Three variants share one model and one data stream: no callback, the callback at the default
interval (every 10 steps, as in configs/pretrain_tiny.yaml) and the callback at every step (JSONL +
TensorBoard in a temp folder). Each round runs a chunk of K optimizer steps of each variant in
turn (K a multiple of the interval, so each chunk holds the same share of recording steps as a
long run); a chunk's step time is its wall time / K, timed from the first step's start to the last
step's end (the Trainer's setup is not counted). Reported: median step time over rounds per
variant, and its ratio to the no-callback median. The first round is a warm-up and is dropped.
Also reported, as a cross-check that is less sensitive to other load on the machine: the
median cost of one recording's statistics (weights + gradients), timed directly each round,
as a fraction of the no-callback median step time.
"""

import argparse
import statistics
import sys
import tempfile
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_init.callbacks import QKVVarianceCallback, block_statistics
from hf_init.modeling import build_model
from hf_init.sinks import JsonlSink, TensorBoardSink


class ChunkTimer(TrainerCallback):
    def __init__(self):
        self.start = self.end = None

    def on_step_begin(self, args, state, control, **kw):
        if self.start is None:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.end = time.perf_counter()


class RandomBlocks(torch.utils.data.Dataset):
    def __init__(self, n, block, vocab, seed=0):
        self.ids = torch.randint(0, vocab, (n, block), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--interval", type=int, default=10, help="the default recording interval (logging_steps)")
    p.add_argument("--steps_per_chunk", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice). On a machine shared with other jobs "
                        "use 1: two spinning OpenMP threads per process collapse under contention")
    args = p.parse_args(argv)
    if args.steps_per_chunk % args.interval:
        p.error("--steps_per_chunk must be a multiple of --interval")

    from torch.utils.tensorboard import SummaryWriter

    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, vocab_size=args.vocab_size,
                        n_positions=args.block_size)
    data = RandomBlocks(args.batch_size * args.steps_per_chunk, args.block_size, args.vocab_size)
    tmp = tempfile.TemporaryDirectory()
    writer = SummaryWriter(f"{tmp.name}/tb")
    variants = {"no callback": None, f"every {args.interval} steps": args.interval, "every step": 1}
    times = {name: [] for name in variants}
    record_cost = []
    for rnd in range(args.rounds + 1):
        for name, every in variants.items():
            timer = ChunkTimer()
            callbacks = [timer]
            if every is not None:
                sinks = [JsonlSink(f"{tmp.name}/{every}/variance.jsonl"), TensorBoardSink(writer)]
                callbacks.insert(0, QKVVarianceCallback(sinks, every=every))
            targs = TrainingArguments(output_dir=tmp.name, max_steps=args.steps_per_chunk,
                                      per_device_train_batch_size=args.batch_size, learning_rate=1e-3,
                                      logging_steps=args.interval, save_strategy="no", report_to="none",
                                      use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, seed=rnd)
            Trainer(model=model, args=targs, train_dataset=data, callbacks=callbacks).train()
            if rnd > 0:  # round 0 warms up
                times[name].append((timer.end - timer.start) / args.steps_per_chunk)
        batch = data.ids[: args.batch_size]
        model(input_ids=batch, labels=batch).loss.backward()
        t0 = time.perf_counter()
        block_statistics(model).tolist(), block_statistics(model, grads=True).tolist()
        if rnd > 0:
            record_cost.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    base = statistics.median(times["no callback"])
    print(f"GPT-2 {args.n_layer} x {args.n_embd}, batch {args.batch_size} x {args.block_size}, "
          f"{args.rounds} interleaved rounds of {args.steps_per_chunk} steps, torch threads {torch.get_num_threads()}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>16}: median step {med * 1e3:8.2f} ms  (min {min(ts) * 1e3:.2f}, max {max(ts) * 1e3:.2f})"
              f"  ratio {med / base:.4f}")
    cost = statistics.median(record_cost)
    print(f"one recording's statistics (weights + grads, all layers): median {cost * 1e3:.2f} ms = "
          f"{cost / base:.2%} of a step; every {args.interval} steps -> {cost / base / args.interval:.2%}")
    writer.close()
    tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
