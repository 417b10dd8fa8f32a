"""Seq2seq fine-tuning (Chinese characters -> pinyin) for decoders and encoder-decoders.

A format decides how a (source, target) pair becomes training rows, what the loss is, and how an
answer is generated. Two formats share one interface, so the task code never asks which model it has:

  PrefixLM        decoder-only (GPT/Llama): one sequence  source <sep> target </s>; the loss covers
                  target + </s> only, so the model learns p(target | source) and is never asked to
                  predict the source. Answers: greedy from "source <sep>" until </s>.
  EncoderDecoder  T5-style: the encoder reads source </s>, the decoder is trained on target </s>
                  (teacher forcing through the model's own labels -> decoder inputs shift) and
                  answers with the model's own cached `generate_ids`.

`seq2seq_format(model, ...)` picks the format; `evaluate_seq2seq` scores generated answers with
character accuracy (1 - character error rate) and exact match.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import torch
from torch import nn

from fromzero.errors import FromzeroError
from fromzero.evaluation.metrics import char_accuracy, exact_match
from fromzero.tasks.seq2seq_data import Seq2SeqExample
from fromzero.tuning.collate import Row, collate, lm_row, plain_text_backend

log = logging.getLogger("fromzero.tasks")


class Seq2SeqFormat(Protocol):
    """What the fine-tuning loop needs from a seq2seq model family."""

    def rows(self, examples: Sequence[Seq2SeqExample], where: str) -> list[Row]: ...

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def generate(self, model: nn.Module, sources: Sequence[str], max_new_tokens: int | None = None) -> list[str]: ...


def _loss(out: Any) -> torch.Tensor:
    loss = out[1] if isinstance(out, tuple) else getattr(out, "loss", None)
    if loss is None:
        raise FromzeroError("the model returned no loss for labelled input; it must return (logits, loss)")
    return loss


class PrefixLM:
    """source <sep> target </s> on a decoder-only model (see the module docstring)."""

    def __init__(self, tokenizer: Any, max_len: int, batch_size: int = 32):
        self.tok, self.max_len, self.batch_size = tokenizer, max_len, batch_size
        self._backend = plain_text_backend(tokenizer)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def rows(self, examples: Sequence[Seq2SeqExample], where: str = "seq2seq") -> list[Row]:
        """Training rows; a pair that does not fit max_len is left out (a cut target would teach a
        wrong answer), and one line says how many."""
        rows, skipped = [], 0
        src, tgt = self._ids([e.source for e in examples]), self._ids([e.target for e in examples])
        for s, t in zip(src, tgt):
            ids = s + [self.tok.sep_id] + t + [self.tok.eos_id]
            if len(ids) > self.max_len:
                skipped += 1
                continue
            rows.append(lm_row(ids, [False] * (len(s) + 1) + [True] * (len(t) + 1)))
        if skipped:
            log.warning("%s: left out %d of %d pairs longer than %d tokens (source + <sep> + target + </s>); "
                        "raise max_len to keep them", where, skipped, len(examples), self.max_len)
        if not rows:
            raise FromzeroError(f"{where}: no source/target pair fits max_len={self.max_len}; raise max_len")
        return rows

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": _loss(model(batch["input_ids"], labels=batch["labels"]))}

    def generate(self, model: nn.Module, sources: Sequence[str], max_new_tokens: int | None = None) -> list[str]:
        from fromzero.tuning.decode import generate_until_eos

        room = self.max_len - 1  # at least one token of answer
        prompts = [s[: max(1, room - 1)] + [self.tok.sep_id] for s in self._ids(sources)]
        longest = max(self.max_len - len(p) for p in prompts)
        new = generate_until_eos(model, prompts, self.tok.eos_id, min(max_new_tokens or longest, longest),
                                 batch_size=self.batch_size)
        return [self.tok.decode(ids) for ids in new]


class EncoderDecoder:
    """source </s> -> target </s> on a T5-style model: forward(input_ids, attention_mask, labels=...)
    -> (logits, loss) and generate_ids(input_ids, attention_mask, max_new_tokens, eos_id=...)."""

    def __init__(self, tokenizer: Any, max_len: int, batch_size: int = 32):
        self.tok, self.max_len, self.batch_size = tokenizer, max_len, batch_size
        self._backend = plain_text_backend(tokenizer)

    def _ids(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Ids + </s>, cut to max_len; also how many texts had to be cut."""
        ids = [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]
        room = self.max_len - 1
        return [x[:room] + [self.tok.eos_id] for x in ids], sum(len(x) > room for x in ids)

    def rows(self, examples: Sequence[Seq2SeqExample], where: str = "seq2seq") -> list[Row]:
        (src, cut_s), (tgt, cut_t) = self._ids([e.source for e in examples]), self._ids([e.target for e in examples])
        if cut_s or cut_t:
            log.warning("%s: %d sources and %d targets are longer than max_len=%d tokens and were cut; raise max_len",
                        where, cut_s, cut_t, self.max_len)
        return [{"input_ids": s, "labels": t} for s, t in zip(src, tgt)]

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": _loss(model(batch["input_ids"], attention_mask=batch["attention_mask"],
                                    labels=batch["labels"]))}

    @torch.no_grad()
    def generate(self, model: nn.Module, sources: Sequence[str], max_new_tokens: int | None = None) -> list[str]:
        device = next(model.parameters()).device
        rows = [{"input_ids": s} for s in self._ids(sources)[0]]
        out: list[str] = []
        for k in range(0, len(rows), self.batch_size):
            batch = collate(rows[k:k + self.batch_size], self.tok.pad_id)
            ids = model.generate_ids(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                     max_new_tokens=max_new_tokens or self.max_len, eos_id=self.tok.eos_id)
            for row in ids.tolist():
                out.append(self.tok.decode(row[: row.index(self.tok.eos_id)] if self.tok.eos_id in row else row))
        return out


def is_encoder_decoder(model: nn.Module) -> bool:
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "generate_ids", None))


def seq2seq_format(model: nn.Module, tokenizer: Any, max_len: int, batch_size: int = 32) -> Seq2SeqFormat:
    """PrefixLM for decoder-only models, EncoderDecoder for T5-style ones."""
    if is_encoder_decoder(model):
        return EncoderDecoder(tokenizer, max_len, batch_size)
    if getattr(model, "config", None) is not None and hasattr(model.config, "max_seq_len"):
        return PrefixLM(tokenizer, min(max_len, model.config.max_seq_len), batch_size)
    raise FromzeroError(f"{type(model).__name__} is neither a decoder (config.max_seq_len) nor an encoder-decoder "
                        "(encode + generate_ids); seq2seq fine-tuning needs one of them")


def evaluate_seq2seq(model: nn.Module, fmt: Seq2SeqFormat, examples: Sequence[Seq2SeqExample],
                     max_new_tokens: int | None = None) -> tuple[dict[str, float], list[str]]:
    """Greedy answers for every example, scored: char_accuracy, exact_match (and n)."""
    predictions = fmt.generate(model, [e.source for e in examples], max_new_tokens)
    references = [e.target for e in examples]
    return {"char_accuracy": char_accuracy(references, predictions),
            "exact_match": exact_match(references, predictions), "n": len(examples)}, predictions
