"""Supervised fine-tuning for chat: a chat template, loss on assistant tokens only, sequence packing,
and a `chat()` helper that answers until the end-of-turn token.

The template is ChatML-shaped but built from the tokenizer's own special tokens, so nothing is
added to the vocabulary and the embedding matrix keeps its size:

    <s>system\\n{content}</s>            (optional)
    <s>user\\n{content}</s>
    <s>assistant\\n{content}</s>
    ...                                  a generation prompt ends with "<s>assistant\\n"

Each turn opens with <s> and a role header and closes with </s>. The closing token must be the
tokenizer's EOS: that is what generation stops on, so a model trained to close turns with anything
else never emits EOS and talks until the length limit. ChatFormat refuses such a template when it
is set.

Loss: only the assistant's content and its closing </s> are predicted (labels -100 elsewhere: the
headers, user and system turns). Packing: whole conversations are packed best-fit-decreasing into
rows of up to max_len tokens, which removes nearly all padding on short chit-chat. Conversations in
one row can attend to earlier ones (no block-diagonal mask, like most packing implementations
without a variable-length attention kernel), but no label crosses a boundary and every
conversation starts with <s>. Use pack=False for one padded conversation per row.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from fromzero.errors import FromzeroError
from fromzero.tasks.chat_data import ROLES, ChatExample
from fromzero.tuning.collate import Row, lm_row, plain_text_backend

log = logging.getLogger("fromzero.tasks")
Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class ChatTemplate:
    """Turn = begin_of_turn + header.format(role=...) + content + end_of_turn (tokens, not text)."""

    begin_of_turn: str = "<s>"
    end_of_turn: str = "</s>"
    header: str = "{role}\n"


class ChatFormat:
    """A ChatTemplate bound to a tokenizer: checked once here, then used to encode conversations."""

    def __init__(self, tokenizer: Any, template: ChatTemplate | None = None):
        self.template = t = template or ChatTemplate()
        self.tokenizer = tokenizer
        bot, eot = tokenizer.token_to_id(t.begin_of_turn), tokenizer.token_to_id(t.end_of_turn)
        for name, tok_str, tok_id in (("begin_of_turn", t.begin_of_turn, bot), ("end_of_turn", t.end_of_turn, eot)):
            if tok_id is None:
                raise FromzeroError(f"chat template {name} {tok_str!r} is not a token of this tokenizer; use one of "
                                    "its special tokens (fromzero tokenizers: <s> opens a turn, </s> closes it)")
        if eot != tokenizer.eos_id:
            eos = tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
            raise FromzeroError(
                f"chat template end_of_turn {t.end_of_turn!r} (id {eot}) is not the tokenizer's EOS {eos!r} "
                f"(id {tokenizer.eos_id}): a model trained to end turns with it never emits EOS and repeats until the "
                f"length limit; set end_of_turn to {eos!r}")
        if "{role}" not in t.header:
            raise FromzeroError(f"chat template header {t.header!r} must contain {{role}}, e.g. '{{role}}\\n'")
        self.bot, self.eot = bot, eot
        self._backend = plain_text_backend(tokenizer)
        self._headers = {role: self._text_ids(t.header.format(role=role)) for role in ROLES}

    def _text_ids(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids if text else []

    def _turn(self, role: str, content: str) -> tuple[list[int], list[int]]:
        if role not in self._headers:
            raise FromzeroError(f"message role {role!r} is not one of {list(ROLES)}")
        return [self.bot] + self._headers[role], self._text_ids(content) + [self.eot]

    def encode(self, messages: Messages) -> tuple[list[int], list[bool]]:
        """Token ids of a whole conversation, and which of them are trained on (assistant content + </s>)."""
        ids: list[int] = []
        trained: list[bool] = []
        for m in messages:
            head, body = self._turn(m["role"], m["content"])
            ids += head + body
            trained += [False] * len(head) + [m["role"] == "assistant"] * len(body)
        return ids, trained

    def prompt(self, messages: Messages) -> list[int]:
        """Ids that ask for the next assistant turn: the conversation so far + "<s>assistant\\n"."""
        ids, _ = self.encode(messages)
        return ids + [self.bot] + self._headers["assistant"]

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> str:
        """The template as text (for reading and debugging; training uses the ids)."""
        t = self.template
        text = "".join(f"{t.begin_of_turn}{t.header.format(role=m['role'])}{m['content']}{t.end_of_turn}"
                       for m in messages)
        return text + (f"{t.begin_of_turn}{t.header.format(role='assistant')}" if add_generation_prompt else "")


def sft_rows(examples: Sequence[ChatExample], fmt: ChatFormat, max_len: int, where: str = "chat") -> list[Row]:
    """One causal-LM row per conversation, loss on assistant tokens only. Conversations longer than
    max_len keep their first max_len tokens; one that loses every assistant token is dropped."""
    rows, cut, dropped = [], 0, 0
    for ex in examples:
        ids, trained = fmt.encode(ex.messages)
        if len(ids) > max_len:
            cut += 1
            ids, trained = ids[:max_len], trained[:max_len]
        if not any(trained[1:]):
            dropped += 1
            continue
        rows.append(lm_row(ids, trained))
    if cut:
        log.warning("%s: %d of %d conversations are longer than %d tokens and were cut%s (raise max_len to keep "
                    "more)", where, cut, len(examples), max_len,
                    f"; {dropped} had no assistant token left and were dropped" if dropped else "")
    if not rows:
        raise FromzeroError(f"{where}: no conversation has an assistant reply within max_len={max_len} tokens; "
                            "raise max_len or check that the conversations end with the assistant")
    return rows


def pack_rows(rows: Sequence[Row], max_len: int) -> list[Row]:
    """Concatenate whole rows into packs of at most max_len tokens (best fit, longest first).

    Deterministic: the same rows always give the same packs. Rows are never split.
    """
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, pack index)
    for i in order:
        n = len(rows[i]["input_ids"])
        if n > max_len:
            raise FromzeroError(f"a row of {n} tokens does not fit max_len={max_len}; truncate rows before packing")
        k = bisect.bisect_left(free, (n, -1))  # the fullest pack that still has room
        if k < len(free):
            space, p = free.pop(k)
            packs[p].append(i)
        else:
            space, p = max_len, len(packs)
            packs.append([i])
        if space - n > 0:
            bisect.insort(free, (space - n, p))
    out = []
    for members in packs:
        members.sort()  # original order inside a pack
        out.append({"input_ids": [t for i in members for t in rows[i]["input_ids"]],
                    "labels": [t for i in members for t in rows[i]["labels"]]})
    return out


def chat(model: nn.Module, tokenizer: Any, messages: Messages | str, gen: Any = None,
         template: ChatTemplate | None = None) -> str:
    """The model's next assistant reply to `messages` (or to one user message given as a string).

    Generation stops at the end-of-turn token (= EOS). `gen` is a GenerationConfig (default: greedy,
    128 new tokens). When the conversation does not fit the context, its oldest tokens are dropped.
    """
    from fromzero.infer.generate import GenerationConfig
    from fromzero.tuning.decode import generate_until_eos

    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    gen = gen or GenerationConfig(max_new_tokens=128, temperature=0.0)
    fmt = ChatFormat(tokenizer, template)
    ids = fmt.prompt(messages)
    limit = model.config.max_seq_len - max(1, min(gen.max_new_tokens, model.config.max_seq_len // 2))
    if len(ids) > limit:
        ids = ids[-limit:]
    new = generate_until_eos(model, [ids], fmt.eot, gen.max_new_tokens, gen=gen)[0]
    return tokenizer.decode(new)
