"""Causal-LM pretraining, end to end: tokenizer → token shards → decoder → trainer → artifacts.

`run_pretrain(cfg)` is what `fromzero pretrain` and the quickstart call; every step is a small
public function of its own module, so a user can stop at any stage and take over in Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import torch

from fromzero.baselines import unigram_perplexity
from fromzero.config import to_dict
from fromzero.data.loader import TokenBatches, eval_batches
from fromzero.data.shards import build_shards, load_tokens
from fromzero.data.sources import iter_texts
from fromzero.errors import FromzeroError
from fromzero.model.config import ModelConfig
from fromzero.model.decoder import DecoderLM
from fromzero.objectives.clm import causal_lm
from fromzero.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from fromzero.train.checkpoint import find_checkpoint
from fromzero.train.distributed import DistributedContext, barrier, cleanup, init_distributed
from fromzero.train.trainer import TrainConfig, Trainer

T = TypeVar("T")


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["people_daily", "reviews_zh"])
    val_fraction: float = 0.01
    cache_dir: str = ".cache/fromzero"


@dataclass
class PretrainConfig:
    objective: Literal["clm"] = "clm"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_path: str | None = None  # reuse a trained tokenizer.json instead of training one
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def prepare_tokenizer(cfg: PretrainConfig, out_dir: Path, quiet: bool = False) -> Tokenizer:
    """Load the configured tokenizer, reuse the run's own (on resume), or train one on the sources."""
    if cfg.tokenizer_path:
        return Tokenizer.load(cfg.tokenizer_path)
    own = out_dir / "tokenizer.json"
    if own.is_file():
        return Tokenizer.load(own)
    texts = (t for src in cfg.data.sources for t in iter_texts(src))
    tok = train_tokenizer(texts, cfg.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(own)
    if not quiet:
        print(f"tokenizer: trained {cfg.tokenizer.kind} with {tok.vocab_size} tokens -> {own}")
    return tok


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Pretrain a decoder with the causal-LM objective; returns the run summary (also in summary.json).

    Under torchrun, rank 0 trains the tokenizer and writes the shards while the others wait, then
    every rank reads its own part of each global batch.
    """
    return run_ranked(cfg.train.out_dir, resume,
                      prepare=lambda quiet: _prepare_data(cfg, Path(cfg.train.out_dir), quiet),
                      train=lambda dist, data: _train(cfg, dist, data[0], load_tokens(data[1].train),
                                                      load_tokens(data[1].val), resume))


def run_ranked(out_dir: str | Path, resume: bool, prepare: Callable[[bool], T],
               train: Callable[[DistributedContext, T], dict[str, Any]]) -> dict[str, Any]:
    """The shape every pretraining runner shares: check --resume, join the process group under
    torchrun, let rank 0 `prepare(quiet=False)` the tokenizer and data while the others wait (then
    they `prepare(quiet=True)` from the caches), train, and leave the group."""
    dist = DistributedContext.from_env()
    if resume and find_checkpoint(Path(out_dir) / "checkpoints" / "last") is None:
        raise FromzeroError(f"--resume: no checkpoint in {out_dir}/checkpoints/last; start without --resume")
    owns_group = init_distributed(dist)
    try:
        if dist.is_main:
            data = prepare(False)
        barrier()
        if not dist.is_main:
            data = prepare(True)  # cache hits now
        return train(dist, data)
    finally:
        if owns_group:
            cleanup()


def _prepare_data(cfg: PretrainConfig, out_dir: Path, quiet: bool):
    tok = prepare_tokenizer(cfg, out_dir, quiet=quiet)
    shards = build_shards(cfg.data.sources, tok, cfg.data.cache_dir, cfg.data.val_fraction, seed=cfg.train.seed,
                          progress=not quiet)
    return tok, shards


def _train(cfg: PretrainConfig, dist: DistributedContext, tok: Tokenizer, train_tokens, val_tokens,
           resume: bool) -> dict[str, Any]:
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of what train.seed reproduces
    model = DecoderLM(cfg.model)
    seq_len = cfg.model.max_seq_len
    batches = TokenBatches(train_tokens, cfg.train.batch_size, seq_len, seed=cfg.train.seed,
                           rank=dist.rank, world_size=dist.world_size)
    evals = eval_batches(val_tokens, cfg.train.batch_size, seq_len, cfg.train.eval_batches)
    if dist.is_main:
        print(f"data: {len(train_tokens):,} train / {len(val_tokens):,} val tokens from {', '.join(cfg.data.sources)}")
        print(f"model: {cfg.model.arch}, {model.num_params() / 1e6:.2f}M parameters")

    summary = Trainer(model, causal_lm, batches, evals, cfg.train, save_extra=tok.save).fit(resume=resume)
    summary["unigram_val_perplexity"] = unigram_perplexity(train_tokens, val_tokens, tok.vocab_size)
    summary["params"] = model.num_params()
    summary["config"] = to_dict(cfg)
    if dist.is_main:
        (Path(cfg.train.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str),
                                                              encoding="utf-8")
    return summary


ENCODER_OBJECTIVES = ("mlm", "mlm_nsp", "mlm_sop", "rtd", "simcse", "simcse_sup", "mlm+simcse")
SEQ2SEQ_OBJECTIVES = ("span", "denoise")


def run_recipe(recipe: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """Dispatch a pretraining recipe on its `objective` key to the decoder, encoder or
    encoder-decoder runner; each validates the rest of the recipe against its own config."""
    from fromzero.config import build

    objective = recipe.get("objective", "clm")
    if objective == "clm":
        return run_pretrain(build(PretrainConfig, recipe), resume=resume)
    if objective in SEQ2SEQ_OBJECTIVES:
        from fromzero.pretrain_seq2seq import Seq2SeqPretrainConfig, run_seq2seq_pretrain

        return run_seq2seq_pretrain(build(Seq2SeqPretrainConfig, recipe), resume=resume)
    if objective in ENCODER_OBJECTIVES:
        from fromzero.pretrain_encoder import EncoderPretrainConfig, run_encoder_pretrain

        return run_encoder_pretrain(build(EncoderPretrainConfig, recipe), resume=resume)
    valid = ("clm",) + ENCODER_OBJECTIVES + SEQ2SEQ_OBJECTIVES
    raise FromzeroError(f"unknown objective {objective!r}; choose one of: {', '.join(valid)}")
