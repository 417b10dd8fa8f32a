"""What every pretraining recipe shares: the data settings, the tokenizer step, the torchrun shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from fromzero.data.shards import build_shards, load_tokens
from fromzero.data.sources import iter_texts
from fromzero.errors import FromzeroError
from fromzero.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from fromzero.train.checkpoint import find_checkpoint
from fromzero.train.distributed import DistributedContext, barrier, cleanup, init_distributed
from fromzero.train.run_dir import claim

T = TypeVar("T")


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["people_daily", "reviews_zh"])
    val_fraction: float = 0.01
    cache_dir: str = ".cache/fromzero"


class HasTokenizerAndData(Protocol):
    """The fields prepare_tokenizer reads: every pretraining config has them."""

    tokenizer: TokenizerConfig
    tokenizer_path: str | None
    data: DataConfig


def prepare_tokenizer(cfg: HasTokenizerAndData, out_dir: Path, quiet: bool = False) -> Tokenizer:
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


def run_ranked(out_dir: str | Path, resume: bool, prepare: Callable[[bool], T],
               train: Callable[[DistributedContext, T], dict[str, Any]], overwrite: bool = False) -> dict[str, Any]:
    """The shape every pretraining runner shares: check --resume, claim out_dir (lock it; refuse an
    existing run without --resume / --overwrite) before anything is written, join the process group
    under torchrun, let rank 0 `prepare(quiet=False)` the tokenizer and data while the others wait
    (then they `prepare(quiet=True)` from the caches), train, and leave the group."""
    dist = DistributedContext.from_env()
    if resume and find_checkpoint(Path(out_dir) / "checkpoints" / "last") is None:
        raise FromzeroError(f"--resume: no checkpoint in {out_dir}/checkpoints/last; start without --resume")
    with claim(out_dir, resume, overwrite, main=dist.is_main):
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


def run_on_token_shards(cfg: Any, resume: bool, make_tokenizer: Callable[..., Tokenizer],
                        train: Callable[[DistributedContext, Tokenizer, Any, Any], dict[str, Any]]) -> dict[str, Any]:
    """The decoder and T5 runners: rank 0 makes the tokenizer and the memmap token shards of
    cfg.data, then every rank trains on the (train, val) token arrays."""
    out_dir = Path(cfg.train.out_dir)

    def prepare(quiet: bool):
        tok = make_tokenizer(cfg, out_dir, quiet=quiet)
        shards = build_shards(cfg.data.sources, tok, cfg.data.cache_dir, cfg.data.val_fraction, seed=cfg.train.seed,
                              progress=not quiet)
        return tok, shards

    return run_ranked(out_dir, resume, overwrite=cfg.train.overwrite, prepare=prepare,
                      train=lambda dist, data: train(dist, data[0], load_tokens(data[1].train),
                                                     load_tokens(data[1].val)))
