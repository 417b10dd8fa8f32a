"""EncoderDecoderLM: a T5-style encoder-decoder (T5 v1.0 and v1.1 variants; HF T5 weights map 1:1).

What sets T5 apart from the decoder-only models in decoder.py:
- no absolute positions: every attention adds a learned bias per (head, relative-distance bucket)
  to its scores. The bias table lives once per stack (Hugging Face keeps it in layer 0) and the
  bias it produces is computed once per forward and shared by all layers of that stack;
- attention scores are not divided by sqrt(head_dim) (T5 folds that into the initialisation);
- no biases anywhere, and T5's "LayerNorm" is RMSNorm (no mean subtraction);
- the decoder reads the encoder output through cross-attention; with tied embeddings T5 v1.0
  rescales the decoder output by d_model**-0.5 before the (shared) output matrix.

Parameter names: shared, encoder.{rel_bias, blocks.{i}.{norm1, attn.qkv, attn.o, norm2, mlp.wi, mlp.wo}, norm},
decoder.{rel_bias, blocks.{i}.{norm1, self_attn.qkv, self_attn.o, norm2, cross_attn.q, cross_attn.kv,
cross_attn.o, norm3, mlp.wi, mlp.wo}, norm}, lm_head (the same tensor as `shared` when tied).
q/k/v (and cross-attention k/v, and the two gated-GELU inputs) are fused into one matmul each;
fromzero.model.hf.t5 splits them for Hugging Face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.errors import FromzeroError
from fromzero.model.layers import KVCache, RMSNorm, gated_activation, lm_head_loss
from fromzero.modules.sampling import sample_next

MASKED = -1e30  # additive score for masked keys: finite in fp32 and bf16, so a fully masked row is uniform, not NaN


@dataclass
class T5Config:
    vocab_size: int = 8192
    d_model: int = 256
    d_kv: int = 64  # size of one attention head (T5 does not tie it to d_model / n_head)
    d_ff: int = 1024
    n_layer: int = 4  # encoder layers
    n_decoder_layer: int | None = None  # None = n_layer
    n_head: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.0
    norm_eps: float = 1e-6
    feed_forward: Literal["relu", "gated-gelu"] = "gated-gelu"  # T5 v1.0 / v1.1
    tie_embeddings: bool = True
    scale_logits: bool | None = None  # multiply decoder output by d_model**-0.5; None = tie_embeddings
    pad_id: int = 0
    decoder_start_id: int = 0  # T5 starts decoding from the pad token
    eos_id: int = 3  # fromzero tokenizers: </s> = 3 (Hugging Face T5 vocabularies use 1)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise FromzeroError(f"invalid T5 config: {msg}")

        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "n_layer", "n_head"):
            need(int(getattr(self, name)) > 0, f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(self.n_decoder_layer is None or self.n_decoder_layer > 0,
             f"n_decoder_layer must be positive or null, got {self.n_decoder_layer}")
        need(self.feed_forward in ("relu", "gated-gelu"),
             f"feed_forward must be 'relu' (T5 v1.0) or 'gated-gelu' (T5 v1.1), got {self.feed_forward!r}")
        need(self.relative_attention_num_buckets >= 4 and self.relative_attention_num_buckets % 2 == 0,
             f"relative_attention_num_buckets must be an even number >= 4, got {self.relative_attention_num_buckets}")
        need(self.relative_attention_max_distance > self.relative_attention_num_buckets // 2,
             "relative_attention_max_distance must exceed relative_attention_num_buckets / 2")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.norm_eps > 0, f"norm_eps must be positive, got {self.norm_eps}")
        for name in ("pad_id", "decoder_start_id", "eos_id"):
            need(0 <= getattr(self, name) < self.vocab_size,
                 f"{name}={getattr(self, name)} is outside the vocabulary (0..{self.vocab_size - 1})")

    @property
    def decoder_layers(self) -> int:
        return self.n_layer if self.n_decoder_layer is None else self.n_decoder_layer

    @property
    def inner_dim(self) -> int:
        return self.n_head * self.d_kv

    @property
    def scales_logits(self) -> bool:
        return self.tie_embeddings if self.scale_logits is None else self.scale_logits


def relative_position_bucket(rel: Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """Bucket of each relative position rel = key_pos - query_pos (Mesh TensorFlow's scheme).

    Per direction, half of the buckets hold the exact distances 0..n/2-1, the other half grow
    logarithmically up to max_distance; farther keys share the last bucket. The decoder is causal,
    so it only buckets keys at or before the query (bidirectional=False).
    """
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = (rel > 0).long() * num_buckets
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    exact = num_buckets // 2
    # same op order as Hugging Face, so the truncation to long gives identical buckets
    log_scale = torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_scale * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(dist < exact, dist, far)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | float, dropout: float = 0.0) -> Tensor:
    """softmax(q k^T + bias) v with no 1/sqrt(d) scale. q: [B, H, Tq, D], bias broadcasts to [B, H, Tq, Tk].

    Plain matmuls rather than F.scaled_dot_product_attention: the bias is learned, and SDPA with a
    differentiable mask falls back to its slower math path on CPU (2x slower in bf16, measured).
    Training without dropout takes _BiasedAttnFn (bias add fused into the score matmul, hand-written
    backward).
    """
    if isinstance(bias, Tensor) and dropout == 0 and torch.is_grad_enabled():
        return _BiasedAttnFn.apply(q, k, v, bias.to(q.dtype))
    scores = torch.matmul(q, k.transpose(-1, -2))
    if isinstance(bias, Tensor):
        scores = scores + bias.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0:
        probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs.to(v.dtype), v)


class _BiasedAttnFn(torch.autograd.Function):
    """softmax(q k^T + bias) v as baddbmm + softmax + bmm, saving only the probabilities.

    The backward is the textbook one; the bias gradient (T5's learned position bias) is the score
    gradient summed over the dimensions the bias was broadcast along.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        qf, kf, vf = q.reshape(B * H, Tq, D), k.reshape(B * H, Tk, D), v.reshape(B * H, Tk, D)
        full = bias.expand(B, H, Tq, Tk).reshape(B * H, Tq, Tk)
        probs = torch.softmax(torch.baddbmm(full, qf, kf.transpose(1, 2)), dim=-1)
        ctx.save_for_backward(qf, kf, vf, probs)
        ctx.bias_shape = bias.shape
        return torch.bmm(probs, vf).view(B, H, Tq, D)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        qf, kf, vf, probs = ctx.saved_tensors
        B, H, Tq, D = grad.shape
        gf = grad.reshape(B * H, Tq, D)
        dv = torch.bmm(probs.transpose(1, 2), gf)
        dscores = torch._softmax_backward_data(torch.bmm(gf, vf.transpose(1, 2)), probs, -1, probs.dtype)
        dq = torch.bmm(dscores, kf)
        dk = torch.bmm(dscores.transpose(1, 2), qf)
        dbias = None
        if ctx.needs_input_grad[3]:
            dbias = dscores.view(B, H, Tq, -1)
            summed = [d for d, n in enumerate(ctx.bias_shape) if n == 1 and dbias.shape[d] != 1]
            if summed:
                dbias = dbias.sum(dim=summed, keepdim=True)
        Tk = kf.shape[1]
        return dq.view(B, H, Tq, D), dk.view(B, H, Tk, D), dv.view(B, H, Tk, D), dbias


class SelfAttention(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.n_head, self.d_kv, self.dropout = cfg.n_head, cfg.d_kv, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.inner_dim, bias=False)
        self.o = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)
        # Prefix tuning (fromzero.peft) sets learned keys/values [n_kv_head, P, head_dim] here: they
        # take no position (zero bias), are never cached, and every query (causal or not) sees them.
        self.n_kv_head, self.head_dim = cfg.n_head, cfg.d_kv
        self.prefix_kv: tuple[Tensor, Tensor] | None = None

    def target_parts(self) -> dict[str, tuple[str, tuple[int, int] | None]]:
        """q, k, v inside the fused qkv output, for peft targets q / k / v (see fromzero.modules.targets)."""
        n = self.n_head * self.d_kv
        return {"q": ("qkv", (0, n)), "k": ("qkv", (n, 2 * n)), "v": ("qkv", (2 * n, 3 * n)), "qkv": ("qkv", None),
                "o": ("o", None)}

    def forward(self, x: Tensor, bias: Tensor, kv: tuple[Tensor, Tensor] | None = None, start_pos: int = 0) -> Tensor:
        """With `kv` (a static cache layer), the new keys/values are written at start_pos.. and
        the queries attend over the whole cached prefix."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.d_kv).permute(2, 0, 3, 1, 4)
        if kv is not None:
            cache_k, cache_v = kv
            end = start_pos + T
            cache_k[:, :, start_pos:end] = k
            cache_v[:, :, start_pos:end] = v
            k, v = cache_k[:, :, :end], cache_v[:, :, :end]
        if self.prefix_kv is not None:
            pk, pv = self.prefix_kv
            k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
            bias = torch.cat([bias.new_zeros(*bias.shape[:-1], pk.shape[1]), bias], dim=-1)
        y = attend(q, k, v, bias, self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class CrossAttention(nn.Module):
    """Decoder queries over the encoder output; its keys/values are computed once per input."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.n_head, self.d_kv, self.dropout = cfg.n_head, cfg.d_kv, cfg.dropout
        self.q = nn.Linear(cfg.d_model, cfg.inner_dim, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.inner_dim, bias=False)
        self.o = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)

    def target_parts(self) -> dict[str, tuple[str, tuple[int, int] | None]]:
        n = self.n_head * self.d_kv
        return {"q": ("q", None), "k": ("kv", (0, n)), "v": ("kv", (n, 2 * n)), "o": ("o", None)}

    def project_kv(self, enc: Tensor) -> tuple[Tensor, Tensor]:
        B, S, _ = enc.shape
        k, v = self.kv(enc).view(B, S, 2, self.n_head, self.d_kv).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], bias: Tensor | float) -> Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.d_kv).transpose(1, 2)
        y = attend(q, kv[0], kv[1], bias, self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """relu: wo(relu(wi x)) (v1.0); gated-gelu: wo(gelu_tanh(wi_0 x) * wi_1 x) (v1.1), wi = [wi_0; wi_1]."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated = cfg.feed_forward == "gated-gelu"
        self.wi = nn.Linear(cfg.d_model, (2 if self.gated else 1) * cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None

    def target_parts(self) -> dict[str, tuple[str, tuple[int, int] | None]]:
        """Hugging Face's wi_0 / wi_1 are the two halves of the gated wi."""
        f = self.wo.in_features
        if self.gated:
            return {"gate": ("wi", (0, f)), "up": ("wi", (f, 2 * f)), "down": ("wo", None)}
        return {"up": ("wi", None), "down": ("wo", None)}

    def forward(self, x: Tensor) -> Tensor:
        h = self.wi(x)
        h = gated_activation(h, "gelu_tanh") if self.gated else F.relu(h)
        if self.drop is not None:
            h = self.drop(h)
        return self.wo(h)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), bias))
        return x + self.drop(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = SelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg)
        self.norm3 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, self_bias: Tensor, cross_kv: tuple[Tensor, Tensor], cross_bias: Tensor | float,
                kv: tuple[Tensor, Tensor] | None = None, start_pos: int = 0) -> Tensor:
        x = x + self.drop(self.self_attn(self.norm1(x), self_bias, kv, start_pos))
        x = x + self.drop(self.cross_attn(self.norm2(x), cross_kv, cross_bias))
        return x + self.drop(self.mlp(self.norm3(x)))


