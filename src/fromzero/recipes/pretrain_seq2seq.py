"""Encoder-decoder pretraining, end to end: tokenizer -> token shards -> T5-style model -> trainer -> artifacts.

    objective: span     T5 span corruption (sentinels replace 15% of the tokens in spans of ~3)
    objective: denoise  BART denoising (text infilling + sentence permutation by default)

`run_seq2seq_pretrain(cfg)` mirrors `fromzero.recipes.pretrain.run_pretrain`: same tokenizer and shard
steps, same Trainer; only the batch source (fromzero.data.seq2seq_batches), the model
(fromzero.model.encoder_decoder) and the objective differ. Besides the training checkpoints it
writes `<out_dir>/hf/`, a Hugging Face T5ForConditionalGeneration folder with tokenizer.json.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fromzero.config import to_dict
from fromzero.data.seq2seq_batches import Seq2SeqBatches, seq2seq_eval_batches
from fromzero.errors import FromzeroError
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config
from fromzero.model.hf.t5 import save_hf_t5
from fromzero.objectives.denoise import DenoiseConfig, denoise, sentence_end_ids
from fromzero.objectives.registry import objectives_for
from fromzero.objectives.seq2seq import seq2seq_lm
from fromzero.objectives.span import SpanConfig, add_sentinels, first_sentinel, span_corrupt, span_lengths
from fromzero.recipes._common import DataConfig, prepare_tokenizer, run_on_token_shards
from fromzero.tokenizer import Tokenizer, TokenizerConfig
from fromzero.train.distributed import DistributedContext
from fromzero.train.trainer import TrainConfig, Trainer


@dataclass
class Seq2SeqPretrainConfig:
    objective: Literal["span", "denoise"] = "span"
    seq_len: int = 128  # encoder tokens per example (span: corrupted inputs fill it; denoise: window + </s>)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_path: str | None = None  # reuse a trained tokenizer.json instead of training one
    data: DataConfig = field(default_factory=DataConfig)
    model: T5Config = field(default_factory=T5Config)
    span: SpanConfig = field(default_factory=SpanConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/t5-span-zh"))

    def __post_init__(self) -> None:
        if self.objective not in objectives_for("encoder_decoder"):
            raise FromzeroError(f"objective must be one of {', '.join(objectives_for('encoder_decoder'))}; "
                                f"got {self.objective!r}")
        if self.seq_len < 8:
            raise FromzeroError(f"seq_len must be at least 8, got {self.seq_len}")


def seq2seq_tokenizer(cfg: Seq2SeqPretrainConfig, out_dir: Path, quiet: bool = False) -> Tokenizer:
    """The run's tokenizer (trained, loaded or reused on resume), with sentinels for span corruption."""
    tok = prepare_tokenizer(cfg, out_dir, quiet=quiet)
    if cfg.objective == "span":
        with_sentinels = add_sentinels(tok, cfg.span.n_sentinels)
        if with_sentinels is not tok and not quiet:
            out_dir.mkdir(parents=True, exist_ok=True)
            with_sentinels.save(out_dir / "tokenizer.json")  # the run's (and resume's) tokenizer has them
        tok = with_sentinels
    return tok


def example_builder(cfg: Seq2SeqPretrainConfig, tok: Tokenizer):
    """(example_fn(window, rng) -> (inputs, targets), raw window length) for the configured objective."""
    if cfg.objective == "span":
        window, _ = span_lengths(cfg.seq_len, cfg.span.noise_density, cfg.span.mean_span_length)
        fn = functools.partial(span_corrupt, first_sentinel_id=first_sentinel(tok, cfg.span.n_sentinels),
                               eos_id=tok.eos_id, noise_density=cfg.span.noise_density,
                               mean_span_length=cfg.span.mean_span_length, n_sentinels=cfg.span.n_sentinels)
        return fn, window
    fn = functools.partial(denoise, cfg=cfg.denoise, mask_id=tok.mask_id, eos_id=tok.eos_id,
                           end_ids=sentence_end_ids(tok))
    return fn, cfg.seq_len - 1


