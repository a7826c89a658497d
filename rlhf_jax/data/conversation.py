"""Conversations as records hold them: lists of `{"role", "content"}` messages.

Pure Python, no tokenizer: checking messages, prompts and completions, finding the prompt that
two whole conversations share (TRL's implicit-prompt form), reading Anthropic HH-RLHF's
`\\n\\nHuman:` / `\\n\\nAssistant:` transcripts, and the plain rendering used when a tokenizer
has no chat template. Errors are `ConversationError`s without a location; the record reader
adds file, line and field.
"""
from __future__ import annotations

import json
import re
from typing import Any

ROLES = ("system", "user", "assistant")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
# the plain rendering's turn markers (HH-RLHF's, with "System" for a system message)
PLAIN_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class ConversationError(ValueError):
    """A message list that is not a valid conversation (no file or line: the caller adds them)."""


def is_messages(value: Any) -> bool:
    """Whether a field holds the conversational form: a list (of messages) or one message."""
    return isinstance(value, list) or (isinstance(value, dict) and "role" in value)


def check_messages(value: Any, field: str) -> list[dict]:
    """`value` as a list of {"role", "content"} messages (a single message dict is a list of
    one); roles are system, user or assistant, contents strings. Other keys are dropped."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConversationError(f"field {field!r} must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        where = f"field {field!r} message {i}"
        if not isinstance(msg, dict):
            raise ConversationError(f"{where}: expected an object with 'role' and 'content', "
                                    f"got {type(msg).__name__}")
        for key in ("role", "content"):
            if key not in msg or msg[key] is None:
                raise ConversationError(f"{where}: '{key}' is missing")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise ConversationError(f"{where}: unknown role {role!r}; expected one of "
                                    f"{', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ConversationError(f"{where}: 'content' must be a string, got "
                                    f"{type(content).__name__}")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConversationError(f"{where}: 'content' holds an unpaired surrogate at "
                                    f"character {e.start}, not text") from None
        if role == "system" and i > 0 and out[-1]["role"] != "system":
            raise ConversationError(f"{where}: a system message may only open the conversation")
        out.append({"role": role, "content": content})
    return out


def check_prompt(messages: list[dict], field: str = "prompt") -> list[dict]:
    """A conversational prompt must end on a user turn (the generation prompt follows it)."""
    if messages[-1]["role"] != "user":
        raise ConversationError(f"field {field!r} must end on a user turn, not "
                                f"{messages[-1]['role']!r}")
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise ConversationError(f"field {field!r}: every user turn is empty")
    return messages


def check_completion(messages: list[dict], field: str) -> list[dict]:
    """A completion (chosen, rejected, a response) is one or more assistant turns with text."""
    roles = sorted({m["role"] for m in messages} - {"assistant"})
    if roles:
        raise ConversationError(f"field {field!r} must hold assistant turns only, found "
                                f"{', '.join(roles)}")
    if not any(m["content"].strip() for m in messages):
        raise ConversationError(f"field {field!r}: the response is empty or whitespace only")
    return messages


def split_shared_prompt(conversations: list[list[dict]], fields: str) -> tuple[list, list]:
    """TRL's implicit prompt: whole conversations that share every turn up to the last user
    turn. Returns (prompt messages, [completion messages per conversation])."""
    common = 0
    first = conversations[0]
    while common < len(first) and all(len(c) > common and c[common] == first[common]
                                      for c in conversations):
        common += 1
    # the prompt ends at the last user turn of the shared part
    cut = max((i + 1 for i in range(common) if first[i]["role"] == "user"), default=0)
    if cut == 0:
        raise ConversationError(f"fields {fields} share no prompt ending on a user turn")
    prompt = first[:cut]
    rest = [c[cut:] for c in conversations]
    for c, name in zip(rest, fields.split("/")):
        if not c:
            raise ConversationError(f"field {name.strip(chr(39))!r} has no reply after the "
                                    "shared prompt")
    return prompt, rest


def parse_hh(text: str, field: str) -> list[dict]:
    """An HH-RLHF transcript (`\\n\\nHuman: …\\n\\nAssistant: …`) as messages. Text before the
    first marker is not allowed; one space after each marker is part of the marker."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        raise ConversationError(f"field {field!r} is not a '\\n\\nHuman:' / '\\n\\nAssistant:' "
                                "transcript")
    if parts[0].strip():
        raise ConversationError(f"field {field!r} has text before its first 'Human:' turn")
    out = []
    for name, content in zip(parts[1::2], parts[2::2]):
        out.append({"role": "user" if name == "Human" else "assistant",
                    "content": content[1:] if content.startswith(" ") else content})
    return out


def is_hh_transcript(text: Any) -> bool:
    """A string in HH-RLHF's transcript form (it starts with a Human turn)."""
    return isinstance(text, str) and text.lstrip(" ").startswith(HUMAN)


def render_plain(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The plain rendering of a conversation, for tokenizers without a chat template: HH-RLHF's
    transcript form (`\\n\\nHuman: …\\n\\nAssistant: …`, `\\n\\nSystem: …` for a system turn),
    ending in `\\n\\nAssistant:` when asked for a generation prompt."""
    text = "".join(f"\n\n{PLAIN_NAMES[m['role']]}: {m['content']}" for m in messages)
    return text + (ASSISTANT if add_generation_prompt else "")


def prompt_text(prompt) -> str:
    """A prompt as one string for text judges: itself, or a conversation's plain rendering with
    the generation prompt."""
    return prompt if isinstance(prompt, str) else render_plain(prompt, True)


def response_text(response) -> str:
    """A response as one string: itself, or its assistant turns' contents joined."""
    return response if isinstance(response, str) else "\n\n".join(
        m["content"] for m in response)


def last_user_text(prompt) -> str:
    """The text a judge of the built-in task reads as the prompt: the last user turn."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def prompt_record_text(prompt) -> str:
    """How a prompt is kept beside its ids: the text, or a conversation as JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def prompt_from_text(text: str):
    """The prompt `prompt_record_text` kept: a conversation (a JSON list of valid messages
    ending on a user turn), or else the text itself (text that only looks like JSON stays
    text)."""
    if text.startswith("[{"):
        try:
            return check_prompt(check_messages(json.loads(text), "prompt"))
        except (json.JSONDecodeError, ConversationError):
            return text
    return text
