"""Text generation for decoders and encoder-decoders: one loop, one sampler
(fromzero.modules.sampling: greedy/temperature/top-k/top-p, repetition penalty), stop tokens and stop
strings, and UTF-8-safe streaming.

What differs between the families is only how a step gets its logits, so each has a small stepper:
a decoder continues the prompt in one buffer with a static KV cache; an encoder-decoder (T5) runs its
encoder once on `prompt </s>` and decodes from its start token with a self-attention cache and
cross-attention keys/values projected once. The per-token path is kept lean because at batch 1
generation is bound by Python overhead, not FLOPs: preallocated cache and output buffer,
inference_mode, logits for the last position only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fromzero.errors import FromzeroError
from fromzero.model.encoder_decoder import EncoderDecoderLM
from fromzero.modules.sampling import apply_repetition_penalty, sample_next


class TokenizerLike(Protocol):
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the text
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    stop_token_ids: list[int] = field(default_factory=list)  # in addition to the tokenizer's eos
    seed: int | None = None  # same seed + same inputs = same output

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise FromzeroError(f"invalid generation config: {msg}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    # A compiled or DDP-wrapped model would recompile/sync on every new shape: use the bare module.
    from fromzero.modules.wrappers import unwrap

    return unwrap(model)


def _check_prompt(n_prompt: int, max_seq_len: int, max_new_tokens: int) -> None:
    if n_prompt == 0:
        raise FromzeroError("the prompt is empty (0 tokens); give at least one token of text")
    if n_prompt > max_seq_len or (n_prompt == max_seq_len and max_new_tokens > 0):
        raise FromzeroError(
            f"the prompt is {n_prompt} tokens but the model's context (max_seq_len) is {max_seq_len}; "
            f"shorten the prompt to at most {max_seq_len - 1} tokens (or use a model with a larger max_seq_len)"
        )


class _Steps:
    """One generation call's state: the token buffer `out` [B, total], the position and the RNG.

    out[:, :pos] holds what the model has seen so far; each step() samples the token for position
    `pos` (first running the model on everything before it, then on the one token accepted last),
    and accept() writes it. The model never runs for the final token. Call under inference_mode.
    A family's stepper only says how to get the next logits (`_logits`).
    """

    def __init__(self, out: Tensor, pos: int, gen: GenerationConfig):
        self.out, self.pos, self.gen = out, pos, gen
        self.total = out.shape[1]
        self.rng = None
        if gen.seed is not None:
            self.rng = torch.Generator(device=out.device)
            self.rng.manual_seed(gen.seed)

    def _logits(self) -> Tensor:
        raise NotImplementedError

    def step(self) -> Tensor | None:
        """Next tokens [B], or None when the buffer (max_new_tokens / max_seq_len) is full."""
        if self.pos >= self.total:
            return None
        logits = self._logits()[:, -1].float()
        if self.gen.repetition_penalty != 1.0:
            apply_repetition_penalty(logits, self.out[:, : self.pos], self.gen.repetition_penalty)
        return sample_next(logits, self.gen.temperature, self.gen.top_k, self.gen.top_p, self.rng)

    def accept(self, token: Tensor) -> None:
        self.out[:, self.pos] = token
        self.pos += 1


class _Decoder(_Steps):
    """Decoder-only: the prompt sits in out[:, :n_prompt] and the model continues it."""

    def __init__(self, model: torch.nn.Module, out: Tensor, n_prompt: int, gen: GenerationConfig):
        super().__init__(out, n_prompt, gen)
        self.model = model
        self.cache = model.new_cache(out.shape[0], self.total)
        self.started = False

    def _logits(self) -> Tensor:
        if not self.started:
            self.started = True
            return self.model(self.out[:, : self.pos], cache=self.cache, start_pos=0, last_only=True)[0]
        return self.model(self.out[:, self.pos - 1 : self.pos], cache=self.cache, start_pos=self.pos - 1)[0]


class _EncoderDecoder(_Steps):
    """T5-style: the encoder reads the input once; out[:, 0] is the decoder's start token and the
    decoder writes out[:, 1:], attending to the encoder output through keys/values projected once."""

    def __init__(self, model: EncoderDecoderLM, input_ids: Tensor, attention_mask: Tensor | None,
                 gen: GenerationConfig):
        out = input_ids.new_full((input_ids.shape[0], 1 + gen.max_new_tokens), model.config.decoder_start_id)
        super().__init__(out, 1, gen)
        self.model = model
        enc = model.encode(input_ids, attention_mask)
        self.cache = model.new_cache(enc, attention_mask, max(1, gen.max_new_tokens))

    def _logits(self) -> Tensor:
        return self.model.decode(self.out[:, self.pos - 1 : self.pos], cache=self.cache, start_pos=self.pos - 1)[0]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _warn_truncated(n_prompt: int, max_seq_len: int, gen: GenerationConfig, n_new: int) -> None:
    if n_new < gen.max_new_tokens and n_prompt + gen.max_new_tokens > max_seq_len:
        warnings.warn(
            f"generation stopped at the model's context limit (max_seq_len={max_seq_len}) before "
            f"max_new_tokens={gen.max_new_tokens}; shorten the prompt or lower max_new_tokens",
            stacklevel=3,
        )


def _steps(model: torch.nn.Module, input_ids: Tensor, gen: GenerationConfig,
           attention_mask: Tensor | None = None) -> _Steps:
    """The stepper for the model's family, its buffer filled with the prompt (decoder) or the start token."""
    if isinstance(model, EncoderDecoderLM):
        return _EncoderDecoder(model, input_ids, attention_mask, gen)
    if attention_mask is not None and not bool(attention_mask.all()):
        raise FromzeroError("decoder generation takes unpadded prompts of one length (no attention_mask)")
    B, T = input_ids.shape
    max_len = model.config.max_seq_len
    _check_prompt(T, max_len, gen.max_new_tokens)
    out = torch.empty(B, min(T + gen.max_new_tokens, max_len), dtype=torch.long, device=input_ids.device)
    out[:, :T] = input_ids
    return _Decoder(model, out, T, gen)


