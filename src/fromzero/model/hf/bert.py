"""Hugging Face BERT folders (config.json + model.safetensors) <-> EncoderModel, both ways.

Reads BertModel, BertForMaskedLM and BertForPreTraining checkpoints (names with or without the
"bert." prefix; old "gamma"/"beta" LayerNorm names too). Writes BertForMaskedLM-style names (plus
the pooler, and cls.seq_relationship when the model has a pair head -> BertForPreTraining), so
`transformers.BertForMaskedLM.from_pretrained(dir)` and `AutoModel.from_pretrained(dir)` load it.
Q, K and V are separate in BERT and one fused matrix here: they are concatenated on import and
split on export. Only safetensors are read: pytorch_model.bin (a pickle) is refused.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from fromzero.errors import FromzeroError
from fromzero.model.encoder import EncoderConfig, EncoderModel
from fromzero.model.io import read_config, read_safetensors

WEIGHTS = "model.safetensors"
TASK_HEADS = ("classifier.", "qa_outputs.", "dropout.")  # fine-tuning heads we skip on import

# fromzero name -> BERT name (without the "bert." prefix for body tensors); {i} = layer
_EMB = {
    "emb.tok.weight": "embeddings.word_embeddings.weight",
    "emb.pos.weight": "embeddings.position_embeddings.weight",
    "emb.seg.weight": "embeddings.token_type_embeddings.weight",
    "emb.norm.weight": "embeddings.LayerNorm.weight",
    "emb.norm.bias": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
_LAYER = {
    "attn.proj.{p}": "attention.output.dense.{p}",
    "norm1.{p}": "attention.output.LayerNorm.{p}",
    "mlp.up.{p}": "intermediate.dense.{p}",
    "mlp.down.{p}": "output.dense.{p}",
    "norm2.{p}": "output.LayerNorm.{p}",
}
_HEADS = {  # full names, outside the "bert." body
    "head.transform.weight": "cls.predictions.transform.dense.weight",
    "head.transform.bias": "cls.predictions.transform.dense.bias",
    "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.decoder.bias": "cls.predictions.bias",
    "pair_head.weight": "cls.seq_relationship.weight",
    "pair_head.bias": "cls.seq_relationship.bias",
}
_OPTIONAL = ("pooler.", "head.", "pair_head.")  # may be absent (BertModel has no MLM head, ...)


def config_from_hf(hf: dict, source: str | Path = "config.json") -> EncoderConfig:
    """A BERT config.json dict -> EncoderConfig; anything we cannot reproduce exactly is an error."""
    if hf.get("model_type") != "bert":
        raise FromzeroError(f"{source}: model_type is {hf.get('model_type')!r}, not 'bert'; "
                            "fromzero imports BERT encoders (BertModel / BertForMaskedLM / BertForPreTraining)")
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise FromzeroError(f"{source}: hidden_act {act!r} is not supported (fromzero's encoder uses exact 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise FromzeroError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                            "only 'absolute' positions are")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise FromzeroError(f"{source}: a BERT decoder (is_decoder / add_cross_attention) is not an encoder; "
                            "import a plain BERT encoder")
    try:
        return EncoderConfig(
            vocab_size=int(hf["vocab_size"]), n_layer=int(hf["num_hidden_layers"]),
            n_head=int(hf["num_attention_heads"]), d_model=int(hf["hidden_size"]),
            d_ff=int(hf["intermediate_size"]), max_seq_len=int(hf["max_position_embeddings"]),
            type_vocab_size=int(hf.get("type_vocab_size", 2)), dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)), pre_ln=False,
            pad_token_id=int(hf.get("pad_token_id") or 0),
        )
    except KeyError as e:
        raise FromzeroError(f"{source} lacks the BERT setting {e.args[0]!r}; it is not a complete BERT "
                            "config") from None


def config_to_hf(cfg: EncoderConfig) -> dict:
    if cfg.pre_ln or cfg.embed_dim not in (None, cfg.d_model):
        raise FromzeroError("only post-LN encoders with embed_dim = d_model have a BERT equivalent; "
                            "this model (pre_ln or a projected embedding) cannot be exported as BERT")
    return {
        "architectures": ["BertForPreTraining" if cfg.pair_head and cfg.mlm_head
                          else "BertForMaskedLM" if cfg.mlm_head else "BertModel"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "intermediate_size": cfg.ffn_dim, "hidden_act": "gelu",
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_seq_len, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps, "pad_token_id": cfg.pad_token_id, "initializer_range": 0.02,
        "position_embedding_type": "absolute", "tie_word_embeddings": True, "dtype": "float32",
    }


def _name_map(n_layer: int, pair_head: bool = True) -> dict[str, str]:
    """Every fromzero tensor name except the fused QKV -> its full BERT name."""
    out = {k: "bert." + v for k, v in _EMB.items()}
    for i in range(n_layer):
        for ours, theirs in _LAYER.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours.format(p=p)}"] = f"bert.encoder.layer.{i}.{theirs.format(p=p)}"
    out.update({k: v for k, v in _HEADS.items() if pair_head or not k.startswith("pair_head.")})
    return out


def _normalise_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the "bert." prefix BertModel files lack and rename old gamma/beta LayerNorm tensors."""
    out = {}
    for key, t in state.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key
        out[key] = t
    return out


