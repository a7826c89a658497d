"""Text and conversations as the model reads them: token ids through the tokenizer's chat
template (`apply_chat_template`'s rendering, tokenised without added special tokens, exactly
as transformers does), or the plain form when the tokenizer has no template.

- A conversational prompt is rendered with the generation prompt; its response is what the
  whole conversation's rendering adds after it, up to and including the template's
  end-of-turn token (the first control token the template writes after an assistant turn).
  A template without one ends the response with the tokenizer's EOS. So BOS and EOS come
  once: from the template, or from the tokenizer in the plain form, never both.
- Plain text (and a conversation without a template, rendered as HH-RLHF transcripts by
  `conversation.render_plain`) is tokenised piece by piece: the tokenizer's BOS when it adds
  one, the prompt, then the response and EOS.
- A prompt longer than `max_len` loses its oldest turns first (a system turn stays), then the
  start of its last user turn; the generation prompt and the template's control tokens are
  never cut.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from rlhf_jax.data import conversation as conv

Prompt = Union[str, list]  # text, or a message list
_PROBE = "q7Zx3 probe reply"  # assistant text that no template rewrites


class ChatTemplateError(ValueError):
    """A chat template that cannot tokenise a conversation consistently, or a length setting
    that leaves no room for the template's control tokens."""


