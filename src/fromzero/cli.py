"""`fromzero <command>`: a thin layer over the Python API.

Each command parses its arguments, builds a typed config and calls one library function. Mistakes
the user can fix (`FromzeroError`) print as one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from fromzero.errors import FromzeroError


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from fromzero.recipes.quickstart import run_quickstart

    run_quickstart(out_dir=args.out_dir, minutes=args.minutes)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from fromzero.recipes import load_recipe
    from fromzero.recipes.pretrain import run_recipe

    summary = run_recipe(load_recipe(args.config, args.overrides, default="pretrain/gpt-tiny-zh"), resume=args.resume)
    _print_summary(summary)


def _cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from fromzero.config import build
    from fromzero.data.sources import iter_texts
    from fromzero.tokenizer import TokenizerConfig, train_tokenizer

    cfg = build(TokenizerConfig, {"kind": args.kind, "vocab_size": args.vocab_size})
    texts = (t for src in args.sources for t in iter_texts(src))
    tok = train_tokenizer(texts, cfg)
    tok.save(args.out)
    print(f"trained {cfg.kind} tokenizer with {tok.vocab_size} tokens -> {args.out}")
    sample = "自然语言处理 is fun."
    ids = tok.encode(sample)
    print(f"example: {sample!r} -> {len(ids)} tokens: {[tok.id_to_token(i) for i in ids]}")


def _cmd_tokenizer_show(args: argparse.Namespace) -> None:
    from fromzero.tokenizer import Tokenizer, describe_vocab

    tok = Tokenizer.load(args.path)
    if args.text:
        ids = tok.encode(args.text)
        print(f"{len(ids)} tokens")
        for i in ids:
            print(f"{i:>7}  {tok.id_to_token(i)!r}")
        return
    for line in describe_vocab(tok, n=args.n):
        print(line)


def _cmd_generate(args: argparse.Namespace) -> None:
    from fromzero.infer.generate import GenerationConfig, stream
    from fromzero.model import load_model
    from fromzero.tokenizer import Tokenizer

    model = load_model(args.model, dtype=_generation_dtype(args.dtype))
    tok = Tokenizer.load(args.tokenizer or args.model)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop or [],
                           seed=args.seed)
    prompts = [args.prompt] if args.prompt is not None else [line.rstrip("\n") for line in sys.stdin]
    for prompt in prompts:
        sys.stdout.write(prompt)
        for piece in stream(model, tok, prompt, gen):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


def _generation_dtype(name: str):
    """Decoding one token at a time is bound by reading the weights: bf16 weights halve that (measured
    1.65x faster here) where the CPU computes in bf16 natively (AVX512-BF16 / AMX), else float32."""
    import torch

    if name == "auto":
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
            getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        name = "bfloat16" if native else "float32"
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def _cmd_finetune(args: argparse.Namespace) -> None:
    from fromzero.config import build
    from fromzero.recipes import load_recipe
    from fromzero.recipes.finetune import FinetuneConfig, run_finetune

    cfg = build(FinetuneConfig, load_recipe(args.config, args.overrides, default="finetune/sentiment-zh"))
    _print_summary(run_finetune(cfg, resume=args.resume))


def _cmd_eval(args: argparse.Namespace) -> None:
    import json

    from fromzero.recipes.finetune import evaluate_saved

    metrics = evaluate_saved(args.model, task=args.task, split=args.split, base_model=args.base_model)
    print(json.dumps(metrics, indent=2, ensure_ascii=False, default=str))


def _cmd_predict(args: argparse.Namespace) -> None:
    import json

    from fromzero.recipes.finetune import predict

    if args.file:
        from pathlib import Path

        path = Path(args.file)
        if not path.is_file():
            raise FromzeroError(f"input file not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in lines if t.strip()]
    for text, pred in zip(texts, predict(args.model, texts, base_model=args.base_model)):
        print(json.dumps({"text": text, "prediction": pred}, ensure_ascii=False))


def _cmd_convert(args: argparse.Namespace) -> None:
    from fromzero.recipes.convert import convert

    family, direction = convert(args.src, args.dst)
    print(f"converted {family} {args.src} -> {args.dst} ({direction})")


def _cmd_embed(args: argparse.Namespace) -> None:
    import json

    texts = [*args.texts, *(args.text or [])]
    if not texts:  # only then read stdin, so `fromzero embed ... "text"` never waits on a terminal
        if sys.stdin.isatty():
            print("reading texts from stdin, one per line (Ctrl-D to finish)", file=sys.stderr)
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise FromzeroError("no text to embed: pass texts as arguments (fromzero embed --model DIR \"text\" ...), "
                            "with --text, or one per line on stdin")

    from fromzero.objectives.contrastive import embed_from_dir

    vectors = embed_from_dir(args.model, texts, pooling=args.pooling)
    for text, vec in zip(texts, vectors.tolist()):
        print(json.dumps({"text": text, "embedding": [round(x, 6) for x in vec]}, ensure_ascii=False))


def _print_summary(summary: dict) -> None:
    """Every scalar of a run summary, one per line (nested config and samples stay in summary.json)."""
    for k, v in summary.items():
        if isinstance(v, bool) or v is None or not isinstance(v, (int, float, str)):
            continue
        print(f"  {k:<26} {v:,.4g}" if isinstance(v, float) else f"  {k:<26} {v}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fromzero", description="Develop language models from zero.")
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")

    q = sub.add_parser("quickstart", help="tokenizer -> pretraining -> evaluation -> generations on built-in data")
    q.add_argument("--out-dir", default="runs/quickstart")
    q.add_argument("--minutes", type=float, default=None, help="pretraining time budget (default from the recipe)")
    q.set_defaults(func=_cmd_quickstart)

    pt = sub.add_parser("pretrain", help="pretrain from a YAML recipe (objective: clm, mlm, rtd, simcse, span, ...)")
    pt.add_argument("--config", help="YAML path or built-in recipe name (default: pretrain/gpt-tiny-zh)")
    pt.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last")
    pt.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.max_steps=100")
    pt.set_defaults(func=_cmd_pretrain)

    tk = sub.add_parser("tokenizer", help="train or inspect a tokenizer")
    tks = tk.add_subparsers(dest="action", required=True, metavar="<action>")
    tt = tks.add_parser("train", help="train BPE / WordPiece / Unigram on built-in data or your files")
    tt.add_argument("--kind", default="bpe", help="bpe | wordpiece | unigram")
    tt.add_argument("--vocab-size", type=int, default=8192)
    tt.add_argument("--sources", nargs="+", default=["people_daily", "reviews_zh"],
                    help="built-in corpus names or .txt/.jsonl/.csv/.parquet files")
    tt.add_argument("--out", default="runs/tokenizer/tokenizer.json")
    tt.set_defaults(func=_cmd_tokenizer_train)
    ts = tks.add_parser("show", help="print a vocabulary readably (Chinese shown as characters)")
    ts.add_argument("path", help="tokenizer.json or a folder holding one")
    ts.add_argument("--n", type=int, default=50, help="how many tokens to list")
    ts.add_argument("--text", help="show how this text is tokenized instead")
    ts.set_defaults(func=_cmd_tokenizer_show)

    g = sub.add_parser("generate", help="generate text from a saved model (streams to the terminal)")
    g.add_argument("--model", required=True, help="a checkpoint folder (model.safetensors + config.json)")
    g.add_argument("--tokenizer", help="tokenizer.json (default: the one inside --model)")
    g.add_argument("--prompt", help="prompt text (default: one prompt per stdin line)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--repetition-penalty", type=float, default=1.1)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="weights for decoding (auto: bfloat16 where the CPU has native bf16, else float32)")
    g.set_defaults(func=_cmd_generate)

    ft = sub.add_parser("finetune", help="fine-tune on a task: full, partial or parameter-efficient (peft.method=lora, ...)")
    ft.add_argument("--config", help="YAML path or built-in recipe (default: finetune/sentiment-zh)")
    ft.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last")
    ft.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. peft.method=lora")
    ft.set_defaults(func=_cmd_finetune)

    ev = sub.add_parser("eval", help="metrics of a fine-tuned model on a task split")
    ev.add_argument("--model", required=True, nargs="+",
                    help="a fine-tuned model folder; several classifiers are scored as an ensemble (mean probabilities)")
    ev.add_argument("--task", help="task name or file (default: the one it was trained on)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--base-model", help="base model folder, when --model holds adapters only (for every folder)")
    ev.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", help="predict labels/tags/outputs for a file or stdin lines (JSON lines out)")
    pr.add_argument("--model", required=True, help="a fine-tuned model folder")
    pr.add_argument("--file", help="one input per line (default: stdin)")
    pr.add_argument("--base-model", help="base model folder, when --model holds an adapter only")
    pr.set_defaults(func=_cmd_predict)

    cv = sub.add_parser("convert", help="Hugging Face folder <-> fromzero folder (GPT-2, Llama/Qwen2, BERT, T5)")
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.set_defaults(func=_cmd_convert)

    em = sub.add_parser("embed", help="sentence embeddings from an encoder (JSON lines out)")
    em.add_argument("--model", required=True, help="an encoder folder (e.g. runs/simcse-zh/encoder) or a BERT folder")
    em.add_argument("texts", nargs="*", metavar="TEXT",
                    help="texts to embed; with --text too, both are used (these first); stdin lines are read "
                         "only when no text is given on the command line")
    em.add_argument("--text", action="append", help="a text to embed (repeatable; same as a positional TEXT)")
    em.add_argument("--pooling", choices=["cls", "mean", "pooler"], default=None,
                    help="how a sentence vector is read off the encoder (default: the pooling recorded at "
                         "training in embedding.json, else cls)")
    em.set_defaults(func=_cmd_embed)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except FromzeroError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
