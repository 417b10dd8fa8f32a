"""`fromzero <command>`: a thin layer over the Python API.

Each command is one entry of COMMANDS: its help line, the function that adds its arguments and the
function that runs it, which builds a typed config and calls one library function. Mistakes the user
can fix (`FromzeroError`) print as one line and exit with status 2, never a traceback. Nothing heavier
than argparse is imported before a command runs, so `fromzero --help` starts in a blink.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from fromzero import __version__
from fromzero.errors import FromzeroError

Args = argparse.Namespace
Parser = argparse.ArgumentParser


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[Parser], None]
    run: Callable[[Args], None]


def _overwrite_overrides(args: Args) -> list[str]:
    """`--overwrite` is the override train.overwrite=true, so YAML, CLI and Python say it one way."""
    return [*args.overrides, *(["train.overwrite=true"] if args.overwrite else [])]


def _add_run_flags(p: Parser, default: str, example: str) -> None:
    p.add_argument("--config", help=f"YAML path or built-in recipe name (default: {default}; see `fromzero recipes`)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an out_dir that holds an earlier run (replaces it)")
    p.add_argument("overrides", nargs="*", help=f"key.sub=value overrides, e.g. {example}")


# ----------------------------------------------------------------------------- quickstart


def _args_quickstart(p: Parser) -> None:
    p.add_argument("--out-dir", default="runs/quickstart")
    p.add_argument("--minutes", type=float, default=None, help="pretraining time budget (default from the recipe)")


def _run_quickstart(args: Args) -> None:
    from fromzero.recipes.quickstart import run_quickstart

    run_quickstart(out_dir=args.out_dir, minutes=args.minutes)


# ----------------------------------------------------------------------------- pretrain / finetune


def _args_pretrain(p: Parser) -> None:
    _add_run_flags(p, "pretrain/gpt-tiny-zh", "train.max_steps=100")


def _run_pretrain(args: Args) -> None:
    from fromzero.recipes import load_recipe
    from fromzero.recipes.pretrain import run_recipe

    recipe = load_recipe(args.config, _overwrite_overrides(args), default="pretrain/gpt-tiny-zh")
    _print_summary(run_recipe(recipe, resume=args.resume))


def _args_finetune(p: Parser) -> None:
    _add_run_flags(p, "finetune/sentiment-zh", "peft.method=lora")


def _run_finetune(args: Args) -> None:
    from fromzero.config import build
    from fromzero.recipes import load_recipe
    from fromzero.recipes.finetune import FinetuneConfig, run_finetune

    cfg = build(FinetuneConfig, load_recipe(args.config, _overwrite_overrides(args), default="finetune/sentiment-zh"))
    _print_summary(run_finetune(cfg, resume=args.resume))


def _print_summary(summary: dict) -> None:
    """Every scalar of a run summary, one per line (nested config and samples stay in summary.json)."""
    for k, v in summary.items():
        if isinstance(v, bool) or v is None or not isinstance(v, (int, float, str)):
            continue
        print(f"  {k:<26} {v:,.4g}" if isinstance(v, float) else f"  {k:<26} {v}")


# ----------------------------------------------------------------------------- tokenizer


def _run_tokenizer_train(args: Args) -> None:
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


def _run_tokenizer_show(args: Args) -> None:
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


def _args_tokenizer(p: Parser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="<action>")
    tt = actions.add_parser("train", help="train BPE / WordPiece / Unigram on built-in data or your files")
    tt.add_argument("--kind", default="bpe", help="bpe | wordpiece | unigram")
    tt.add_argument("--vocab-size", type=int, default=8192)
    tt.add_argument("--sources", nargs="+", default=["people_daily", "reviews_zh"],
                    help="built-in corpus names or .txt/.jsonl/.csv/.parquet files")
    tt.add_argument("--out", default="runs/tokenizer/tokenizer.json")
    tt.set_defaults(action_run=_run_tokenizer_train)
    ts = actions.add_parser("show", help="print a vocabulary readably (Chinese shown as characters)")
    ts.add_argument("path", help="tokenizer.json or a folder holding one")
    ts.add_argument("--n", type=int, default=50, help="how many tokens to list")
    ts.add_argument("--text", help="show how this text is tokenized instead")
    ts.set_defaults(action_run=_run_tokenizer_show)


def _run_tokenizer(args: Args) -> None:
    args.action_run(args)


# ----------------------------------------------------------------------------- generate


def _args_generate(p: Parser) -> None:
    p.add_argument("--model", required=True, help="a model folder: decoder or T5-style (config.json + weights)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the one inside --model)")
    p.add_argument("--prompt", help="prompt text (default: one prompt per stdin line)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="weights for decoding (auto: bfloat16 where the CPU has native bf16, else float32)")


def _run_generate(args: Args) -> None:
    from fromzero.infer.generate import GenerationConfig, stream
    from fromzero.model import load_model
    from fromzero.tokenizer import Tokenizer

    model = load_model(args.model, dtype=_generation_dtype(args.dtype))
    tok = Tokenizer.load(args.tokenizer or args.model)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop or [],
                           seed=args.seed)
    from fromzero.model.encoder_decoder import EncoderDecoderLM

    # A decoder continues the prompt; an encoder-decoder answers it, so a tab sets the answer apart.
    sep = "\t" if isinstance(model, EncoderDecoderLM) else ""
    prompts = [args.prompt] if args.prompt is not None else [line.rstrip("\n") for line in sys.stdin]
    for prompt in prompts:
        sys.stdout.write(prompt + sep)
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


# ----------------------------------------------------------------------------- eval / predict


def _args_eval(p: Parser) -> None:
    p.add_argument("--model", required=True, nargs="+",
                   help="a fine-tuned model folder; several classifiers are scored as an ensemble (mean probabilities)")
    p.add_argument("--task", help="task name or file (default: the one it was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--base-model", help="base model folder, when --model holds adapters only (for every folder)")


def _run_eval(args: Args) -> None:
    import json

    from fromzero.recipes.finetune import evaluate_saved

    metrics = evaluate_saved(args.model, task=args.task, split=args.split, base_model=args.base_model)
    print(json.dumps(metrics, indent=2, ensure_ascii=False, default=str))


def _args_predict(p: Parser) -> None:
    p.add_argument("--model", required=True, help="a fine-tuned model folder")
    p.add_argument("--file", help="one input per line (default: stdin)")
    p.add_argument("--base-model", help="base model folder, when --model holds an adapter only")


def _run_predict(args: Args) -> None:
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


# ----------------------------------------------------------------------------- convert / embed


def _args_convert(p: Parser) -> None:
    p.add_argument("src")
    p.add_argument("dst")


def _run_convert(args: Args) -> None:
    from fromzero.recipes.convert import convert

    family, direction = convert(args.src, args.dst)
    print(f"converted {family} {args.src} -> {args.dst} ({direction})")


def _args_embed(p: Parser) -> None:
    p.add_argument("--model", required=True, help="an encoder folder (e.g. runs/simcse-zh/encoder) or a BERT folder")
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="texts to embed; with --text too, both are used (these first); stdin lines are read "
                        "only when no text is given on the command line")
    p.add_argument("--text", action="append", help="a text to embed (repeatable; same as a positional TEXT)")
    p.add_argument("--pooling", choices=["cls", "mean", "pooler"], default=None,
                   help="how a sentence vector is read off the encoder (default: the pooling recorded at "
                        "training in embedding.json, else cls)")


def _run_embed(args: Args) -> None:
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


# ----------------------------------------------------------------------------- recipes


def _args_recipes(p: Parser) -> None:
    pass


def _recipe_title(path) -> str:
    """A recipe's first header comment line is its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def _run_recipes(args: Args) -> None:
    from fromzero.corpora import CORPORA
    from fromzero.recipes import available, resolve
    from fromzero.tasks import TASKS

    names = available()
    width = max(len(n) for n in [*names, *TASKS, *CORPORA])
    print("recipes (fromzero pretrain|finetune --config NAME):")
    for name in names:
        print(f"  {name:<{width}}  {_recipe_title(resolve(name))}")
    print("\ntasks (finetune task=NAME):")
    for name, info in TASKS.items():
        print(f"  {name:<{width}}  {info.kind}: {info.description}")
    print("\ncorpora (data.sources=[NAME, ...]):")
    for name, corpus in CORPORA.items():
        print(f"  {name:<{width}}  {corpus.description}")