def read_template(path: str) -> str:
    """A Jinja chat template from a file (`--config.chat_template=path.jinja`)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ChatTemplateError(f"chat_template={path!r}: cannot be read ({e.strerror})") \
            from None
    if "{%" not in text and "{{" not in text:
        raise ChatTemplateError(f"chat_template={path!r}: not a Jinja template (no '{{%' or "
                                "'{{' in it)")
    return text


def use_template(tokenizer, path: str = ""):
    """The tokenizer with the template at `path` as its own (so exports carry it); unchanged
    for an empty path."""
    if path:
        tokenizer.chat_template = read_template(path)
    return tokenizer


class ChatEncoder:
    """Token ids of prompts, responses and SFT texts for one tokenizer (and its template)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default")
        self.template: Optional[str] = template or None
        probe = tokenizer("a")["input_ids"]
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and probe[:1] == [bos] else []
        self.eos = tokenizer.eos_token_id
        self.end_of_turn = self._end_of_turn() if self.template else None

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end a sampled response: the template's end of turn, then EOS."""
        ids = (self.end_of_turn, self.eos)
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    # rendering -----------------------------------------------------------------------------

    def render(self, messages: list, add_generation_prompt: bool = False) -> str:
        """A conversation as text: the chat template's rendering, or the plain one."""
        if self.template is None:
            return conv.render_plain(messages, add_generation_prompt)
        return self.tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=add_generation_prompt,
                                            chat_template=self.template)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _special(self) -> set:
        ids = set(self.tok.all_special_ids)
        ids.update(i for i, t in self.tok.added_tokens_decoder.items() if t.special)
        return ids

    def _end_of_turn(self) -> Optional[int]:
        """The first control token the template writes after an assistant turn's text."""
        text = self.render([{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": _PROBE}])
        at = text.find(_PROBE)
        if at < 0:
            raise ChatTemplateError("the chat template does not write the assistant's text "
                                    "verbatim; cannot find where a response ends")
        special = self._special()
        return next((i for i in self._ids(text[at + len(_PROBE):]) if i in special), None)

    # prompts and responses -----------------------------------------------------------------

    def prompt_ids(self, prompt: Prompt, max_len: Optional[int] = None) -> tuple[list, bool]:
        """The prompt's ids (a conversation with the generation prompt) cut to `max_len`, and
        whether it was cut."""
        if isinstance(prompt, str):
            ids = self.bos + self._ids(prompt)
            if max_len is None or len(ids) <= max_len:
                return ids, False
            if max_len <= len(self.bos):
                raise ChatTemplateError(f"max_prompt_len={max_len} leaves no prompt token")
            return self.bos + ids[len(ids) - (max_len - len(self.bos)):], True
        ids = self._conversation_prompt(prompt)
        if max_len is None or len(ids) <= max_len:
            return ids, False
        return self._truncate(prompt, max_len), True

    def _conversation_prompt(self, messages: list) -> list:
        text = self.render(messages, True)
        return (self.bos if self.template is None else []) + self._ids(text)

    def response_ids(self, prompt: Prompt, response) -> list[int]:
        """The response's ids after the (whole) prompt, ending in the end-of-turn token or EOS:
        with a template, the whole conversation's ids after the prompt's."""
        if isinstance(prompt, str) or self.template is None:
            if isinstance(prompt, str):
                text = response
            else:  # the plain rendering's continuation: " text" (+ later turns)
                text = conv.render_plain(prompt + response)[len(conv.render_plain(prompt,
                                                                                  True)):]
            return self._ids(text) + ([self.eos] if self.eos is not None else [])
        head = self._ids(self.render(prompt, True))
        whole = self._ids(self.render(prompt + response))
        if whole[:len(head)] != head:
            raise ChatTemplateError("the chat template's tokens of the whole conversation do "
                                    "not start with the prompt's tokens (with the generation "
                                    "prompt); this template cannot split prompt and response")
        tail = whole[len(head):]
        if self.end_of_turn is None:
            return tail + ([self.eos] if self.eos is not None else [])
        ends = [i for i, t in enumerate(tail) if t == self.end_of_turn]
        if not ends:
            raise ChatTemplateError("the chat template wrote no end-of-turn token after the "
                                    "response")
        return tail[:ends[-1] + 1]

    def _truncate(self, messages: list, max_len: int) -> list:
        """A conversational prompt cut to `max_len` tokens: drop the oldest turns after any
        system turns (keeping a user turn first), then cut the start of the last user turn's
        text, keeping the tokens before it (BOS, system turn, header) and after it (the
        generation prompt)."""
        lead = next(i for i, m in enumerate(messages) if m["role"] != "system")
        msgs = list(messages)
        while len(self._conversation_prompt(msgs)) > max_len:
            rest = msgs[lead + 1:]
            drop = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
            if drop is None:
                break
            msgs = msgs[:lead] + rest[drop:]
        ids = self._conversation_prompt(msgs)
        if len(ids) <= max_len:
            return ids
        text = self.render(msgs, True)
        content = msgs[-1]["content"]
        start = text.rfind(content.strip()) if content.strip() else -1
        pre = self.bos if self.template is None else []
        end = start + len(content.strip())
        if not getattr(self.tok, "is_fast", False):  # no offsets: the three pieces apart
            if start < 0:
                raise ChatTemplateError("cannot find the last user turn's text in the "
                                        "template's rendering to cut it")
            head_ids, body, tail = (self._ids(text[:start]), self._ids(text[start:end]),
                                    self._ids(text[end:]))
            room = max_len - len(pre) - len(head_ids) - len(tail)
            if room < 1:
                raise ChatTemplateError(
                    f"max_prompt_len={max_len} is too small for this conversation's control "
                    f"tokens and generation prompt: they need "
                    f"{len(pre) + len(head_ids) + len(tail) + 1} tokens with one token of text")
            return pre + head_ids + body[-room:] + tail
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        inside = [i for i, (s, e) in enumerate(offsets) if start >= 0 and start <= s and e <= end]
        head = [i for i, (s, e) in enumerate(offsets) if e <= max(start, 0)]
        after = len(offsets) - (inside[-1] + 1) if inside else None
        room = max_len - len(pre) - len(head) - (after or 0)
        if not inside or room < 1:
            need = len(pre) + len(head) + (after or 0) + 1
            raise ChatTemplateError(
                f"max_prompt_len={max_len} is too small for this conversation's control tokens "
                f"and generation prompt: they need {need} tokens with one token of text")
        keep = inside[-room:] if room < len(inside) else inside
        kept = list(range(keep[0], len(offsets)))
        ids_all = enc["input_ids"]
        return pre + [ids_all[i] for i in head] + [ids_all[i] for i in kept]

    # SFT -----------------------------------------------------------------------------------

    def sft_ids(self, record: dict, train_on_prompt: bool = False) -> tuple[list, list]:
        """(ids, loss mask) of an SFT record (`data.read_records(kind="text")`): a plain text
        is learnt whole; `prompt` + `completion` learns the completion; `messages` learns its
        assistant turns (with their end-of-turn tokens). `train_on_prompt` learns every
        token."""
        if "text" in record:
            ids = self.bos + self._ids(record["text"]) + self._eos()
            return ids, [1] * len(ids)
        if "messages" in record:
            messages, first = record["messages"], 0
        else:
            prompt, completion = record["prompt"], record["completion"]
            if isinstance(prompt, str):
                head = self.bos + self._ids(prompt)
                tail = self._ids(completion) + self._eos()
                return head + tail, [int(train_on_prompt)] * len(head) + [1] * len(tail)
            messages, first = prompt + completion, len(prompt)
        ids, mask = self._conversation_sft(messages, first)
        return ids, [1] * len(ids) if train_on_prompt else mask

    def _eos(self) -> list:
        return [self.eos] if self.eos is not None else []

    def _conversation_sft(self, messages: list, first: int) -> tuple[list, list]:
        """A conversation's ids with 1 on the assistant turns from message `first` on."""
        if self.template is None:  # the plain rendering, piece by piece
            ids, mask, done = list(self.bos), [0] * len(self.bos), ""
            for k, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                head = conv.render_plain(messages[:k], True)
                body = conv.render_plain(messages[:k + 1])[len(head):]
                for text, flag in ((head[len(done):], 0), (body, int(k >= first))):
                    piece = self._ids(text)
                    ids += piece
                    mask += [flag] * len(piece)
                done = head + body
            rest = self._ids(conv.render_plain(messages)[len(done):]) if done != \
                conv.render_plain(messages) else []
            end = self._eos()
            ids += rest + end
            mask += [0] * len(rest) + [int(messages[-1]["role"] == "assistant")] * len(end)
            return ids, mask
        whole = self._ids(self.render(messages))
        mask = [0] * len(whole)
        for k, m in enumerate(messages):
            if m["role"] != "assistant" or k < first:
                continue
            head = self._ids(self.render(messages[:k], True))
            upto = self._ids(self.render(messages[:k + 1]))
            if whole[:len(head)] != head or whole[:len(upto)] != upto:
                raise ChatTemplateError(f"the chat template's tokens of the conversation do not "
                                        f"start with those of its first {k} turns; cannot "
                                        f"find assistant turn {k}")
            span = range(len(head), len(upto))
            ends = [i for i in span if whole[i] == self.end_of_turn]
            for i in span if not ends else range(len(head), ends[0] + 1):
                mask[i] = 1
        if self.end_of_turn is None and messages[-1]["role"] == "assistant" and self._eos():
            # a template that ends no turn: EOS ends the response, as in `response_ids`, so the
            # model learns to stop where sampling stops
            whole, mask = whole + self._eos(), mask + [int(len(messages) - 1 >= first)]
        return whole, mask

    # text ------------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        """A response's text without control tokens."""
        return self.tok.decode(list(ids), skip_special_tokens=True)


_ENCODERS: dict = {}


def encoder_for(tokenizer) -> ChatEncoder:
    """The `ChatEncoder` of a tokenizer, made once per tokenizer object and template."""
    template = getattr(tokenizer, "chat_template", None)
    key = (id(tokenizer), template if isinstance(template, (str, type(None))) else repr(template))
    hit = _ENCODERS.get(key)
    if hit is None or hit[0] is not tokenizer:
        hit = _ENCODERS[key] = (tokenizer, ChatEncoder(tokenizer))
    return hit[1]


def tokenizer_key(tokenizer) -> list:
    """What decides a tokenizer's ids for built datasets' fingerprints: its class, size, EOS,
    BOS and chat template."""
    template = getattr(tokenizer, "chat_template", None)
    return [type(tokenizer).__name__, len(tokenizer), tokenizer.eos_token_id,
            encoder_for(tokenizer).bos, template if isinstance(template, str) else repr(template)]