def run_seq2seq_pretrain(cfg: Seq2SeqPretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Pretrain an encoder-decoder with span corruption or denoising; returns the summary (also summary.json)."""
    return run_on_token_shards(cfg, resume, seq2seq_tokenizer,
                               lambda dist, tok, train, val: _train(cfg, dist, tok, train, val, resume))


def _train(cfg: Seq2SeqPretrainConfig, dist: DistributedContext, tok: Tokenizer, train_tokens, val_tokens,
           resume: bool) -> dict[str, Any]:
    cfg.model.vocab_size = tok.vocab_size
    cfg.model.pad_id = cfg.model.decoder_start_id = tok.pad_id
    cfg.model.eos_id = tok.eos_id
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of what train.seed reproduces
    model = EncoderDecoderLM(cfg.model)
    example_fn, window = example_builder(cfg, tok)
    ids = dict(pad_id=tok.pad_id, decoder_start_id=cfg.model.decoder_start_id)
    batches = Seq2SeqBatches(train_tokens, example_fn, window, cfg.train.batch_size, seed=cfg.train.seed,
                             rank=dist.rank, world_size=dist.world_size, **ids)
    evals = seq2seq_eval_batches(val_tokens, example_fn, window, cfg.train.batch_size, cfg.train.eval_batches,
                                 seed=cfg.train.seed, **ids)
    if dist.is_main:
        print(f"data: {len(train_tokens):,} train / {len(val_tokens):,} val tokens from {', '.join(cfg.data.sources)}; "
              f"{cfg.objective} windows of {window} tokens")
        print(f"model: T5 ({cfg.model.feed_forward}), {cfg.model.n_layer}+{cfg.model.decoder_layers} layers, "
              f"{model.num_params() / 1e6:.2f}M parameters")

    summary = Trainer(model, seq2seq_lm, batches, evals, cfg.train, save_extra=tok.save).fit(resume=resume)
    summary["objective"] = cfg.objective
    summary["params"] = model.num_params()
    if dist.is_main:
        summary.update(evaluate_seq2seq(model, evals))
        summary["sample"] = _sample(model, tok, evals)
        hf_dir = Path(cfg.train.out_dir) / "hf"
        save_hf_t5(model, hf_dir)
        tok.save(hf_dir)
        summary["hf_model"] = str(hf_dir)
        summary["config"] = to_dict(cfg)
        (Path(cfg.train.out_dir) / "summary.json").write_text(
            json.dumps(summary, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return summary


@torch.no_grad()
def evaluate_seq2seq(model: EncoderDecoderLM, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Token-weighted validation loss and accuracy over fixed batches (fp32)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = hits = n = 0.0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch["labels"]
            logits, loss = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"], labels)
            valid = labels != -100
            count = float(valid.sum())
            loss_sum += float(loss) * count
            hits += float(((logits.argmax(-1) == labels) & valid).sum())
            n += count
    finally:
        model.train(was_training)
    return {"val_loss_fp32": loss_sum / max(n, 1.0), "val_token_accuracy": hits / max(n, 1.0)}


def _sample(model: EncoderDecoderLM, tok: Tokenizer, batches: list[dict[str, torch.Tensor]]) -> dict[str, str]:
    """One validation example with the model's greedy output, for a human look."""
    if not batches:
        return {}
    batch = batches[0]
    device = next(model.parameters()).device
    n = int(batch["attention_mask"][0].sum())
    x = batch["input_ids"][:1, :n].to(device)
    target = [t for t in batch["labels"][0].tolist() if t != -100]
    pred = model.generate_ids(x, max_new_tokens=len(target) + 8)[0].tolist()
    show = functools.partial(tok.decode, skip_special_tokens=False)
    return {"input": show(x[0].tolist()), "target": show(target), "prediction": show(pred)}
