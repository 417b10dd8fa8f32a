"""The quickstart recipe: tokenizer → pretraining → evaluation → generations → fine-tuning.

It is `fromzero pretrain --config quickstart`, a results table, a few sample generations, then
`fromzero finetune --config finetune/sentiment-zh` on the pretrained model with a short budget,
kept in one readable function so it doubles as a tour of the Python API.
"""

from __future__ import annotations

from pathlib import Path

from fromzero.config import build
from fromzero.infer.generate import GenerationConfig, generate
from fromzero.model import load_model
from fromzero.recipes import load_recipe
from fromzero.recipes.finetune import FinetuneConfig, run_finetune
from fromzero.recipes.pretrain import PretrainConfig, run_pretrain
from fromzero.tokenizer import Tokenizer

PROMPTS = ["中国经济", "这本书", "今天天气", "人民日报"]


def run_quickstart(out_dir: str = "runs/quickstart", minutes: float | None = None,
                   finetune_minutes: float = 2.5) -> dict:
    # the demo is meant to be re-run into the same folder: each run replaces the last one
    overrides = [f"train.out_dir={out_dir}", "train.overwrite=true"]
    overrides += [f"train.max_minutes={minutes}"] if minutes else []
    cfg = build(PretrainConfig, load_recipe("quickstart", overrides))

    print("== 1/4 tokenizer + pretraining (causal LM) ==")
    summary = run_pretrain(cfg)

    print("\n== 2/4 evaluation ==")
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

    print("\n== 3/4 generations ==")
    ckpt = Path(summary["checkpoint"])
    model, tok = load_model(ckpt), Tokenizer.load(ckpt)
    for prompt in PROMPTS:
        greedy = generate(model, tok, prompt, GenerationConfig(max_new_tokens=40, temperature=0.0,
                                                               repetition_penalty=1.2))
        sampled = generate(model, tok, prompt, GenerationConfig(max_new_tokens=40, temperature=0.8, top_k=50,
                                                                top_p=0.95, seed=0))
        print(f"  [greedy]  {prompt}{greedy}")
        print(f"  [sampled] {prompt}{sampled}")

    print("\n== 4/4 fine-tuning the pretrained model on Chinese review sentiment ==")
    ft = build(FinetuneConfig, load_recipe("finetune/sentiment-zh", [
        f"model={summary['best_checkpoint']}", f"train.out_dir={out_dir}/sentiment", "train.overwrite=true",
        f"train.max_minutes={finetune_minutes}", "train.max_steps=400", "train.lr=1e-3", "train.eval_every=100",
    ]))
    ft_summary = run_finetune(ft)
    print(f"  sentiment test accuracy  {ft_summary['test_metric']:.3f}  (chance 0.5; "
          "TF-IDF + logistic regression on the same split: 0.847, see benchmarks/baseline_tfidf.py)")
    summary["finetune"] = ft_summary
    return summary
