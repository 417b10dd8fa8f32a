"""Generation tokens/s: fromzero's KV-cached decoding vs transformers' `model.generate`, one run.

    python benchmarks/generate_speed.py                 # gpt2 + llama, batch 1 and 8, greedy
    python benchmarks/generate_speed.py --arch gpt2 --batch 1 --reps 5

Prompt of 32 tokens, 256 new tokens, greedy, no early stop (no EOS), fp32, same weights shape
(6 layers, d 384, 6 heads, vocab 8192). Small models generate at a speed bound by Python
overhead per token, not by FLOPs, so this measures the decoding loop as much as the model.
"""

from __future__ import annotations

import argparse

import torch
from common import SIZE, fromzero_model, hf_model, interleaved

from fromzero.infer.generate import GenerationConfig, generate_ids

PROMPT, NEW = 32, 256


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", nargs="+", default=["gpt2", "llama"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    SIZE["max_seq_len"] = PROMPT + NEW
    print(f"{'arch':<6} {'batch':>5} {'HF tok/s':>9} {'fromzero':>9} {'ratio':>6}")
    for arch in args.arch:
        torch.manual_seed(0)
        fz = fromzero_model(arch).eval()
        hf = hf_model(arch, fz).eval()
        for B in args.batch:
            x = torch.randint(10, SIZE["vocab_size"], (B, PROMPT))
            gen = GenerationConfig(max_new_tokens=NEW, temperature=0.0)

            def run_hf() -> None:
                with torch.inference_mode():
                    out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW, min_new_tokens=NEW,
                                      do_sample=False, use_cache=True, pad_token_id=0)
                assert out.shape[1] == PROMPT + NEW

            def run_fz() -> None:
                out = generate_ids(fz, x, gen)
                assert out.shape[1] == PROMPT + NEW

            med = interleaved({"hf": run_hf, "fz": run_fz}, args.warmup, args.reps)
            tps = {k: B * NEW / v for k, v in med.items()}
            print(f"{arch:<6} {B:>5} {tps['hf']:>9,.0f} {tps['fz']:>9,.0f} {tps['fz'] / tps['hf']:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
