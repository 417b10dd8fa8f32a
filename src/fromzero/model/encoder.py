"""EncoderModel: a BERT-style bidirectional Transformer with its pooler and masked-LM head.

token + position + segment embeddings -> LayerNorm -> n_layer blocks (bidirectional attention with
a key-padding mask, erf-GELU MLP; post-LN like BERT or pre-LN) -> heads:
  pooler     tanh(W h[CLS])                      sentence-level features (NSP/SOP, classification)
  head       transform + GELU + LayerNorm + decoder tied to the token embedding (+ bias): MLM logits
  pair_head  optional 2-way classifier on the pooled output (next-sentence / sentence-order)

The layers are the decoder's (fused-QKV Attention, GeluMLP) with a bidirectional forward, so
speed work on one helps the other. `embed_dim` < d_model is ELECTRA's trick: a small generator
reads the discriminator's (wider) embeddings through a projection.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.config import build, to_dict
from fromzero.errors import FromzeroError
from fromzero.model.config import ModelConfig
from fromzero.model.io import read_config, read_safetensors, write_model_folder
from fromzero.model.layers import Attention, GeluMLP
from fromzero.modules.wrappers import unwrap

FORMAT = "fromzero-encoder"  # config.json "model_type" of save_encoder folders


@dataclass
class EncoderConfig:
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    d_ff: int | None = None  # None = 4 * d_model
    max_seq_len: int = 128
    type_vocab_size: int = 2
    dropout: float = 0.1  # hidden and attention-probability dropout (BERT uses 0.1 for both)
    norm_eps: float = 1e-12
    pre_ln: bool = False  # False = post-LN (original BERT); True = pre-LN (+ a final LayerNorm)
    pad_token_id: int = 0
    embed_dim: int | None = None  # None = d_model; smaller/larger adds a projection (ELECTRA)
    pair_head: bool = False  # a 2-way classifier on the pooled output, for NSP / SOP
    mlm_head: bool = True  # False for encoders that never predict tokens (ELECTRA's discriminator)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise FromzeroError(f"invalid encoder config: {msg}")

        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "type_vocab_size"):
            need(int(getattr(self, name)) > 0, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(self.d_model % self.n_head == 0,
             f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}); e.g. d_model={self.n_head * 64}")
        need(self.d_ff is None or self.d_ff > 0, f"d_ff must be positive, got {self.d_ff}")
        need(self.embed_dim is None or self.embed_dim > 0, f"embed_dim must be positive, got {self.embed_dim}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.norm_eps > 0, f"norm_eps must be positive, got {self.norm_eps}")
        need(0 <= self.pad_token_id < self.vocab_size,
             f"pad_token_id ({self.pad_token_id}) must be a token id below vocab_size ({self.vocab_size})")

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def emb_dim(self) -> int:
        return self.embed_dim or self.d_model

    def layer_config(self) -> ModelConfig:
        """The decoder's ModelConfig with the same sizes, to build the shared layers from."""
        return ModelConfig(arch="gpt2", vocab_size=self.vocab_size, n_layer=self.n_layer, n_head=self.n_head,
                           d_model=self.d_model, d_ff=self.ffn_dim, max_seq_len=self.max_seq_len,
                           dropout=self.dropout, norm_eps=self.norm_eps, bias=True)


class EncoderOutput(NamedTuple):
    hidden: Tensor  # [B, T, d_model] last-layer states
    logits: Tensor | None  # MLM logits: [B, T, V], or [N, V] for the N labelled positions when labels are given
    loss: Tensor | None  # MLM cross-entropy over labelled positions (labels != -100)
    pooled: Tensor | None  # [B, d_model] tanh(pooler(h[CLS])), when asked for or when there is a pair head
    pair_logits: Tensor | None  # [B, 2] from the pair head, if the model has one


class BidirectionalAttention(Attention):
    """The decoder's fused-QKV attention without the causal mask; padded keys are masked out.

    A prefix (prefix tuning sets `prefix_kv`, [H, P, head_dim] each) is put in front of the keys
    and values, and the key-padding mask grows by P always-visible slots: padding hides real
    positions only, never the prefix."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        B, T, _ = x.shape
        H = self.n_head
        q, k, v = self.qkv(x).view(B, T, 3 * H, self.head_dim).transpose(1, 2).split(H, dim=1)
        if self.prefix_kv is not None:
            pk, pv = self.prefix_kv
            k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
            if mask is not None:  # [B, 1, 1, T] -> [B, 1, 1, P + T]
                mask = torch.cat([mask.new_ones(*mask.shape[:-1], pk.shape[1]), mask], dim=-1)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim))


class ErfGeluMLP(GeluMLP):
    """BERT's MLP: exact (erf) GELU, not GPT-2's tanh approximation."""

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class EncoderBlock(nn.Module):
    """post-LN: x = norm1(x + attn(x)); x = norm2(x + mlp(x)).   pre-LN: x + attn(norm1(x)), x + mlp(norm2(x))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        layer_cfg = cfg.layer_config()
        self.pre_ln = cfg.pre_ln
        self.attn = BidirectionalAttention(layer_cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = ErfGeluMLP(layer_cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.pre_ln:
            x = x + self.drop(self.attn(self.norm1(x), mask))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.mlp(x)))


