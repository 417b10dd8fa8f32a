"""Training tokens/s: fromzero vs Hugging Face transformers, same config, same batches, one run.

    python benchmarks/train_speed.py                       # gpt2 + llama; fp32, bf16, bf16+compile
    python benchmarks/train_speed.py --arch gpt2 --modes fp32 bf16 --reps 8

Each step is forward + backward + AdamW on a batch of 16 x 256 tokens; the two models' steps are
interleaved so that drift in the machine's speed hits both alike. MFU counts 6N matmul FLOPs per
token (LM head included) plus attention, against the measured matmul peak of the same dtype.
"""

from __future__ import annotations

import argparse

import torch
from common import SIZE, fromzero_model, hf_model, interleaved, matmul_peak, training_step

BATCH = 16


def make_step(model: torch.nn.Module, kind: str, x: torch.Tensor, bf16: bool):
    labels = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], dim=1)  # fromzero takes shifted labels

    def loss() -> torch.Tensor:
        if kind == "hf":
            return model(input_ids=x, labels=x).loss  # transformers shifts internally
        return model(x, labels=labels)[1]

    return training_step(model, loss, bf16)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", nargs="+", default=["gpt2", "llama"])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16-compile"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=6)
    args = p.parse_args()
    torch.manual_seed(0)
    T = SIZE["max_seq_len"]
    x = torch.randint(0, SIZE["vocab_size"], (BATCH, T))
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"{'arch':<6} {'mode':<13} {'HF tok/s':>9} {'fromzero':>9} {'ratio':>6} {'HF MFU':>7} {'fz MFU':>7}")
    for arch in args.arch:
        for mode in args.modes:
            bf16, compiled = mode.startswith("bf16"), mode.endswith("compile")
            torch.manual_seed(0)
            fz = fromzero_model(arch)
            hf = hf_model(arch, fz)
            fz.train(), hf.train()
            flops = fz.flops_per_token(T)
            if compiled:
                fz, hf = torch.compile(fz), torch.compile(hf)
            steps = {"hf": make_step(hf, "hf", x, bf16), "fz": make_step(fz, "fz", x, bf16)}
            warm = args.warmup + (1 if compiled else 0)
            med = interleaved(steps, warm, args.reps)
            tps = {k: BATCH * T / v for k, v in med.items()}
            peak = peaks["bf16" if bf16 else "fp32"]
            print(f"{arch:<6} {mode:<13} {tps['hf']:>9,.0f} {tps['fz']:>9,.0f} {tps['fz'] / tps['hf']:>5.2f}x "
                  f"{tps['hf'] * flops / peak:>6.0%} {tps['fz'] * flops / peak:>6.0%}", flush=True)


if __name__ == "__main__":
    main()
