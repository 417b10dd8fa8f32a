"""Every fine-tuning strategy on one task and one pretrained backbone, same split and same budget:
the README's fine-tuning table.

    python benchmarks/finetune_strategies.py --recipe finetune/sentiment-zh \\
        --model runs/pt-small/checkpoints/best --steps 600
    python benchmarks/finetune_strategies.py --recipe finetune/ner-zh --model runs/bert-mlm-zh/encoder \\
        --steps 2000 --minutes 20 --parallel 2 --only full lora bitfit

Each strategy is one `fromzero finetune --config <recipe> model=<backbone> train.out_dir=<out>/<name>
train.max_steps=<steps> [train.max_minutes=<minutes>] <STRATEGIES[name]> <--extra>` subprocess, so
its wall time and peak RSS (read from its summary.json) are its own. Runs use OMP_NUM_THREADS =
--threads (default: cores // --parallel; on 2 cores, --parallel 2 runs two at a time with one thread
each, the fair way to use both cores). A strategy whose <out>/<name>/summary.json exists is skipped
(delete the folder to re-run it), so an interrupted table resumes where it stopped. A failed run
prints its stderr tail and shows as "failed"; the others go on. The markdown table is printed and
written to <out>/table.md, with the command line above it.

Rows: TF-IDF + logistic regression (classification tasks only; same task, split and training subset,
in-process, so no RSS), random initialisation (model=scratch with the backbone's architecture,
shape and tokenizer), pretrained full fine-tuning, then the frozen backbone and the PEFT methods
(the task head always trains with them). The learning rates below are the ones the recipes and the
README used where there was one (full: the recipe's; LoRA 2e-3, frozen + head 1e-3), otherwise a
plain guess in the recipe's "~1e-3..1e-2" range for parameter-efficient methods; none is tuned.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from fromzero.config import build, parse_overrides, to_dict
from fromzero.peft import PeftConfig
from fromzero.recipes import load_recipe
from fromzero.recipes.finetune import FinetuneConfig, ScratchConfig

# name -> (row label, the strategy's own CLI overrides). "scratch" also gets the backbone's shape
# (scratch_overrides below). PEFT defaults (PeftConfig): LoRA r=8 alpha=16 on the attention
# projections, adapters of width 64, 16 virtual tokens for prefix / prompt tuning.
STRATEGIES: dict[str, tuple[str, list[str]]] = {
    "scratch": ("random initialisation, full", ["model=scratch"]),
    "full": ("pretrained, full", []),
    "frozen": ("pretrained, frozen backbone + head", ["peft.freeze=all_but_head", "train.lr=1e-3"]),
    "lora": ("pretrained, LoRA r={r}", ["peft.method=lora", "train.lr=2e-3"]),
    "adapter": ("pretrained, adapters (width {adapter_size})", ["peft.method=adapter", "train.lr=2e-3"]),
    "prefix": ("pretrained, prefix tuning ({num_virtual_tokens} slots)", ["peft.method=prefix", "train.lr=5e-3"]),
    "prompt": ("pretrained, prompt tuning ({num_virtual_tokens} tokens)", ["peft.method=prompt", "train.lr=1e-2"]),
    "bitfit": ("pretrained, BitFit", ["peft.method=bitfit", "train.lr=5e-3"]),
    "ia3": ("pretrained, IA3", ["peft.method=ia3", "train.lr=5e-3"]),
}
TFIDF = "tfidf"
ORDER = [TFIDF, *STRATEGIES]


# ----------------------------------------------------------------------------- the runs


def scratch_overrides(model_dir: Path) -> list[str]:
    """model=scratch with the backbone's architecture and shape (from its config.json) and its tokenizer."""
    cfg_file = model_dir / "config.json"
    data = json.loads(cfg_file.read_text(encoding="utf-8"))
    model_type = data.pop("model_type", None)
    if model_type == "fromzero-encoder":
        arch, shape = "encoder", data
    elif model_type == "bert":
        from fromzero.model.hf.bert import config_from_hf

        arch, shape = "encoder", to_dict(config_from_hf(data, cfg_file))
    elif model_type == "fromzero-decoder":
        arch, shape = "decoder", data
    else:
        from fromzero.model import hf

        if model_type not in hf.SUPPORTED:
            raise SystemExit(f"{cfg_file}: model_type {model_type!r}; the scratch row needs a fromzero encoder or "
                             f"decoder, BERT, or {', '.join(hf.SUPPORTED)} backbone (leave it out with --only)")
        arch, shape = "decoder", to_dict(hf.config_from_hf(data))
    key = "encoder" if arch == "encoder" else "model"
    # vocab_size comes from the tokenizer (finetune sets it); the rest is the backbone's shape, written
    # out where it differs from scratch's own default
    default = to_dict(getattr(ScratchConfig(), key))
    return [*([f"scratch.arch={arch}"] if arch != ScratchConfig.arch else []), f"scratch.tokenizer_path={model_dir}",
            *(f"scratch.{key}.{k}={_yaml(v)}" for k, v in shape.items()
              if k != "vocab_size" and v != default.get(k))]


