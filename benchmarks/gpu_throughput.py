"""Training throughput (tokens/s) and model FLOPs utilisation of GPT-2 with and without the Q/K/V
variance callback, on synthetic tokens (no data, no Hub). Default: GPT-2 small (124M, context
1024, batch 16, bf16, fused AdamW, TF32), meant for one GPU:

    python benchmarks/gpu_throughput.py                       # 124M on the GPU
    python benchmarks/gpu_throughput.py --n_layer 2 --n_embd 32 --n_head 2 --seq_len 16 \\
        --batch_size 2 --vocab_size 64 --steps 6 --warmup_steps 2 --every 2
                                          # tiny shape: runs on a CPU (the test does)

Prints one line per variant and, with --out, writes them as JSON. MFU = tokens/s x
(6 N + 12 L H Q T) / peak FLOP/s of the device (hf_init.lm.throughput: a small table of known
accelerators by name; null on a CPU or an unknown device). Timing starts after --warmup_steps
(compilation, allocator).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--vocab_size", type=int, default=50257)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=16, help="per device")
    p.add_argument(
        "--steps",
        type=int,
        default=60,
        help="optimizer steps per variant (timed after the warm-up)",
    )
    p.add_argument("--warmup_steps", type=int, default=10)
    p.add_argument("--every", type=int, default=10, help="the callback records every N steps")
    p.add_argument("--torch_compile", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args(argv)


class Clock:
    """A TrainerCallback timing the optimizer steps after the warm-up (device synchronized)."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        self.warmup, self.start, self.end, self.timed = warmup, None, None, 0

        outer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                outer._sync()
                if state.global_step == outer.warmup:
                    outer.start = time.perf_counter()
                elif state.global_step > outer.warmup:
                    outer.end, outer.timed = time.perf_counter(), state.global_step - outer.warmup

        self.callback = _CB()

    @staticmethod
    def _sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


class ListSink:
    def __init__(self):
        self.records = []

    def write(self, records):
        self.records += records

    def close(self):
        pass


def run_variant(a, with_callback: bool) -> dict:
    import tempfile

    import torch
    from transformers import Trainer, TrainingArguments

    from hf_init.lm.modeling import build_model
    from hf_init.lm.recorders import QKVVarianceCallback
    from hf_init.lm.throughput import device_name, mfu, model_flops_per_token

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model = build_model(
        n_layer=a.n_layer,
        n_embd=a.n_embd,
        n_head=a.n_head,
        vocab_size=a.vocab_size,
        n_positions=a.seq_len,
    )
    n_steps = a.warmup_steps + a.steps
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, a.vocab_size, (n_steps * a.batch_size, a.seq_len), generator=g)
    data = [{"input_ids": row, "labels": row} for row in ids]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=n_steps,
            per_device_train_batch_size=a.batch_size,
            learning_rate=6e-4,
            report_to="none",
            save_strategy="no",
            logging_steps=10**9,
            bf16=cuda,
            tf32=True if cuda else None,
            use_cpu=not cuda,
            optim="adamw_torch_fused" if cuda else "adamw_torch",
            torch_compile=a.torch_compile,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        clock = Clock(a.warmup_steps)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[clock.callback])
        sink = ListSink()
        if with_callback:
            trainer.add_callback(QKVVarianceCallback([sink], every=a.every))
        trainer.train()
    tokens = clock.timed * a.batch_size * a.seq_len
    seconds = clock.end - clock.start
    tps = tokens / seconds
    n_params = sum(p.numel() for p in model.parameters())
    fpt = model_flops_per_token(n_params, a.n_layer, a.n_head, a.n_embd // a.n_head, a.seq_len)
    device = "cuda:0" if cuda else "cpu"
    return {
        "callback": with_callback,
        "every": a.every if with_callback else None,
        "device": device_name(device) or "cpu",
        "n_parameters": n_params,
        "seq_len": a.seq_len,
        "batch_size": a.batch_size,
        "timed_steps": clock.timed,
        "seconds": seconds,
        "tokens_per_second": tps,
        "model_flops_per_token": fpt,
        "mfu": mfu(tps, fpt, device, 1, bf16=cuda),
        "records": len(sink.records),
        "torch_compile": a.torch_compile,
    }


def main(argv=None):
    a = parse(argv)
    results = [run_variant(a, with_callback=False), run_variant(a, with_callback=True)]
    for r in results:
        mfu_text = "n/a (unknown peak)" if r["mfu"] is None else f"{r['mfu']:.1%}"
        variant = "with" if r["callback"] else "without"
        print(
            f"{variant:7s} callback: "
            f"{r['tokens_per_second']:,.0f} tokens/s, MFU {mfu_text}, {r['device']}, "
            f"{r['n_parameters']:,} parameters, {r['timed_steps']} timed steps"
        )
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
