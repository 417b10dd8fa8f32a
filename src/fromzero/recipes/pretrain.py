"""Causal-LM pretraining, end to end: tokenizer → token shards → decoder → trainer → artifacts.

`run_pretrain(cfg)` is what `fromzero pretrain` and the quickstart call; every step is a small
public function of its own module, so a user can stop at any stage and take over in Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from fromzero.config import build, to_dict
from fromzero.data.loader import TokenBatches, eval_batches
from fromzero.evaluation.baselines import unigram_perplexity
from fromzero.model.config import ModelConfig
from fromzero.model.decoder import DecoderLM
from fromzero.objectives.clm import causal_lm
from fromzero.objectives.registry import objective_spec
from fromzero.recipes._common import DataConfig, prepare_tokenizer, run_on_token_shards
from fromzero.recipes.pretrain_encoder import EncoderPretrainConfig, run_encoder_pretrain
from fromzero.recipes.pretrain_seq2seq import Seq2SeqPretrainConfig, run_seq2seq_pretrain
from fromzero.tokenizer import Tokenizer, TokenizerConfig
from fromzero.train.distributed import DistributedContext
from fromzero.train.trainer import TrainConfig, Trainer


@dataclass
class PretrainConfig:
    objective: Literal["clm"] = "clm"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_path: str | None = None  # reuse a trained tokenizer.json instead of training one
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def run_pretrain(cfg: PretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Pretrain a decoder with the causal-LM objective; returns the run summary (also in summary.json).

    Under torchrun, rank 0 trains the tokenizer and writes the shards while the others wait, then
    every rank reads its own part of each global batch.
    """
    return run_on_token_shards(cfg, resume, prepare_tokenizer,
                               lambda dist, tok, train, val: _train(cfg, dist, tok, train, val, resume))


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


def run_recipe(recipe: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """Dispatch a pretraining recipe on its `objective` key to the runner of the family it trains
    (fromzero.objectives.registry); each runner validates the rest against its own config."""
    config_cls, run = RUNNERS[objective_spec(recipe.get("objective", "clm")).family]
    return run(build(config_cls, recipe), resume=resume)


# model family -> (its recipe config, its runner)
RUNNERS: dict[str, tuple[type, Callable[..., dict[str, Any]]]] = {
    "decoder": (PretrainConfig, run_pretrain),
    "encoder": (EncoderPretrainConfig, run_encoder_pretrain),
    "encoder_decoder": (Seq2SeqPretrainConfig, run_seq2seq_pretrain),
}
