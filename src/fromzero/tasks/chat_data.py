"""Chat examples: conversations as alternating user/assistant messages (the SFT format).

chatterbot-corpus dialogs are plain lists of turns; the first speaker is taken as the user. A
conversation must end with an assistant reply to be trainable, so a dangling last user turn is
dropped, and a conversation with no reply at all is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from fromzero.errors import FromzeroError

ROLES = ("system", "user", "assistant")


@dataclass
class ChatExample:
    messages: list[dict[str, str]]  # [{"role": "user" | "assistant" | "system", "content": str}, ...]

    def dedupe_key(self) -> str:
        return json.dumps(self.messages, ensure_ascii=False, sort_keys=True)


def chat_from_turns(turns: Sequence[str]) -> ChatExample | None:
    """Alternate roles from the user; None when no assistant reply remains."""
    turns = [str(t).strip() for t in turns if str(t).strip()]
    if len(turns) % 2:
        turns = turns[:-1]
    if not turns:
        return None
    return ChatExample([{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)])


def check_messages(messages: object, where: str) -> ChatExample:
    """Validate a user-supplied `messages` list (roles, non-empty content, ends with the assistant)."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise FromzeroError(f"{where}: 'messages' is not valid JSON; write a list of "
                                '{"role": ..., "content": ...} objects') from None
    if not isinstance(messages, list) or not messages:
        raise FromzeroError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise FromzeroError(f"{where}: every message needs a role in {list(ROLES)} and a string content; got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise FromzeroError(f"{where}: the last message must be the assistant's reply (the part that is trained on)")
    return ChatExample(out)
