"""Shared helpers for the side-by-side benchmarks: same configs for fromzero and transformers,
the machine's matmul peak, and interleaved timing (this machine's speed drifts within minutes,
so only ratios measured in one run, step by step side by side, mean anything)."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from typing import Callable

import torch

from fromzero.model.config import ModelConfig
from fromzero.model.decoder import DecoderLM
from fromzero.model.encoder import EncoderConfig, EncoderModel
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config

SIZE = dict(n_layer=6, n_head=6, d_model=384, max_seq_len=256, vocab_size=8192, dropout=0.0)
# BERT: SIZE's body at BERT's usual context; post-LN is what BERT is
ENCODER_SIZE = dict(n_layer=6, n_head=6, d_model=384, max_seq_len=128, vocab_size=8192, dropout=0.0, pre_ln=False)
# T5: fromzero's default T5Config (v1.1 gated-GELU, tied head), 4 + 4 layers, 4 heads of 64
T5_SIZE = dict(n_layer=4, n_decoder_layer=4, n_head=4, d_model=256, d_kv=64, d_ff=1024, vocab_size=8192, dropout=0.0)


def fromzero_model(arch: str) -> DecoderLM:
    kv = {"n_kv_head": 2} if arch == "llama" else {}
    return DecoderLM(ModelConfig(arch=arch, **SIZE, **kv))


def hf_model(arch: str, like: DecoderLM) -> torch.nn.Module:
    """The transformers model with the same shape as `like` (attention: transformers' default, SDPA)."""
    import transformers as tf

    c = like.config
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model, n_layer=c.n_layer,
                            n_head=c.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=None, eos_token_id=None)
        return tf.GPT2LMHeadModel(cfg)
    cfg = tf.LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_dim,
                         num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads,
                         max_position_embeddings=c.max_seq_len, tie_word_embeddings=True, rms_norm_eps=c.norm_eps)
    return tf.LlamaForCausalLM(cfg)


def fromzero_encoder() -> EncoderModel:
    return EncoderModel(EncoderConfig(**ENCODER_SIZE))


def fromzero_t5() -> EncoderDecoderLM:
    return EncoderDecoderLM(T5Config(**T5_SIZE))


def hf_bert(like: EncoderModel) -> torch.nn.Module:
    """transformers' BertForMaskedLM with `like`'s config and weights, through fromzero's BERT export
    (so the two compute the same function, and the pretraining comparison is of speed alone)."""
    import transformers as tf

    from fromzero.model.hf.bert import save_hf_bert

    return _from_export(tf.BertForMaskedLM, save_hf_bert, like)


def hf_t5(like: EncoderDecoderLM) -> torch.nn.Module:
    """transformers' T5ForConditionalGeneration with `like`'s config and weights (see hf_bert)."""
    import transformers as tf

    from fromzero.model.hf.t5 import save_hf_t5

    return _from_export(tf.T5ForConditionalGeneration, save_hf_t5, like)


def _from_export(cls: type, save: Callable, like: torch.nn.Module) -> torch.nn.Module:
    import transformers as tf

    tf.logging.set_verbosity_error()  # else a load report lists the exported pooler BertForMaskedLM has no use for
    tf.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as d:
        save(like, d)
        return cls.from_pretrained(d)


def training_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor], bf16: bool) -> Callable[[], None]:
    """One timed training step: `loss()` (under bf16 autocast if asked) + backward + AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            value = loss()
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best observed FLOP/s of an n x n matmul: the denominator for model-FLOPs utilisation."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def interleaved(fns: dict[str, Callable[[], None]], warmup: int, reps: int) -> dict[str, float]:
    """Run each fn warmup+reps times, alternating between them every repetition; median seconds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