def _yaml(v: Any) -> str:
    """A config value as the CLI parses it back (YAML): null, true, 1.0e-05, [0.9, 0.95]."""
    if isinstance(v, float):
        text = repr(v)
        return text if "." in text or "inf" in text or "nan" in text else text.replace("e", ".0e", 1)
    if isinstance(v, str) and yaml.safe_load(v) == v:
        return v  # llama, not "llama"
    return json.dumps(v)


def check_backbone(model_dir: Path) -> None:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise SystemExit(f"--model {model_dir}: no config.json (a pretrained folder: model.safetensors + config.json "
                         "+ tokenizer.json)")
    data = json.loads(cfg_file.read_text(encoding="utf-8"))
    if "model_type" not in data and "type_vocab_size" in data:
        raise SystemExit(f"--model {model_dir} is an encoder pretraining checkpoint (config.json has no model_type); "
                         f"use the exported folder next to checkpoints/, e.g. {model_dir.parent.parent / 'encoder'}")


def run_one(name: str, cmd: list[str], out: Path, threads: int) -> dict[str, Any]:
    """One `fromzero finetune` subprocess; its summary.json, or {"failed": stderr tail}."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(shlex.join(cmd) + "\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"[{name}] start (log {out / 'stdout.log'})", flush=True)
    t = time.perf_counter()
    with open(out / "stdout.log", "w", encoding="utf-8") as so, open(out / "stderr.log", "w", encoding="utf-8") as se:
        rc = subprocess.run([sys.executable, "-m", "fromzero", *cmd[1:]], stdout=so, stderr=se, env=env).returncode
    summary_file = out / "summary.json"
    if rc != 0 or not summary_file.is_file():
        tail = (out / "stderr.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        print(f"[{name}] FAILED (exit {rc}) after {time.perf_counter() - t:.0f} s; stderr tail:\n    "
              + "\n    ".join(tail or ["(empty)"]), flush=True)
        return {"failed": "\n".join(tail)}
    s = json.loads(summary_file.read_text(encoding="utf-8"))
    print(f"[{name}] done: test {s['metric']} {s['test_metric']:.4f}, {s['steps']} steps, "
          f"{s['wall_seconds']:.0f} s, peak RSS {s['peak_rss_mb']:.0f} MB", flush=True)
    return s


def run_tfidf(cfg: FinetuneConfig, out: Path, setup: dict[str, Any]) -> dict[str, Any]:
    """TF-IDF + logistic regression on the fine-tuning runs' task, split and training/test subsets."""
    from baseline_tfidf import SETTINGS

    from fromzero.evaluation.baselines import tfidf_logreg
    from fromzero.tasks import label_names, load_task_data

    t = time.perf_counter()
    kw = SETTINGS.get(cfg.task, dict(analyzer="char", ngram_range=(1, 3)))
    train = load_task_data(cfg.task, "train", cfg.data_seed)
    test = load_task_data(cfg.task, "test", cfg.data_seed)
    train = train if cfg.max_train_examples is None else train[:cfg.max_train_examples]
    test = test if cfg.max_test_examples is None else test[:cfg.max_test_examples]
    report = tfidf_logreg(train, test, label_names=label_names(cfg.task, cfg.data_seed), seed=cfg.data_seed, **kw)
    s = {"metric": "accuracy", "test_metric": report["accuracy"], "macro_f1": report["macro_f1"],
         "features": f"{kw['analyzer']} {kw['ngram_range'][0]}–{kw['ngram_range'][1]}-grams",
         "n_train": report["n_train"], "n_test": report["n_test"], "wall_seconds": time.perf_counter() - t,
         "setup": setup}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"[{TFIDF}] done: test accuracy {s['test_metric']:.4f} ({s['wall_seconds']:.1f} s)", flush=True)
    return s


# ----------------------------------------------------------------------------- the table


def _params(n: int) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _label(name: str, overrides: list[str], result: dict) -> str:
    if name == TFIDF:
        return f"TF-IDF {result.get('features', '')} + logistic regression"
    label, own = STRATEGIES[name]
    peft = build(PeftConfig, parse_overrides([o for o in own + overrides if o.startswith("peft.")]).get("peft"))
    return label.format(**to_dict(peft))