# ----------------------------------------------------------------------------- the table

COMMANDS: dict[str, Command] = {
    "quickstart": Command("tokenizer -> pretraining -> evaluation -> generations on built-in data",
                          _args_quickstart, _run_quickstart),
    "pretrain": Command("pretrain from a YAML recipe (objective: clm, mlm, rtd, simcse, span, ...)",
                        _args_pretrain, _run_pretrain),
    "tokenizer": Command("train or inspect a tokenizer", _args_tokenizer, _run_tokenizer),
    "generate": Command("generate text from a saved decoder or T5 model (streams to the terminal)",
                        _args_generate, _run_generate),
    "finetune": Command("fine-tune on a task: full, partial or parameter-efficient (peft.method=lora, ...)",
                        _args_finetune, _run_finetune),
    "eval": Command("metrics of a fine-tuned model on a task split", _args_eval, _run_eval),
    "predict": Command("predict labels/tags/outputs for a file or stdin lines (JSON lines out)",
                       _args_predict, _run_predict),
    "convert": Command("Hugging Face folder <-> fromzero folder (GPT-2, Llama/Qwen2, BERT, T5)",
                       _args_convert, _run_convert),
    "embed": Command("sentence embeddings from an encoder (JSON lines out)", _args_embed, _run_embed),
    "recipes": Command("list the built-in recipes, tasks and corpora", _args_recipes, _run_recipes),
}


def build_parser() -> Parser:
    p = argparse.ArgumentParser(prog="fromzero", description="Develop language models from zero.")
    p.add_argument("--version", action="version", version=f"fromzero {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, cmd in COMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command].run(args)
    except FromzeroError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
