"""Cost of the attention probe (``hf_init.lm.attention_probe.attention_statistics`` on a fixed
batch of held-out blocks): the same GPT-2 training steps without it, with it every 10 steps (the
default record interval) and with it every step, interleaved.

    PYTHONPATH=. python benchmarks/attention_probe_overhead.py       # the init-study model, 12 x 64
    PYTHONPATH=. python benchmarks/attention_probe_overhead.py --n_embd 128 --rounds 7

A plain training loop (forward, backward, AdamW step; no Trainer) on random token blocks. Each
round runs a chunk of K optimizer steps of each variant in turn; reported: each variant's median
step time over rounds (round 0 dropped) and its ratio to no probe, and one probe call timed on its
own as a share of a step. Figures: docs/benchmarks.md ("Attention probe").
"""

import argparse
import statistics
import time

import torch

from hf_init.lm.attention_probe import attention_statistics
from hf_init.lm.modeling import build_model


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--probe_blocks", type=int, default=16)
    p.add_argument(
        "--chunk", type=int, default=20, help="optimizer steps per chunk (a multiple of 10)"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(
        n_layer=a.n_layer,
        n_embd=a.n_embd,
        n_head=a.n_head,
        vocab_size=a.vocab_size,
        n_positions=a.block_size,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(1)
    probe = torch.randint(0, a.vocab_size, (a.probe_blocks, a.block_size), generator=gen)

    def step():
        x = torch.randint(0, a.vocab_size, (a.batch_size, a.block_size), generator=gen)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = {"no probe": None, "probe every 10 steps": 10, "probe every step": 1}
    times = {v: [] for v in variants}
    probe_times = []
    for r in range(a.rounds + 1):
        for name, every in variants.items():
            t0 = time.perf_counter()
            for i in range(1, a.chunk + 1):
                step()
                if every and i % every == 0:
                    attention_statistics(model, probe)
            if r:
                times[name].append((time.perf_counter() - t0) / a.chunk)
        t0 = time.perf_counter()
        attention_statistics(model, probe)
        if r:
            probe_times.append(time.perf_counter() - t0)
    base = statistics.median(times["no probe"])
    print(
        f"GPT-2 {a.n_layer} x {a.n_embd}, {a.n_head} heads, batch {a.batch_size} x {a.block_size}, "
        f"probe {a.probe_blocks} blocks, {a.threads} thread(s), "
        f"{a.rounds} rounds of {a.chunk} steps per variant"
    )
    for name in variants:
        med = statistics.median(times[name])
        print(f"  {name:<22} {1000 * med:8.1f} ms/step  x{med / base:.3f}")
    pt = statistics.median(probe_times)
    print(
        f"  one probe call: {1000 * pt:.1f} ms = {pt / base:.2f} no-probe steps "
        f"(every 10 steps: +{100 * pt / base / 10:.1f}% of training time)"
    )


if __name__ == "__main__":
    main()
