"""Token ids for prompts and answers.

A prompt is three pieces: a prefix shared by every row (chat template + instruction), the
row's input, and a tail (the template's turn end and the answer slot). Tokenising them apart
lets truncation cut only the input, never the instruction or the answer slot, and makes the
prefix identical token for token across rows, so prediction can compute it once (KV cache).
"""
from dataclasses import dataclass

from .errors import KitError

_SENTINEL = "\u2063KIT_INPUT\u2063"


def _render(tokenizer, instruction):
    """The chat template around a placeholder input; falls back when 'system' is refused."""
    attempts = [[{"role": "system", "content": instruction}, {"role": "user", "content": _SENTINEL}],
                [{"role": "user", "content": f"{instruction}\n{_SENTINEL}"}]]
    for messages in attempts:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates raise their own error types for unsupported roles
            continue
        if isinstance(text, str) and text.count(_SENTINEL) == 1:
            return text.split(_SENTINEL)
    return f"{instruction}\n", "\nAnswer: "   # a base model without a chat template


@dataclass
class Encoded:
    ids: list
    truncated: bool


class PromptEncoder:
    """Turns input texts into token ids for one tokenizer, instruction and length budget."""

    def __init__(self, tokenizer, instruction, max_length, chat=True):
        self.tokenizer, self.max_length, self.chat = tokenizer, max_length, chat
        if chat:
            prefix, tail = _render(tokenizer, instruction)
            self.prefix = tokenizer(prefix, add_special_tokens=False).input_ids
            self.tail = tokenizer(tail, add_special_tokens=False).input_ids
            if len(self.prefix) + len(self.tail) >= max_length:
                raise KitError(f"max_length {max_length} leaves no room for the input: the instruction "
                               f"and template take {len(self.prefix) + len(self.tail)} tokens")

    def encode(self, text):
        if not self.chat:  # encoders: [CLS] text [SEP], keeping the beginning of long texts
            ids = self.tokenizer(text, truncation=True, max_length=self.max_length).input_ids
            full = len(self.tokenizer(text).input_ids)
            return Encoded(ids, full > self.max_length)
        body = self.tokenizer(text, add_special_tokens=False).input_ids
        room = self.max_length - len(self.prefix) - len(self.tail)
        return Encoded(self.prefix + body[:room] + self.tail, len(body) > room)

    def encode_all(self, texts):
        encoded = [self.encode(text) for text in texts]
        return [e.ids for e in encoded], sum(e.truncated for e in encoded)


def answer_ids(tokenizer, words):
    """Token ids of each label word followed by end-of-turn; first tokens must differ, since
    constrained scoring compares the label words' first tokens in one forward pass."""
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answers = [tokenizer(word, add_special_tokens=False).input_ids + end for word in words]
    firsts = [a[0] for a in answers]
    if len(set(firsts)) != len(firsts):
        raise KitError(f"label words {words} start with the same token; choose [task] label_words "
                       "that differ in their first token")
    return answers