class Stack(nn.Module):
    """Blocks + their shared relative-position bias table + final norm (encoder or decoder)."""

    def __init__(self, cfg: T5Config, n_layer: int, decoder: bool):
        super().__init__()
        self.cfg, self.causal = cfg, decoder
        self.rel_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.n_head)
        block = DecoderBlock if decoder else EncoderBlock
        self.blocks = nn.ModuleList(block(cfg) for _ in range(n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def position_bias(self, q_len: int, k_len: int, offset: int = 0) -> Tensor:
        """[1, H, q_len, k_len] bias for queries at positions offset.. and keys at 0.."""
        device = self.rel_bias.weight.device
        q_pos = torch.arange(offset, offset + q_len, device=device)
        k_pos = torch.arange(k_len, device=device)
        buckets = relative_position_bucket(k_pos[None, :] - q_pos[:, None], not self.causal,
                                           self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        return self.rel_bias(buckets).permute(2, 0, 1).unsqueeze(0)


def padding_bias(attention_mask: Tensor | None) -> Tensor | float:
    """[B, 1, 1, S] additive bias that hides padded keys (attention_mask 0), or 0.0 without a mask."""
    if attention_mask is None:
        return 0.0
    return torch.zeros(attention_mask.shape, dtype=torch.float32, device=attention_mask.device).masked_fill_(
        attention_mask == 0, MASKED)[:, None, None, :]


def _in_compute_dtype(bias: Tensor, like: Tensor) -> Tensor:
    """Cast an attention bias once per forward to the dtype the scores will have (bf16 under autocast)."""
    dtype = torch.get_autocast_dtype(like.device.type) if torch.is_autocast_enabled(like.device.type) else like.dtype
    return bias.to(dtype)


def shift_right(labels: Tensor, start_id: int = 0, pad_id: int = 0) -> Tensor:
    """Decoder inputs from targets: [start, y0, y1, ...], with ignored (-100) labels turned into pad."""
    out = labels.new_full(labels.shape, start_id)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill_(out == -100, pad_id)


@dataclass
class Seq2SeqCache:
    """Generation state: a static self-attention KV cache and the cross-attention keys/values,
    projected once from the encoder output."""

    self_kv: KVCache
    cross_kv: list[tuple[Tensor, Tensor]]
    cross_bias: Tensor | float


class EncoderDecoderLM(nn.Module):
    """shared embedding -> encoder stack; shared embedding -> decoder stack (+cross-attn) -> LM head."""

    def __init__(self, config: T5Config, init_weights: bool = True):
        super().__init__()
        self.config = cfg = config
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, cfg.n_layer, decoder=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, decoder=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self._tie()
        if init_weights:
            self.reset_parameters()

    def _tie(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.shared.weight

    @classmethod
    def empty(cls, config: T5Config, device: str | torch.device = "cpu") -> EncoderDecoderLM:
        """An uninitialised model on `device`, to load weights into without paying for random init."""
        with torch.device("meta"):
            model = cls(config, init_weights=False)
        model.to_empty(device=device)
        model._tie()
        return model

    def reset_parameters(self) -> None:
        """T5's initialisation (Mesh TF / HF): each matrix scaled by its fan-in; the query also by
        1/sqrt(d_kv), which stands in for the attention scale T5 leaves out."""
        cfg = self.config
        d, dkv, inner = cfg.d_model, cfg.d_kv, cfg.inner_dim
        nn.init.normal_(self.shared.weight, std=1.0)
        if not cfg.tie_embeddings:  # unscaled logits: keep their initial size like the tied+scaled head
            nn.init.normal_(self.lm_head.weight, std=d**-0.5)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.rel_bias.weight, std=d**-0.5)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, SelfAttention):
                q, kv = module.qkv.weight.split([inner, 2 * inner])
                nn.init.normal_(q, std=(d * dkv) ** -0.5)
                nn.init.normal_(kv, std=d**-0.5)
                nn.init.normal_(module.o.weight, std=inner**-0.5)
            elif isinstance(module, CrossAttention):
                nn.init.normal_(module.q.weight, std=(d * dkv) ** -0.5)
                nn.init.normal_(module.kv.weight, std=d**-0.5)
                nn.init.normal_(module.o.weight, std=inner**-0.5)
            elif isinstance(module, FeedForward):
                nn.init.normal_(module.wi.weight, std=d**-0.5)
                nn.init.normal_(module.wo.weight, std=cfg.d_ff**-0.5)

    # ------------------------------------------------------------------ forward passes

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """[B, S] token ids (+ 1/0 mask for padding) -> encoder output [B, S, d_model]."""
        x = self.drop(self.shared(input_ids))
        S = input_ids.shape[1]
        bias = _in_compute_dtype(self.encoder.position_bias(S, S) + padding_bias(attention_mask), x)
        for block in self.encoder.blocks:
            x = block(x, bias)
        return self.drop(self.encoder.norm(x))

    def decode(self, decoder_input_ids: Tensor, enc: Tensor | None = None, attention_mask: Tensor | None = None,
               labels: Tensor | None = None, cache: Seq2SeqCache | None = None,
               start_pos: int = 0) -> tuple[Tensor, Tensor | None]:
        """Decoder tokens at positions start_pos.. -> (logits [B, T, V], CE loss vs `labels` or None).

        Without a cache, `enc` and the encoder's `attention_mask` are needed; with one (see
        new_cache), cross-attention reuses the keys/values it holds.
        """
        B, T = decoder_input_ids.shape
        end = start_pos + T
        self_bias = self.decoder.position_bias(T, end, start_pos)
        if T > 1:  # causal: query i sees keys <= start_pos + i
            future = torch.ones(T, end, dtype=torch.bool, device=self_bias.device).triu_(start_pos + 1)
            self_bias = self_bias.masked_fill(future, MASKED)
        self_bias = _in_compute_dtype(self_bias, enc if enc is not None else self.shared.weight)
        if cache is None:
            if enc is None:
                raise ValueError("decode needs the encoder output `enc` (or a cache from new_cache)")
            cross_bias = padding_bias(attention_mask)
            cross = [blk.cross_attn.project_kv(enc) for blk in self.decoder.blocks]
            kvs = [None] * len(cross)
        else:
            cross_bias, cross, kvs = cache.cross_bias, cache.cross_kv, cache.self_kv.layers
        x = self.drop(self.shared(decoder_input_ids))
        for block, cross_kv, kv in zip(self.decoder.blocks, cross, kvs):
            x = block(x, self_bias, cross_kv, cross_bias, kv, start_pos)
        x = self.drop(self.decoder.norm(x))
        if self.config.scales_logits:
            x = x * self.config.d_model**-0.5
        if labels is None:
            return self.lm_head(x), None
        weight = self.lm_head.weight
        if torch.is_autocast_enabled(x.device.type):  # fused head + CE; cast operands like autocast would
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        logits, loss = lm_head_loss(x.reshape(-1, x.size(-1)), weight, labels.reshape(-1))
        return logits.view(B, T, -1), loss

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(logits [B, T, V], mean CE over labels != -100, or None). Like Hugging Face T5, missing
        decoder_input_ids are the labels shifted right behind decoder_start_id."""
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("EncoderDecoderLM.forward needs decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, self.config.decoder_start_id, self.config.pad_id)
        enc = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, enc, attention_mask, labels=labels)

    # ------------------------------------------------------------------ generation

    def new_cache(self, enc: Tensor, attention_mask: Tensor | None, max_len: int) -> Seq2SeqCache:
        """Cache for decoding up to `max_len` decoder positions against encoder output `enc`."""
        cfg = self.config
        self_kv = KVCache(enc.shape[0], max_len, cfg.decoder_layers, cfg.n_head, cfg.d_kv,
                          dtype=enc.dtype, device=enc.device)
        cross = [blk.cross_attn.project_kv(enc) for blk in self.decoder.blocks]
        return Seq2SeqCache(self_kv, cross, padding_bias(attention_mask))

    @torch.no_grad()
    def generate_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 64,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None,
                     seed: int | None = None, use_cache: bool = True) -> Tensor:
        """Decode [B, n<=max_new_tokens] token ids (the start token not included) for a batch of inputs.

        temperature 0 = greedy; otherwise sampling with optional top-k / top-p. A row stops at
        eos (default config.eos_id; the eos is kept, later positions are pad) and the loop stops
        when every row has. use_cache=False recomputes the whole decoder each step (for testing).
        """
        cfg = self.config
        eos = cfg.eos_id if eos_id is None else eos_id
        was_training = self.training
        self.eval()
        try:
            B = input_ids.shape[0]
            enc = self.encode(input_ids, attention_mask)
            cache = self.new_cache(enc, attention_mask, max_new_tokens) if use_cache else None
            gen = None
            if seed is not None and temperature > 0:
                gen = torch.Generator(device=input_ids.device).manual_seed(seed)
            tokens = torch.full((B, 1), cfg.decoder_start_id, dtype=torch.long, device=input_ids.device)
            done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
            for step in range(max_new_tokens):
                if cache is not None:
                    logits, _ = self.decode(tokens[:, -1:], cache=cache, start_pos=step)
                else:
                    logits, _ = self.decode(tokens, enc, attention_mask)
                nxt = sample_next(logits[:, -1].float(), temperature, top_k, top_p, gen)
                nxt = nxt.masked_fill(done, cfg.pad_id)
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
                done |= nxt == eos
                if bool(done.all()):
                    break
            return tokens[:, 1:]
        finally:
            self.train(was_training)

    def num_params(self) -> int:
        """Unique parameter count (a tied LM head counts once)."""
        return sum(p.numel() for p in self.parameters())
