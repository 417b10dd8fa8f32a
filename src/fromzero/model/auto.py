"""`fromzero.from_pretrained(path)`: load any model folder fromzero reads, whatever its family.

The folder's config.json says what it holds: a Hugging Face `model_type` (gpt2, llama, qwen2, bert,
t5, mt5), fromzero's own (fromzero-decoder, fromzero-encoder), or, in a training checkpoint of an
encoder or a T5 model, the bare config dataclass with no model_type. This module only reads that
and hands the folder to the family's loader, which owns every other check (weights, shapes, ...).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fromzero.errors import FromzeroError
from fromzero.model import decoder, encoder, io
from fromzero.model.encoder_decoder import T5Config
from fromzero.model.hf import bert as hf_bert
from fromzero.model.hf import decoder as hf_decoder
from fromzero.model.hf import t5 as hf_t5

# model_type -> loader: the only place a folder's model_type picks the code that reads it. Built from
# the loaders' own lists so the two cannot drift apart.
LOADERS: dict[str, Callable[..., nn.Module]] = {
    decoder.FORMAT: decoder.load_decoder,
    **dict.fromkeys(hf_decoder.SUPPORTED, hf_decoder.load_hf),
    encoder.FORMAT: encoder.load_encoder,
    "bert": hf_bert.load_hf_bert,
    **dict.fromkeys(hf_t5.SUPPORTED, hf_t5.load_seq2seq_model),
}
# Training checkpoints of encoders and T5 models hold the bare config (no model_type): the keys tell which.
BARE_CONFIGS: dict[type, Callable[..., nn.Module]] = {
    encoder.EncoderConfig: encoder.load_encoder,
    T5Config: hf_t5.load_seq2seq_model,
}
# Loaders that build the model directly in a dtype (the others are cast after loading).
_TAKES_DTYPE = {decoder.load_decoder, hf_decoder.load_hf}


def from_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """A DecoderLM, EncoderModel or EncoderDecoderLM from a fromzero or Hugging Face model folder.

    Returned in eval mode, as transformers does (dropout off); call .train() before fine-tuning.
    """
    return loader_for(Path(path))(path, map_location=map_location).eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> nn.Module:
    """Like from_pretrained, in `dtype` (float32 when None) and left in the mode the loader gives."""
    load = loader_for(Path(path))
    if load in _TAKES_DTYPE:
        return load(path, map_location=map_location, dtype=dtype)
    model = load(path, map_location=map_location)
    return model if dtype is None else model.to(dtype)


def loader_for(path: Path) -> Callable[..., nn.Module]:
    """The family loader for a model folder, chosen from its config.json (one clear error if none fits)."""
    supported = (f"Hugging Face {', '.join(t for t in LOADERS if not t.startswith('fromzero'))} folders, "
                 "and folders saved by fromzero (save_model, save_encoder, training checkpoints)")
    if not path.is_dir():
        raise FromzeroError(f"model folder {path} not found; from_pretrained loads {supported}")
    if not (path / io.CONFIG).is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        hint = ("; it looks like a fine-tuned task folder: load it with fromzero.tuning.artifacts.load_finetuned"
                if (path / "finetune.json").is_file() else "")
        raise FromzeroError(f"{path} has no config.json (found: {found}){hint}; from_pretrained loads {supported}")
    data = io.read_config(path)
    model_type = data.get("model_type")
    if model_type in LOADERS:
        return LOADERS[model_type]
    if model_type is None:
        matches = [load for cls, load in BARE_CONFIGS.items()
                   if data and set(data) <= {f.name for f in dataclasses.fields(cls)}]
        if len(matches) == 1:
            return matches[0]
        found = f"no model_type and keys {sorted(data)[:6]}"
    else:
        found = f"model_type {model_type!r}"
    raise FromzeroError(f"{path / io.CONFIG} has {found}, which fromzero cannot load; from_pretrained loads "
                        f"{supported}")
