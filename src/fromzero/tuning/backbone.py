"""The model a task head sits on: a pretrained folder, or a fresh one built from `ScratchConfig`.

    backbone = load_backbone("runs/quickstart/checkpoints/best")   # decoder / encoder / T5 / HF folder
    backbone, tok = scratch_backbone(ScratchConfig(), texts, max_len=128, seed=0)

`family(backbone)` names what kind of model it is (decoder, encoder, encoder-decoder), which
decides the task kinds it can serve (tuning/registry.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from fromzero.config import build, to_dict
from fromzero.errors import FromzeroError
from fromzero.model.config import PRESETS, ModelConfig
from fromzero.model.encoder import EncoderConfig
from fromzero.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from fromzero.tuning.heads import is_encoder
from fromzero.tuning.seq2seq import is_encoder_decoder

DEFAULT_MODEL = "runs/quickstart/checkpoints/best"


@dataclass
class ScratchConfig:
    """How `model: scratch` builds a randomly initialised model: a decoder shaped by `model`, or a
    BERT-style encoder shaped by `encoder` (arch: encoder)."""

    arch: Literal["decoder", "encoder"] = "decoder"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(**PRESETS["gpt-tiny"]))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Reuse a tokenizer (e.g. the pretrained model's folder) for a like-for-like comparison;
    # null = train one on the task's training texts with `tokenizer`.
    tokenizer_path: str | None = None
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(vocab_size=8192))


def family(backbone: nn.Module) -> str:
    """decoder, encoder or encoder-decoder: what the backbone can be fine-tuned for."""
    if is_encoder_decoder(backbone):
        return "encoder-decoder"
    return "encoder" if is_encoder(backbone) else "decoder"


def load_backbone(path: str | Path) -> nn.Module:
    """A pretrained model from its folder: fromzero decoder / encoder / T5, or a Hugging Face folder."""
    from fromzero.model.auto import loader_for
    from fromzero.model.io import read_config

    path = Path(path)
    if not (path / "config.json").is_file():
        hint = " (run `fromzero quickstart` first, or set model: scratch)" if str(path) == DEFAULT_MODEL else ""
        raise FromzeroError(f"no pretrained model at {path}: it needs config.json + model.safetensors + "
                            f"tokenizer.json{hint}")
    data = read_config(path)
    if data.get("model_type") is None and "type_vocab_size" in data:  # a Trainer checkpoint of an encoder objective
        export = path.parent.parent / "encoder"
        raise FromzeroError(f"{path} is a training checkpoint of an encoder pretraining run; fine-tune the encoder "
                            f"it exported instead: model={export}")
    return loader_for(path)(path)


def with_dropout(backbone: nn.Module, p: float) -> nn.Module:
    """The same backbone (same weights) rebuilt with dropout p in every layer. Backbones pretrained
    without dropout (the short-budget recipes) overfit a small task within a few epochs; BERT
    fine-tunes with 0.1."""
    config = getattr(backbone, "config", None)
    if config is None or not hasattr(config, "dropout"):
        raise FromzeroError(f"backbone_dropout: {type(backbone).__name__} has no config.dropout; remove the key")
    if config.dropout == p:
        return backbone
    rebuilt = type(backbone)(dataclasses.replace(config, dropout=p))
    rebuilt.load_state_dict(backbone.state_dict())
    return rebuilt


def save_backbone(model: nn.Module, directory: Path) -> None:
    """Write a backbone in the format load_backbone reads back."""
    from fromzero.model.encoder import EncoderModel, save_encoder
    from fromzero.modules.weights import save_weights

    if isinstance(model, EncoderModel):
        save_encoder(model, directory)
    else:
        save_weights(model, directory)  # DecoderLM via save_model; others generic (T5: load_seq2seq_model)


def check_vocab(backbone: nn.Module, tok: Tokenizer, where: str) -> None:
    """A tokenizer with more tokens than the model has embeddings would index past the table."""
    vocab = getattr(getattr(backbone, "config", None), "vocab_size", None)
    if vocab is not None and tok.vocab_size > vocab:
        raise FromzeroError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model only {vocab} "
                            "embeddings; use the tokenizer.json saved with this model")


def task_texts(examples: Sequence[Any], kind: str) -> list[str]:
    """Every text of a task's examples, to train a scratch tokenizer on."""
    if kind == "classification":
        return [e.text for e in examples]
    if kind == "tagging":
        return ["".join(e.tokens) for e in examples]
    if kind == "seq2seq":
        return [t for e in examples for t in (e.source, e.target)]
    return [m["content"] for e in examples for m in e.messages]


def scratch_backbone(sc: ScratchConfig, texts: Sequence[str], max_len: int, seed: int) -> tuple[nn.Module, Tokenizer]:
    """(randomly initialised backbone seeded with `seed`, tokenizer): the tokenizer from
    sc.tokenizer_path, or trained on `texts`; the context fits at least max_len tokens."""
    from fromzero.model.decoder import DecoderLM
    from fromzero.model.encoder import EncoderModel

    if sc.tokenizer_path:
        tok = Tokenizer.load(sc.tokenizer_path)
    else:
        tok = train_tokenizer(list(texts), sc.tokenizer, show_progress=False)
        print(f"tokenizer: trained {sc.tokenizer.kind} with {tok.vocab_size} tokens on the task's training texts")
    torch.manual_seed(seed)
    if sc.arch == "encoder":
        enc = sc.encoder
        ecfg = build(EncoderConfig, {**to_dict(enc), "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id,
                                     "max_seq_len": max(enc.max_seq_len, max_len)}, "scratch.encoder")
        return EncoderModel(ecfg), tok
    mcfg = build(ModelConfig, {**to_dict(sc.model), "vocab_size": tok.vocab_size,
                               "max_seq_len": max(sc.model.max_seq_len, max_len)}, "scratch.model")
    return DecoderLM(mcfg), tok


__all__ = ["DEFAULT_MODEL", "ScratchConfig", "check_vocab", "family", "load_backbone", "save_backbone",
           "scratch_backbone", "task_texts", "with_dropout"]
