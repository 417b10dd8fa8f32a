"""DecoderLM: one decoder-only Transformer for both GPT-2 and Llama styles (see ModelConfig)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fromzero.config import build, to_dict
from fromzero.errors import FromzeroError
from fromzero.model.config import ModelConfig
from fromzero.model.io import (
    CONFIG,
    WEIGHTS,
    clean_state_dict,
    load_state_strict,
    read_config,
    read_safetensors,
    write_model_folder,
)
from fromzero.model.layers import Block, KVCache, lm_head_loss, make_norm, rope_tables
from fromzero.modules.wrappers import unwrap

FORMAT = "fromzero-decoder"  # config.json "model_type"; HF folders carry their own (gpt2, llama, ...)


class DecoderLM(nn.Module):
    """Token embedding -> n_layer pre-norm blocks -> final norm -> LM head.

    Parameter names: tok_emb, pos_emb (gpt2), blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,
    mlp.up|mlp.gate_up,mlp.down}, norm, lm_head (the same tensor as tok_emb when tied).
    """

    def __init__(self, config: ModelConfig, init_weights: bool = True):
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.arch == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._tie_and_make_buffers()
        if init_weights:
            self.reset_parameters()

    def _tie_and_make_buffers(self) -> None:
        cfg = self.config
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.arch == "llama":
            cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
            device = self.tok_emb.weight.device
            self.register_buffer("rope_cos", cos.to(device), persistent=False)
            self.register_buffer("rope_sin", sin.to(device), persistent=False)
        else:
            self.rope_cos = self.rope_sin = None

    @classmethod
    def empty(cls, config: ModelConfig, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> DecoderLM:
        """An uninitialised model on `device`, to load weights into without paying for random init."""
        with torch.device("meta"):
            model = cls(config, init_weights=False)
            if dtype is not None:
                model.to(dtype)
        model.to_empty(device=device)
        with torch.device(device):
            model._tie_and_make_buffers()
        return model

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2*n_layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)

    def forward(self, input_ids: Tensor | None = None, labels: Tensor | None = None, cache: KVCache | None = None,
                start_pos: int = 0, last_only: bool = False,
                inputs_embeds: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """input_ids [B, T] -> (logits [B, T, V], mean CE loss vs `labels` or None).

        `labels` are already aligned with the logits (label t = token t+1), -100 is ignored.
        With `cache`, the tokens sit at positions start_pos.. and keys/values are written into it.
        `last_only` computes logits for the final position only (generation prefill).
        `inputs_embeds` [B, T, d] replaces the token lookup (prompt tuning prepends soft prompts).
        Under bf16 autocast the logits come back in bf16; the loss is always computed in fp32.
        """
        x = self._trunk(input_ids, inputs_embeds, cache, start_pos)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        if labels is None:
            return self.lm_head(x), None
        if type(self.lm_head) is not nn.Linear or self.lm_head.bias is not None:  # replaced (e.g. by PEFT)
            logits = self.lm_head(x)
            return logits, F.cross_entropy(logits.flatten(0, -2).float(), labels.reshape(-1), ignore_index=-100)
        # fused LM head + cross-entropy (see lm_head_loss); operands cast like autocast would
        weight = self.lm_head.weight
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        logits, loss = lm_head_loss(x.reshape(-1, x.size(-1)), weight, labels.reshape(-1))
        return logits.view(*x.shape[:-1], -1), loss

    def _trunk(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, cache: KVCache | None,
               start_pos: int) -> Tensor:
        """Embeddings -> blocks, before the final norm: shared by forward and hidden_states."""
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        end = start_pos + T
        if end > self.config.max_seq_len:
            raise FromzeroError(
                f"input reaches position {end} but the model's max_seq_len is {self.config.max_seq_len}; "
                f"truncate the input to {self.config.max_seq_len} tokens or use a model with a larger max_seq_len"
            )
        if cache is not None and end > cache.max_len:
            raise FromzeroError(f"KV cache holds {cache.max_len} positions but the input reaches {end}; "
                                "allocate it with model.new_cache(batch_size, max_len) large enough")
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[start_pos:end]
        rope = None
        if self.rope_cos is not None:
            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            rope = (self.rope_cos[start_pos:end].to(dtype), self.rope_sin[start_pos:end].to(dtype))
        if self.drop is not None:
            x = self.drop(x)
        if cache is None:
            for block in self.blocks:
                x = block(x, rope)
        else:
            for block, kv in zip(self.blocks, cache.layers):
                x = block(x, rope, kv, start_pos)
        return x

    def hidden_states(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                      inputs_embeds: Tensor | None = None) -> Tensor:
        """Final-norm hidden states [B, T, d] for task heads (classification, tagging, embeddings).

        Attention is causal, so with right padding the real tokens never see the pads:
        `attention_mask` is accepted for a uniform backbone API and used by the heads' pooling.
        """
        return self.norm(self._trunk(input_ids, inputs_embeds, None, 0))

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """A KV cache for `batch_size` sequences of up to `max_len` (default max_seq_len) tokens."""
        cfg = self.config
        p = self.tok_emb.weight
        return KVCache(batch_size, max_len or cfg.max_seq_len, cfg.n_layer, cfg.kv_heads, cfg.head_dim,
                       dtype=dtype or p.dtype, device=p.device)

    def save_pretrained(self, dir: str | Path) -> Path:
        """Write `dir/model.safetensors` + `dir/config.json` (model_type fromzero-decoder)."""
        return write_model_folder(dir, clean_state_dict(self), {"model_type": FORMAT, **to_dict(self.config)})

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameter count (a tied LM head counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 * (matmul params incl. LM head) + 12 * n_layer * d_model * seq_len.

        Embedding lookups are not matmuls and are left out; the second term is attention's
        QK^T and AV (PaLM appendix B convention). Use it for MFU: tokens/s * this / peak FLOP/s.
        """
        cfg = self.config
        matmul_params = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        T = seq_len or cfg.max_seq_len
        return 6.0 * matmul_params + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * T


def save_model(model: nn.Module, dir: str | Path) -> Path:
    """Write `dir/model.safetensors` and `dir/config.json` for a (possibly compiled/DDP-wrapped) DecoderLM."""
    base = unwrap(model)
    if not isinstance(base, DecoderLM):
        raise TypeError(f"save_model expects a DecoderLM (possibly compiled/DDP-wrapped), got {type(base).__name__}")
    return base.save_pretrained(dir)


def load_decoder(dir: str | Path, map_location: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> DecoderLM:
    """Rebuild a DecoderLM from a folder written by save_model (fromzero.model.load_model also reads HF folders)."""
    dir = Path(dir)
    if not dir.is_dir():
        raise FromzeroError(f"model directory {dir} not found; pass a directory containing model.safetensors and "
                            "config.json")
    data = read_config(dir)
    model_type = data.pop("model_type", None)
    if model_type != FORMAT:
        raise FromzeroError(f"{dir / CONFIG} has model_type {model_type!r}, not a fromzero decoder; load other "
                            "folders with fromzero.from_pretrained")
    cfg = build(ModelConfig, data, where="config.json")
    state = read_safetensors(dir / WEIGHTS)
    model = DecoderLM.empty(cfg, device=map_location, dtype=dtype)
    load_state_strict(model, state, dir / WEIGHTS, skip=("lm_head.weight",) if cfg.tie_embeddings else ())
    return model
