"""Prompt tuning (soft prompts prepended to the input) and prefix tuning (learned per-layer keys/values).

Both change what attention sees rather than a weight, so each needs a small, documented hook in
the model instead of a layer replacement:

Prompt tuning - `PromptTuningModel(model)` embeds `input_ids` itself (with the model's own input
embedding), prepends `num_virtual_tokens` learned vectors and runs the model on the embeddings.
The wrapped model must offer ONE of:
  * `forward_embeds(x, labels=None, **kw)` taking embeddings x [B, T, d_model] and doing
    everything after the token-embedding lookup (positions, blocks, norm, head, loss), or
  * a `forward(..., inputs_embeds=...)` argument (every Hugging Face model has it).
Labels get -100 at the virtual positions, an attention_mask gets ones, and the returned logits
are sliced back to the real tokens, so outputs line up with `input_ids` as without the prompt.
With a KV cache (`start_pos=` in kw, as fromzero generation passes it) the prompt is prepended
only on the first call (start_pos == 0) and later positions are shifted by num_virtual_tokens.

Prefix tuning - every attention module that exposes the attribute `prefix_kv` (initially None)
plus ints `n_kv_head` and `head_dim` gets two parameters `prefix_key`, `prefix_value` of shape
[n_kv_head, P, head_dim]; a forward pre-hook sets `module.prefix_kv = (prefix_key, prefix_value)`
before each call. When `prefix_kv` is not None the attention must, after RoPE on its own k and
after reading its KV cache: cast the prefix to k's dtype, expand it over the batch, concatenate
it in front of its keys and values ([B, n_kv_head, P + S, head_dim]) and use a mask that lets
every query see all P prefix slots plus its causal part of the S real keys (so not
`is_causal=True`). The prefix is never rotated, never written to the cache and takes no position.
Bidirectional attention (the BERT-style encoder, T5's encoder) keeps its padding mask for the real
keys and lets every query see the prefix; T5 gives the prefix slots a zero position bias, and its
cross-attention (which reads the encoder output) takes no prefix.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from fromzero.errors import FromzeroError
from fromzero.peft.lora import adapter_dtype


def find_input_embedding(model: nn.Module) -> str:
    """Name of the token embedding: `get_input_embeddings()` if the model has it, else the first
    nn.Embedding with `config.vocab_size` rows, else the nn.Embedding with the most rows."""
    names = {id(m): n for n, m in model.named_modules()}
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            emb = getter()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding) and id(emb) in names:
            return names[id(emb)]
    embs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not embs:
        raise FromzeroError(f"prompt tuning needs the model's token embedding, but {type(model).__name__} "
                            "has no nn.Embedding; use method: lora instead")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for n, m in embs:
        if m.num_embeddings == vocab:
            return n
    return max(embs, key=lambda nm: nm[1].num_embeddings)[0]


class PromptTuningModel(nn.Module):
    """`model` with `num_virtual_tokens` trainable input vectors in front of every sequence."""

    def __init__(self, model: nn.Module, num_virtual_tokens: int):
        super().__init__()
        self.base_model = model
        self.num_virtual_tokens = num_virtual_tokens
        self.embedding_name = find_input_embedding(model)
        if callable(getattr(model, "forward_embeds", None)):
            self.mode = "forward_embeds"
        elif "inputs_embeds" in inspect.signature(model.forward).parameters:
            self.mode = "inputs_embeds"
        else:
            raise FromzeroError(
                f"prompt tuning needs {type(model).__name__} to take embeddings: give it "
                "forward_embeds(x, labels=None) or a forward(inputs_embeds=...) argument; or use method: lora"
            )
        table = model.get_submodule(self.embedding_name).weight
        # Start from real token embeddings (Lester et al. 2021): better than random vectors.
        rows = torch.randint(0, table.shape[0], (num_virtual_tokens,), device=table.device)
        self.prompt_embeddings = nn.Parameter(table.detach()[rows].to(adapter_dtype(table.dtype)))

    def __getattr__(self, name: str) -> Any:
        # Everything not defined here (config, new_cache, generation helpers...) reads through.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None,
                attention_mask: Tensor | None = None, **kw: Any) -> Any:
        P = self.num_virtual_tokens
        x = self.base_model.get_submodule(self.embedding_name)(input_ids)
        B, T = input_ids.shape
        prepend = kw.get("start_pos", 0) == 0
        if prepend:
            prompt = self.prompt_embeddings.to(x.dtype).unsqueeze(0).expand(B, -1, -1)
            x = torch.cat([prompt, x], dim=1)
            if labels is not None:
                labels = torch.cat([labels.new_full((B, P), -100), labels], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask.new_ones((B, P)), attention_mask], dim=1)
        else:
            kw["start_pos"] = kw["start_pos"] + P
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        if self.mode == "forward_embeds":
            out = self.base_model.forward_embeds(x, labels=labels, **kw)
        else:  # models without an LM head take no labels argument
            out = self.base_model(inputs_embeds=x, **({"labels": labels} if labels is not None else {}), **kw)
        return _strip_prompt(out, P, T) if prepend else out


def _strip_prompt(out: Any, P: int, T: int) -> Any:
    """Drop the virtual positions from the logits so they align with input_ids."""

    def strip(logits: Any) -> Any:
        if isinstance(logits, Tensor) and logits.dim() >= 2 and logits.shape[1] == P + T:
            return logits[:, P:]
        return logits

    if isinstance(out, Tensor):
        return strip(out)
    if isinstance(out, tuple) and out:
        return (strip(out[0]), *out[1:])
    if getattr(out, "logits", None) is not None:  # Hugging Face ModelOutput
        out["logits"] = strip(out.logits)
    return out


def _set_prefix_kv(module: nn.Module, args: Any) -> None:
    module.prefix_kv = (module.prefix_key, module.prefix_value)


def prefix_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules that follow the prefix protocol; an error if there are none."""
    found = [(n, m) for n, m in model.named_modules() if hasattr(m, "prefix_kv")]
    if not found:
        raise FromzeroError(
            f"prefix tuning needs attention modules with a `prefix_kv` attribute (fromzero models have it); "
            f"{type(model).__name__} has none. Use method: prompt or lora for this model"
        )
    for name, m in found:
        n_kv, hd = getattr(m, "n_kv_head", None), getattr(m, "head_dim", None)
        if not (isinstance(n_kv, int) and isinstance(hd, int)):
            raise FromzeroError(f"attention module '{name}' ({type(m).__name__}) has `prefix_kv` but not the int "
                                "attributes n_kv_head and head_dim that prefix tuning needs to size the prefix")
    return found


def add_prefix_parameters(model: nn.Module, num_virtual_tokens: int) -> list[str]:
    """Give every attention module that follows the prefix protocol its learned prefix; return the new names."""
    names = []
    for name, m in prefix_attention_modules(model):
        ref = next(m.parameters(), None)
        kwargs = {"dtype": adapter_dtype(ref.dtype), "device": ref.device} if ref is not None else {}
        shape = (m.n_kv_head, num_virtual_tokens, m.head_dim)
        m.prefix_key = nn.Parameter(torch.randn(shape, **kwargs) * 0.02)
        m.prefix_value = nn.Parameter(torch.randn(shape, **kwargs) * 0.02)
        m.register_forward_pre_hook(_set_prefix_kv)
        _set_prefix_kv(m, None)
        prefix = f"{name}." if name else ""
        names += [f"{prefix}prefix_key", f"{prefix}prefix_value"]
    return names