def state_from_hf(state: dict[str, torch.Tensor], cfg: EncoderConfig, source: str | Path = WEIGHTS
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """BERT tensors -> fromzero state dict; returns (state, names of optional tensors not in the file)."""
    state = _normalise_names(state)
    state.pop("bert.embeddings.position_ids", None)  # a buffer some old files carry
    state.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
    decoder_bias = state.pop("cls.predictions.decoder.bias", None)
    if "cls.predictions.bias" not in state and decoder_bias is not None:
        state["cls.predictions.bias"] = decoder_bias
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for ours, theirs in _name_map(cfg.n_layer, cfg.pair_head).items():
        if theirs in state:
            out[ours] = state.pop(theirs)
        elif ours.startswith(_OPTIONAL):
            missing.append(theirs)
        else:
            raise FromzeroError(f"{source}: tensor '{theirs}' is missing; the file is not a complete BERT "
                                f"checkpoint for its config ({cfg.n_layer} layers)")
    for i in range(cfg.n_layer):
        base = f"bert.encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            parts = []
            for name in ("query", "key", "value"):
                key = f"{base}{name}.{p}"
                if key not in state:
                    raise FromzeroError(f"{source}: tensor '{key}' is missing; the file is not a complete BERT "
                                        "checkpoint")
                want = (cfg.d_model, cfg.d_model)[: 2 if p == "weight" else 1]
                if tuple(state[key].shape) != want:  # checked here: torch.cat would fail with no name
                    raise FromzeroError(f"{source}: tensor '{key}' has shape {tuple(state[key].shape)} but config.json "
                                        f"implies {want}; the weights and config.json do not match")
                parts.append(state.pop(key))
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(parts, dim=0)
    leftover = sorted(k for k in state if not k.startswith(TASK_HEADS))
    if leftover:
        raise FromzeroError(f"{source}: tensor '{leftover[0]}' (and {len(leftover) - 1} more) has no place in a BERT "
                            "encoder; this architecture is not supported (fromzero imports BertModel/ForMaskedLM/"
                            "ForPreTraining)")
    return out, missing


def load_hf_bert(path: str | Path, map_location: str | torch.device = "cpu") -> EncoderModel:
    """Import a local Hugging Face BERT folder into an EncoderModel (fp32).

    Tensors a BERT variant may lack (pooler, MLM head, NSP head) keep their fresh initialisation,
    with a warning naming them; everything in the encoder body must be present and the right shape.
    """
    path = Path(path)
    if not path.is_dir():
        raise FromzeroError(f"BERT folder {path} not found; pass a directory with config.json and model.safetensors")
    hf = read_config(path)
    if not (path / WEIGHTS).is_file() and (path / "pytorch_model.bin").is_file():
        raise FromzeroError(f"{path} has only pytorch_model.bin (a pickle, unsafe to load); convert it to "
                            "safetensors with transformers: model.save_pretrained(dir, safe_serialization=True)")
    cfg = config_from_hf(hf, path / "config.json")
    cfg.pair_head = "cls.seq_relationship.weight" in _safetensors_keys(path / WEIGHTS)
    state, missing = state_from_hf(read_safetensors(path / WEIGHTS), cfg, path / WEIGHTS)
    model = EncoderModel(cfg)
    own = model.state_dict()
    for key, t in state.items():
        if tuple(t.shape) != tuple(own[key].shape):
            theirs = _name_map(cfg.n_layer).get(key, key)
            raise FromzeroError(f"{path / WEIGHTS}: tensor '{theirs}' has shape {tuple(t.shape)} but config.json "
                                f"implies {tuple(own[key].shape)}; the weights and config.json do not match")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.tie_weights()
    if missing:
        warnings.warn(f"{path}: {len(missing)} optional tensors are not in the checkpoint and stay freshly "
                      f"initialised: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}", stacklevel=2)
    return model.to(map_location)


def save_hf_bert(model: EncoderModel, path: str | Path) -> Path:
    """Export an EncoderModel as a Hugging Face BERT folder (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    from fromzero.modules.wrappers import unwrap

    model = unwrap(model)
    if not isinstance(model, EncoderModel):
        raise FromzeroError(f"only EncoderModel can be exported as BERT, got {type(model).__name__}")
    cfg = model.config
    hf = config_to_hf(cfg)
    own = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors = {}
    for ours, theirs in _name_map(cfg.n_layer).items():
        if ours in own:
            tensors[theirs] = own[ours]
    for i in range(cfg.n_layer):
        base = f"bert.encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            q, k, v = own[f"blocks.{i}.attn.qkv.{p}"].chunk(3, dim=0)
            for name, t in (("query", q), ("key", k), ("value", v)):
                tensors[f"{base}{name}.{p}"] = t.contiguous()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
    return path


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except Exception:
        read_safetensors(path)  # raises the clear error
        raise
