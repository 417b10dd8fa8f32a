"""`fromzero convert`: Hugging Face checkpoint folders <-> fromzero checkpoint folders.

The direction and the model family come from the source's config.json `model_type`: Hugging Face
names (gpt2, llama, qwen2, bert, t5, mt5) or fromzero's (fromzero-decoder, fromzero-encoder; a
seq2seq training checkpoint holds the bare T5Config).
Tokenizer files travel along, so the converted folder is ready for generate / fine-tune.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fromzero.errors import FromzeroError

DECODER_TYPES = ("gpt2", "llama", "qwen2")
T5_TYPES = ("t5", "mt5")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def model_family(config: dict) -> str:
    """'decoder', 'encoder' or 'encoder-decoder' for a Hugging Face or fromzero config dict."""
    model_type = config.get("model_type")
    if model_type in DECODER_TYPES or model_type == "fromzero-decoder":
        return "decoder"
    if model_type in ("bert", "fromzero-encoder"):
        return "encoder"
    if model_type in T5_TYPES or (model_type is None and "relative_attention_num_buckets" in config):
        return "encoder-decoder"
    supported = ", ".join(DECODER_TYPES + ("bert",) + T5_TYPES)
    raise FromzeroError(f"unsupported model_type {model_type!r}; fromzero converts {supported}")


def convert(src: str | Path, dst: str | Path) -> tuple[str, str]:
    """Convert `src` into `dst`; returns (family, direction) where direction is 'to-hf' or 'from-hf'."""
    src, dst = Path(src), Path(dst)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise FromzeroError(f"{cfg_path} not found; point to a model folder with config.json + model.safetensors")
    if dst.exists() and any(dst.iterdir()):
        raise FromzeroError(f"{dst} exists and is not empty; choose a new output folder (nothing was overwritten)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FromzeroError(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    family = model_family(config)
    to_hf = str(config.get("model_type", "fromzero")).startswith("fromzero")
    if family == "decoder":
        from fromzero.model.hf import load_hf, save_hf
        from fromzero.model.io import load_model, save_model

        save_hf(load_model(src), dst) if to_hf else save_model(load_hf(src), dst)
    elif family == "encoder":
        from fromzero.model.encoder import load_encoder, save_encoder
        from fromzero.model.hf_bert import save_hf_bert

        model = load_encoder(src)
        save_hf_bert(model, dst) if to_hf else save_encoder(model, dst)
    else:
        from fromzero.config import to_dict
        from fromzero.model.hf_t5 import load_seq2seq_model, save_hf_t5
        from fromzero.train.checkpoint import save_weights

        model = load_seq2seq_model(src)
        if to_hf:
            save_hf_t5(model, dst)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            save_weights(model, dst)
            (dst / "config.json").write_text(json.dumps(to_dict(model.config), indent=2), encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return family, "to-hf" if to_hf else "from-hf"