class Embeddings(nn.Module):
    """Sum of token, position and segment embeddings, LayerNorm, dropout (and a projection to d_model)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        e = cfg.emb_dim
        self.tok = nn.Embedding(cfg.vocab_size, e)
        self.pos = nn.Embedding(cfg.max_seq_len, e)
        self.seg = nn.Embedding(cfg.type_vocab_size, e)
        self.norm = nn.LayerNorm(e, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.proj = nn.Linear(e, cfg.d_model) if e != cfg.d_model else None

    def forward(self, input_ids: Tensor | None, token_type_ids: Tensor | None,
                inputs_embeds: Tensor | None = None) -> Tensor:
        """inputs_embeds [B, T, emb_dim] replaces the token lookup (prompt tuning prepends vectors);
        positions, segments, LayerNorm and dropout apply to it as to looked-up tokens."""
        x = self.tok(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        x = x + self.pos.weight[:T]
        x = x + (self.seg.weight[0] if token_type_ids is None else self.seg(token_type_ids))
        x = self.drop(self.norm(x))
        return x if self.proj is None else self.proj(x)


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (weight tied to the token embedding, own bias)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.transform = nn.Linear(cfg.d_model, cfg.emb_dim)
        self.norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.norm_eps)
        self.decoder = nn.Linear(cfg.emb_dim, cfg.vocab_size)  # .weight is tied in EncoderModel

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.transform(h))))


class EncoderModel(nn.Module):
    """BERT-style encoder; see the module docstring. Parameter names: emb.{tok,pos,seg,norm,proj},
    blocks.{i}.{attn.qkv,attn.proj,norm1,mlp.up,mlp.down,norm2}, final_norm (pre-LN only), pooler,
    head.{transform,norm,decoder} (decoder.weight is emb.tok.weight), pair_head."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = cfg = config
        self.emb = Embeddings(cfg)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.pre_ln else None
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model)
        self.head = MLMHead(cfg) if cfg.mlm_head else None
        self.pair_head = nn.Linear(cfg.d_model, 2) if cfg.pair_head else None
        self.reset_parameters()
        self.tie_weights()

    def tie_weights(self) -> None:
        """The MLM decoder reads the token embedding (call again after replacing self.emb.tok)."""
        if self.head is not None:
            self.head.decoder.weight = self.emb.tok.weight

    def save_pretrained(self, dir: str | Path) -> Path:
        """Write `dir/model.safetensors` + `dir/config.json` (model_type fromzero-encoder)."""
        tensors = {k: v for k, v in self.state_dict().items() if k != "head.decoder.weight"}
        return write_model_folder(dir, tensors, {"model_type": FORMAT, **to_dict(self.config)})

    def reset_parameters(self) -> None:
        """BERT init: N(0, 0.02) for matrices and embeddings, zero biases, unit LayerNorm gains."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ forward

    def hidden_states(self, input_ids: Tensor | None, attention_mask: Tensor | None = None,
                      token_type_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        """[B, T] ids (attention_mask: 1 = real token, 0 = padding) -> last-layer states [B, T, d_model].
        inputs_embeds [B, T, emb_dim] instead of ids: vectors that bypass the token embedding."""
        T = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        if T > self.config.max_seq_len:
            raise FromzeroError(
                f"input has {T} tokens but the encoder's max_seq_len is {self.config.max_seq_len}; "
                f"truncate the input to {self.config.max_seq_len} tokens"
            )
        x = self.emb(input_ids, token_type_ids, inputs_embeds)
        mask = key_padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask)
        return x if self.final_norm is None else self.final_norm(x)

    def pool(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.pooler(hidden[:, 0]))

    def pooled(self, input_ids: Tensor, attention_mask: Tensor | None = None,
               token_type_ids: Tensor | None = None) -> Tensor:
        """[B, d_model]: tanh(pooler(h[CLS])), BERT's sentence-level output."""
        return self.pool(self.hidden_states(input_ids, attention_mask, token_type_ids))

    def mlm_logits(self, hidden: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """MLM logits and loss. With labels only the labelled rows ([N, V]) go through the head:
        with 15% masking that skips 85% of the head's vocabulary-sized matmul."""
        if self.head is None:
            raise FromzeroError("this encoder has no MLM head (config mlm_head=false); it cannot predict tokens")
        if labels is None:
            return self.head(hidden), None
        flat = labels.reshape(-1)
        picked = (flat != -100).nonzero().squeeze(1)
        logits = self.head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, picked))
        target = flat.index_select(0, picked)
        loss = F.cross_entropy(logits.float(), target) if picked.numel() else logits.sum() * 0.0
        return logits, loss

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                labels: Tensor | None = None, mlm: bool = True, pool: bool = False) -> EncoderOutput:
        """Everything the objectives need in one call (DDP only syncs gradients through forward).

        mlm=False skips the MLM head (sentence embeddings, ELECTRA's discriminator); pool=True adds
        the pooled output. See EncoderOutput for shapes.
        """
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        logits = loss = None
        if mlm and (self.head is not None or labels is not None):  # labels without a head: a clear error
            logits, loss = self.mlm_logits(h, labels)
        pooled = self.pool(h) if pool or self.pair_head is not None else None
        pair_logits = self.pair_head(pooled) if self.pair_head is not None else None
        return EncoderOutput(h, logits, loss, pooled, pair_logits)

    # ------------------------------------------------------------------ accounting

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameter count (the tied MLM decoder counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(m.weight.numel() for m in (self.emb.tok, self.emb.pos, self.emb.seg))
        return n

    def flops_per_token(self, seq_len: int | None = None, head_fraction: float = 1.0) -> float:
        """Training FLOPs per token: 6 * matmul params + 12 * n_layer * d_model * seq_len (attention).

        The MLM head's matmuls count with weight `head_fraction`: 1.0 = logits at every position
        (what BertForMaskedLM computes), 0.15 = only at the masked positions (what we compute).
        """
        cfg = self.config
        heads = [self.head.transform, self.head.decoder] if self.head is not None else []
        skip = {id(m) for m in [*heads, self.pooler, self.pair_head]}
        body = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear) and id(m) not in skip)
        head_params = sum(m.weight.numel() for m in heads)
        T = seq_len or cfg.max_seq_len
        return 6.0 * (body + head_fraction * head_params) + 12.0 * cfg.n_layer * cfg.d_model * T


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """[B, T] 1/0 -> boolean [B, 1, 1, T] (True = may be attended to), or None when nothing is
    padded, so SDPA takes its unmasked fast path."""
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    return None if bool(keep.all()) else keep[:, None, None, :]


