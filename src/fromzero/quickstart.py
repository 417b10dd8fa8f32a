"""The quickstart recipe: tokenizer → pretraining → evaluation → generations, on built-in data.

It is `fromzero pretrain --config quickstart` plus a results table and a few sample generations,
kept in one readable function so it doubles as a tour of the Python API.
"""

from __future__ import annotations

from pathlib import Path

from fromzero.config import build
from fromzero.infer.generate import GenerationConfig, generate
from fromzero.model.io import load_model
from fromzero.pretrain import PretrainConfig, run_pretrain
from fromzero.recipes import load_recipe
from fromzero.tokenizer import Tokenizer

PROMPTS = ["中国经济", "这本书", "今天天气", "人民日报"]


def run_quickstart(out_dir: str = "runs/quickstart", minutes: float | None = None) -> dict:
    overrides = [f"train.out_dir={out_dir}"] + ([f"train.max_minutes={minutes}"] if minutes else [])
    cfg = build(PretrainConfig, load_recipe("quickstart", overrides))

    print("== 1/3 tokenizer + pretraining (causal LM) ==")
    summary = run_pretrain(cfg)

    print("\n== 2/3 evaluation ==")
    rows = [
        ("model validation loss", f"{summary['val_loss']:.3f}"),
        ("model validation perplexity", f"{summary['val_perplexity']:.1f}"),
        ("unigram baseline perplexity", f"{summary['unigram_val_perplexity']:.1f}"),
        ("training steps", f"{summary['steps']}"),
        ("training tokens/s", f"{summary['tokens_per_sec']:,.0f}"),
        ("wall time (s)", f"{summary['wall_seconds']:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"  loss curve: {summary['plot']}")

    print("\n== 3/3 generations ==")
    ckpt = Path(summary["checkpoint"])
    model, tok = load_model(ckpt), Tokenizer.load(ckpt)
    for prompt in PROMPTS:
        greedy = generate(model, tok, prompt, GenerationConfig(max_new_tokens=40, temperature=0.0,
                                                               repetition_penalty=1.2))
        sampled = generate(model, tok, prompt, GenerationConfig(max_new_tokens=40, temperature=0.8, top_k=50,
                                                                top_p=0.95, seed=0))
        print(f"  [greedy]  {prompt}{greedy}")
        print(f"  [sampled] {prompt}{sampled}")
    return summary