def table(results: dict[str, dict], variants: dict[str, str], extra: list[str], metric: str) -> str:
    lower_better = "perplexity" in metric or "loss" in metric
    scores = {k: r["test_metric"] for k, r in results.items() if "test_metric" in r and r["test_metric"] is not None}
    best = (min if lower_better else max)(scores.values()) if scores else None
    lines = [f"| strategy | variant | test {metric} | trainable / total params | wall s | peak RSS |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in results:
        r = results[name]
        label = _label(name, extra, r)
        variant = variants[name]
        if "failed" in r:
            lines.append(f"| {label} | {variant} | failed | — | — | — |")
            continue
        m = f"{r['test_metric']:.3f}"
        m = f"**{m}**" if r["test_metric"] == best and len(set(scores.values())) > 1 else m
        params = f"{_params(r['trainable_params'])} / {_params(r['total_params'])}" if "total_params" in r else "—"
        rss = f"{r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else "—"
        lines.append(f"| {label} | {variant} | {m} | {params} | {r['wall_seconds']:.0f} | {rss} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--recipe", default="finetune/sentiment-zh", help="fine-tuning recipe (name or YAML path)")
    p.add_argument("--model", required=True, type=Path, help="the pretrained backbone folder")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps of every run (default: the recipe's)")
    p.add_argument("--minutes", type=float, default=None, help="train.max_minutes of every run (default: none)")
    p.add_argument("--out", type=Path, default=None, help="default: runs/strategies-<recipe name>")
    p.add_argument("--only", nargs="+", choices=ORDER, default=None, help="a subset of the strategies")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (2 on 2 cores: one thread each)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per run (default: cores // parallel)")
    p.add_argument("--extra", nargs="+", default=[],
                   help="overrides appended to every run, e.g. max_train_examples=500")
    args = p.parse_args()

    recipe_name = Path(args.recipe).stem
    out = args.out or Path("runs") / f"strategies-{recipe_name}"
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
    check_backbone(args.model)
    cfg = build(FinetuneConfig, load_recipe(args.recipe, [f"model={args.model}", *args.extra]))
    from fromzero.tasks import task_kind

    kind = task_kind(cfg.task, cfg.data_seed)
    wanted = [n for n in ORDER if (args.only is None or n in args.only) and (n != TFIDF or kind == "classification")]
    if args.only and TFIDF in args.only and kind != "classification":
        print(f"[{TFIDF}] left out: task {cfg.task} is {kind}, not classification")

    common = [f"model={args.model}"]  # train.out_dir follows per run
    budget = [f"train.max_steps={args.steps}"] if args.steps else []
    budget += [f"train.max_minutes={args.minutes:g}"] if args.minutes else []
    own = {n: STRATEGIES[n][1] + (scratch_overrides(args.model) if n == "scratch" else []) for n in STRATEGIES}
    variants = {n: f"`{' '.join(o)}`" if o else "—" for n, o in own.items()}
    variants[TFIDF] = "`python benchmarks/baseline_tfidf.py`" + (" (same training subset)" if cfg.max_train_examples
                                                                 else "")
    shown = shlex.join(["fromzero", "finetune", "--config", args.recipe, *common, *budget, *args.extra])
    header = f"`OMP_NUM_THREADS={threads} {shown} <variant>`, {args.parallel} run(s) at a time"
    print(f"{len(wanted)} strategies -> {out}; {header}", flush=True)

    tfidf_setup = {"task": cfg.task, "data_seed": cfg.data_seed, "max_train_examples": cfg.max_train_examples,
                   "max_test_examples": cfg.max_test_examples}
    results: dict[str, dict] = {}
    todo = []
    for name in wanted:
        d = out / name
        cmd = ["fromzero", "finetune", "--config", args.recipe, *common, f"train.out_dir={d}", *budget, *own[name],
               *args.extra] if name != TFIDF else []
        if (d / "summary.json").is_file():
            results[name] = json.loads((d / "summary.json").read_text(encoding="utf-8"))
            print(f"[{name}] skipped: {d / 'summary.json'} exists (delete {d} to re-run it)", flush=True)
            # a run made with other settings would mix budgets in one table: say so
            before = (d / "command.txt").read_text(encoding="utf-8").strip() if (d / "command.txt").is_file() else None
            if (name == TFIDF and results[name].get("setup") != tfidf_setup) or (cmd and before != shlex.join(cmd)):
                print(f"[{name}] warning: that result was made with other settings "
                      f"({before or results[name].get('setup')}), not this script's current ones", flush=True)
            continue
        results[name] = {}  # keeps the table in ORDER
        if name == TFIDF:
            try:
                results[name] = run_tfidf(cfg, d, tfidf_setup)
            except Exception as e:  # e.g. scikit-learn missing: the fine-tuning rows still run
                print(f"[{TFIDF}] FAILED: {e}", flush=True)
                results[name] = {"failed": str(e)}
        else:
            todo.append((name, cmd, d))

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = {name: pool.submit(run_one, name, cmd, d, threads) for name, cmd, d in todo}
        for name, f in futures.items():
            results[name] = f.result()

    metric = next((r["metric"] for n, r in results.items() if n != TFIDF and r.get("metric")), "metric")
    md = f"{header}\n\n{table(results, variants, args.extra, metric)}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(md, encoding="utf-8")
    print(f"\n{md}\n-> {out / 'table.md'}")
    failed = [n for n, r in results.items() if "failed" in r]
    if failed:
        print(f"failed: {', '.join(failed)} (logs in {out}/<name>/stderr.log)")
        sys.exit(1)


if __name__ == "__main__":
    main()