# ---------------------------------------------------------------------- save / load


def save_encoder(model: EncoderModel, dir: str | Path) -> Path:
    """Write `dir/model.safetensors` + `dir/config.json` (model_type fromzero-encoder); the MLM decoder,
    tied to the embeddings, is stored once."""
    base = unwrap(model)
    if not isinstance(base, EncoderModel):
        raise TypeError(f"save_encoder expects an EncoderModel, got {type(base).__name__}")
    return base.save_pretrained(dir)


def load_encoder(dir: str | Path, map_location: str | torch.device = "cpu") -> EncoderModel:
    """Rebuild an EncoderModel from save_encoder output or a trainer checkpoint of one (a Hugging
    Face BERT folder loads through fromzero.from_pretrained)."""
    dir = Path(dir)
    if not dir.is_dir():
        raise FromzeroError(f"model directory {dir} not found; pass a folder with model.safetensors and config.json")
    data = read_config(dir)
    model_type = data.pop("model_type", FORMAT)
    if model_type == "bert":
        raise FromzeroError(f"{dir} is a Hugging Face BERT folder: load it with fromzero.from_pretrained")
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    if model_type != FORMAT or not set(data) <= fields:
        raise FromzeroError(
            f"{dir / 'config.json'} does not describe an encoder (model_type {model_type!r}); "
            "point to a folder written by save_encoder / `fromzero pretrain` with an encoder objective, "
            "or a BERT folder"
        )
    model = EncoderModel(build(EncoderConfig, data, where="config.json"))
    state = read_safetensors(dir / "model.safetensors")
    state.pop("head.decoder.weight", None)
    own = model.state_dict()
    own.pop("head.decoder.weight", None)
    for key in sorted(set(own) | set(state)):
        if key not in state or key not in own:
            what = "missing from the file" if key not in state else "not part of this model"
            raise FromzeroError(f"{dir}: tensor '{key}' is {what}; config.json and model.safetensors do not match")
        if state[key].shape != own[key].shape:
            raise FromzeroError(f"{dir}: tensor '{key}' has shape {tuple(state[key].shape)} but the config implies "
                                f"{tuple(own[key].shape)}; config.json and model.safetensors come from different "
                                "models")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.to(map_location)