@torch.inference_mode()
def generate_ids(model: torch.nn.Module, input_ids: Tensor, gen: GenerationConfig | None = None,
                 eos_id: int | None = None, pad_id: int | None = None,
                 attention_mask: Tensor | None = None) -> Tensor:
    """Generate from each row of input_ids [B, T].

    A decoder continues the rows: returns [B, T + n_new] (prompt included). An encoder-decoder reads
    them (with their </s>, padding marked by attention_mask) and returns what its decoder wrote,
    [B, n_new], as EncoderDecoderLM.generate_ids does. A row that produced eos_id (or a
    gen.stop_token_ids token) keeps that token and is padded with pad_id (default: eos_id, else 0)
    from then on; generation ends when every row has finished, after max_new_tokens, or when a
    decoder's sequence reaches its max_seq_len.
    """
    gen = gen or GenerationConfig()
    model = _bare(model)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    input_ids = input_ids.to(_device(model))
    stop_ids = [i for i in [eos_id, *gen.stop_token_ids] if i is not None]
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    was_training = model.training
    model.eval()
    try:
        dec = _steps(model, input_ids, gen, attention_mask)
        n_prompt = dec.pos
        stop_t = torch.tensor(stop_ids, dtype=torch.long, device=dec.out.device)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=dec.out.device)
        while (token := dec.step()) is not None:
            if stop_ids:
                token = token.masked_fill_(finished, pad)
                finished |= torch.isin(token, stop_t)
            dec.accept(token)
            if stop_ids and bool(finished.all()):
                break
        else:
            if isinstance(dec, _Decoder):
                _warn_truncated(n_prompt, model.config.max_seq_len, gen, dec.pos - n_prompt)
    finally:
        model.train(was_training)
    out = dec.out[:, : dec.pos]
    return out[:, 1:].clone() if isinstance(dec, _EncoderDecoder) else out.clone()


def _start_ids(tokenizer: TokenizerLike, prompt: str) -> list[int]:
    ids = list(tokenizer.encode(prompt))
    if ids:
        return ids
    start = getattr(tokenizer, "bos_id", None)
    start = start if start is not None else getattr(tokenizer, "eos_id", None)
    if start is None:
        raise FromzeroError("the prompt is empty and the tokenizer has no bos/eos token to start from; give some text")
    return [start]


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def stream(model: torch.nn.Module, tokenizer: TokenizerLike, prompt: str,
           gen: GenerationConfig | None = None) -> Iterator[str]:
    """Yield the completion of `prompt` as text pieces, as they are generated.

    Pieces are always whole characters (a byte-level token that ends mid-character is held until
    the character completes) and never contain (the start of) a stop string. The concatenation
    equals generate(...). The generator's return value (StopIteration.value) is the finish
    reason: "stop" (eos, stop token or stop string) or "length".
    """
    gen = gen or GenerationConfig()
    model = _bare(model)
    eos_id = getattr(tokenizer, "eos_id", None)
    if isinstance(model, EncoderDecoderLM):  # the encoder reads `prompt </s>`, as in training
        eos_id = model.config.eos_id if eos_id is None else eos_id
        ids = [*tokenizer.encode(prompt), eos_id]
    else:
        ids = _start_ids(tokenizer, prompt)
    stop_ids = {i for i in [eos_id, *gen.stop_token_ids] if i is not None}
    stops = [s for s in gen.stop if s]
    new: list[int] = []
    emitted = 0  # characters already yielded
    reason = "length"
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            dec = _steps(model, torch.tensor([ids], dtype=torch.long, device=_device(model)), gen)
        while True:
            with torch.inference_mode():  # never held across a yield: the caller's code runs normally
                token_t = dec.step()
                if token_t is None:
                    break
                dec.accept(token_t)
            token = int(token_t[0])
            if token in stop_ids:
                reason = "stop"
                break
            new.append(token)
            text = tokenizer.decode(new)
            if text.endswith("\ufffd"):
                continue  # an incomplete UTF-8 character: wait for its remaining bytes
            safe = len(text)
            if stops:
                hits = [i for i in (text.find(s, max(0, emitted - len(s) + 1)) for s in stops) if i >= 0]
                if hits:
                    cut = min(hits)
                    if cut > emitted:
                        yield text[emitted:cut]
                    return "stop"
                safe -= _held_back(text, stops)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        text = tokenizer.decode(new)
        if len(text) > emitted:
            yield text[emitted:]
        if reason == "length" and isinstance(dec, _Decoder):
            _warn_truncated(len(ids), model.config.max_seq_len, gen, len(new))
        return reason
    finally:
        model.train(was_training)


def generate(model: torch.nn.Module, tokenizer: TokenizerLike, prompt: str,
             gen: GenerationConfig | None = None) -> str:
    """The completion of `prompt` (prompt not included) as one string; an encoder-decoder's answer to it."""
    return "".join(stream(model, tokenizer, prompt, gen))
