"""Text generation with a static KV cache: greedy/temperature/top-k/top-p sampling, repetition
penalty, stop tokens and stop strings, and UTF-8-safe streaming.

The per-token path is kept lean because at batch 1 generation is bound by Python overhead, not
FLOPs: one preallocated cache and output buffer, inference_mode, logits for the last position only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fromzero.errors import FromzeroError


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


def _apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> None:
    """CTRL/HF rule, in place: logits of tokens already present are divided (if > 0) or multiplied."""
    scores = logits.gather(1, seen)
    logits.scatter_(1, seen, torch.where(scores > 0, scores / penalty, scores * penalty))


def _sample(logits: Tensor, gen: GenerationConfig, rng: torch.Generator | None) -> Tensor:
    """[B, V] float logits -> [B] token ids."""
    if gen.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / gen.temperature
    if 0 < gen.top_k < logits.size(-1):
        kth = torch.topk(logits, gen.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= gen.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=rng).squeeze(1)


class _Decoder:
    """One generation call's state: the KV cache, the token buffer and the position.

    `out` [B, total] holds the prompt in out[:, :n_prompt]; each step() samples the token for
    position `pos` (first running the model on the prompt, or on the one token accepted last),
    and accept() writes it. The model never runs for the final token. Call under inference_mode.
    """

    def __init__(self, model: torch.nn.Module, out: Tensor, n_prompt: int, gen: GenerationConfig):
        self.model, self.out, self.pos, self.gen = model, out, n_prompt, gen
        self.total = out.shape[1]
        self.cache = model.new_cache(out.shape[0], self.total)
        self.rng = None
        if gen.seed is not None:
            self.rng = torch.Generator(device=out.device)
            self.rng.manual_seed(gen.seed)
        self.started = False

    def step(self) -> Tensor | None:
        """Next tokens [B], or None when the buffer (max_new_tokens / max_seq_len) is full."""
        if self.pos >= self.total:
            return None
        if not self.started:
            logits, _ = self.model(self.out[:, : self.pos], cache=self.cache, start_pos=0, last_only=True)
            self.started = True
        else:
            logits, _ = self.model(self.out[:, self.pos - 1 : self.pos], cache=self.cache, start_pos=self.pos - 1)
        logits = logits[:, -1].float()
        if self.gen.repetition_penalty != 1.0:
            _apply_repetition_penalty(logits, self.out[:, : self.pos], self.gen.repetition_penalty)
        return _sample(logits, self.gen, self.rng)

    def accept(self, token: Tensor) -> None:
        self.out[:, self.pos] = token
        self.pos += 1


def _warn_truncated(n_prompt: int, max_seq_len: int, gen: GenerationConfig, n_new: int) -> None:
    if n_new < gen.max_new_tokens and n_prompt + gen.max_new_tokens > max_seq_len:
        warnings.warn(
            f"generation stopped at the model's context limit (max_seq_len={max_seq_len}) before "
            f"max_new_tokens={gen.max_new_tokens}; shorten the prompt or lower max_new_tokens",
            stacklevel=3,
        )


@torch.inference_mode()
def generate_ids(model: torch.nn.Module, input_ids: Tensor, gen: GenerationConfig | None = None,
                 eos_id: int | None = None, pad_id: int | None = None) -> Tensor:
    """Continue each row of input_ids [B, T]; returns [B, T + n_new] (prompt included).

    A row that produced eos_id (or a gen.stop_token_ids token) keeps that token and is padded
    with pad_id (default: eos_id, else 0) from then on; generation ends when every row has
    finished, after max_new_tokens, or when the sequence reaches the model's max_seq_len.
    """
    gen = gen or GenerationConfig()
    model = _bare(model)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    B, T = input_ids.shape
    max_len = model.config.max_seq_len
    _check_prompt(T, max_len, gen.max_new_tokens)
    device = model.tok_emb.weight.device
    stop_ids = [i for i in [eos_id, *gen.stop_token_ids] if i is not None]
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    out = torch.empty(B, min(T + gen.max_new_tokens, max_len), dtype=torch.long, device=device)
    out[:, :T] = input_ids
    stop_t = torch.tensor(stop_ids, dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        dec = _Decoder(model, out, T, gen)
        while (token := dec.step()) is not None:
            if stop_ids:
                token = token.masked_fill_(finished, pad)
                finished |= torch.isin(token, stop_t)
            dec.accept(token)
            if stop_ids and bool(finished.all()):
                break
        else:
            _warn_truncated(T, max_len, gen, dec.pos - T)
    finally:
        model.train(was_training)
    return out[:, : dec.pos].clone() if dec.pos < out.shape[1] else out


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
    ids = _start_ids(tokenizer, prompt)
    max_len = model.config.max_seq_len
    _check_prompt(len(ids), max_len, gen.max_new_tokens)
    stop_ids = {i for i in [getattr(tokenizer, "eos_id", None), *gen.stop_token_ids] if i is not None}
    stops = [s for s in gen.stop if s]
    device = model.tok_emb.weight.device
    out = torch.empty(1, min(len(ids) + gen.max_new_tokens, max_len), dtype=torch.long, device=device)
    out[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    new: list[int] = []
    emitted = 0  # characters already yielded
    reason = "length"
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            dec = _Decoder(model, out, len(ids), gen)
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
        if reason == "length":
            _warn_truncated(len(ids), max_len, gen, len(new))
        return reason
    finally:
        model.train(was_training)


def generate(model: torch.nn.Module, tokenizer: TokenizerLike, prompt: str,
             gen: GenerationConfig | None = None) -> str:
    """The completion of `prompt` (prompt not included) as one string."""
    return "".join(stream(model, tokenizer, prompt, gen))
