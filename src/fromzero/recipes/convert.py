"""`fromzero convert`: Hugging Face checkpoint folders <-> fromzero checkpoint folders.

What the source holds is decided once, by `fromzero.model.auto` from its config.json; the direction
follows from it: a fromzero folder (model_type fromzero-*, or a T5 training checkpoint's bare
config) goes to Hugging Face, a Hugging Face folder (gpt2, llama, qwen2, bert, t5, mt5) comes to fromzero.
Tokenizer files (and a SimCSE encoder's embedding.json) travel along, so the converted folder is
ready for generate / fine-tune / embed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from torch import nn

from fromzero.config import to_dict
from fromzero.errors import FromzeroError
from fromzero.model.auto import load_model
from fromzero.model.decoder import DecoderLM, save_model
from fromzero.model.encoder import EncoderModel, save_encoder
from fromzero.model.encoder_decoder import EncoderDecoderLM
from fromzero.model.hf.bert import save_hf_bert
from fromzero.model.hf.decoder import save_hf
from fromzero.model.hf.t5 import save_hf_t5
from fromzero.model.io import read_config
from fromzero.modules.weights import save_weights

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "embedding.json")


def _save_t5_native(model: EncoderDecoderLM, dst: Path) -> None:
    save_weights(model, dst)
    (dst / "config.json").write_text(json.dumps(to_dict(model.config), indent=2), encoding="utf-8")


# model class -> (family, save as Hugging Face, save as fromzero)
SAVERS: dict[type, tuple[str, Callable[[nn.Module, Path], object], Callable[[nn.Module, Path], object]]] = {
    DecoderLM: ("decoder", save_hf, save_model),
    EncoderModel: ("encoder", save_hf_bert, save_encoder),
    EncoderDecoderLM: ("encoder-decoder", save_hf_t5, _save_t5_native),
}


def convert(src: str | Path, dst: str | Path) -> tuple[str, str]:
    """Convert `src` into `dst`; returns (family, direction) where direction is 'to-hf' or 'from-hf'."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FromzeroError(f"{dst} exists and is not empty; choose a new output folder (nothing was overwritten)")
    if src.is_dir() and dst.resolve() == src.resolve():
        raise FromzeroError(f"convert would overwrite its input {src}; choose another output folder")
    model = load_model(src)
    model_type = read_config(src).get("model_type")
    to_hf = model_type is None or str(model_type).startswith("fromzero")
    family, save_as_hf, save_as_fromzero = SAVERS[type(model)]
    dst.mkdir(parents=True, exist_ok=True)
    (save_as_hf if to_hf else save_as_fromzero)(model, dst)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return family, "to-hf" if to_hf else "from-hf"
