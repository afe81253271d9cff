"""Token ids for prompts and answers.

A prompt is three pieces: a prefix shared by every row (chat template + instruction), the
row's input, and a tail (the template's turn end and the answer slot). Tokenising them apart
lets truncation cut only the input, never the instruction or the answer slot, and makes the
prefix identical token for token across rows, so prediction can compute it once (KV cache).
"""
import json
from dataclasses import dataclass

from kit.core.errors import KitError

_SENTINEL = "\u2063KIT_INPUT\u2063"
_ANSWER = "\u2063KIT_ANSWER\u2063"


def _apply(tokenizer, messages, generation_prompt):
    # enable_thinking=False: Qwen3 then writes its empty think block into the prompt, so the
    # answer slot is where the answer goes; other templates ignore the variable
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                         enable_thinking=False)


def _assistant_turn(tokenizer, messages):
    """How the template writes an answer after these messages: (what comes between the
    generation prompt and the answer, e.g. GLM-4's newline; what closes the turn)."""
    try:
        prompt = _apply(tokenizer, messages, True)
        full = _apply(tokenizer, messages + [{"role": "assistant", "content": _ANSWER}], False)
    except Exception:  # templates raise their own error types
        return "", ""
    if not isinstance(full, str) or full.count(_ANSWER) != 1:
        return "", ""
    before, after = full.split(_ANSWER)
    lead = before[len(prompt):] if before.startswith(prompt) else ""
    return lead, after


def _render(tokenizer, instruction):
    """The chat template around a placeholder input, with the instruction as the system message;
    a template that refuses the system role (Gemma) or drops it (some Phi-3) gets the
    instruction folded into the user turn instead."""
    attempts = [[{"role": "system", "content": instruction}, {"role": "user", "content": _SENTINEL}],
                [{"role": "user", "content": f"{instruction}\n{_SENTINEL}"}]]
    for messages in attempts:
        try:
            text = _apply(tokenizer, messages, True)
        except Exception:  # templates raise their own error types for unsupported roles
            continue
        if isinstance(text, str) and text.count(_SENTINEL) == 1 and instruction in text:
            prefix, tail = text.split(_SENTINEL)
            return prefix, tail + _assistant_turn(tokenizer, messages)[0]
    return f"{instruction}\n", "\nAnswer: "   # a base model without a chat template


def with_the_instruction(tokenizer, instruction):
    """The tokenizer's chat template with the run's instruction as the system message whenever a
    conversation brings none, so apply_chat_template (and vLLM's chat path) renders the prompt the
    model was trained on from the user's message alone. None when the template has no system turn
    the kit used (no template, or one that folds the instruction into the user turn)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    try:
        text = _apply(tokenizer, [{"role": "system", "content": instruction}, {"role": "user", "content": _SENTINEL}],
                      True)
    except Exception:  # templates raise their own error types for unsupported roles
        return None
    if not (isinstance(text, str) and text.count(_SENTINEL) == 1 and instruction in text):
        return None
    # a Jinja string literal decodes Python's escapes, which json.dumps writes for quotes and newlines
    literal = json.dumps(instruction, ensure_ascii=False)
    return ("{%- if not messages or messages[0]['role'] != 'system' -%}"
            f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
            "{%- endif %}" + template)


def end_of_turn(tokenizer):
    """The token that closes an assistant turn in this template (Gemma's <end_of_turn>, Phi-3's
    <|end|>, ChatML's <|im_end|>), else the tokenizer's eos token."""
    if getattr(tokenizer, "chat_template", None):
        after = _assistant_turn(tokenizer, [{"role": "user", "content": "x"}])[1]
        ids = tokenizer(after, add_special_tokens=False).input_ids if after else []
        if ids and ids[0] in tokenizer.all_special_ids:
            return ids[0]
    return tokenizer.eos_token_id


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


def answer_ids(tokenizer, words, rationale_separator=None):
    """Token ids of each label word followed by the turn's end. Label words may share their
    first tokens ("1" and "12", "positive" and "positively"): scoring then compares whole
    answers (predict.answer_scores). With a rationale separator the word is followed by the
    separator instead: a rationale (and then the turn's end) comes after it."""
    end = end_of_turn(tokenizer)
    end = [end] if end is not None else []
    if rationale_separator is not None:
        end = tokenizer(rationale_separator, add_special_tokens=False).input_ids
    answers = [tokenizer(word, add_special_tokens=False).input_ids + end for word in words]
    if len({tuple(a) for a in answers}) != len(answers):
        raise KitError(f"label words {words} tokenise to the same answer; choose [task] label_words that differ")
    return answers


def first_tokens_differ(answers):
    """Whether one forward pass over the label words' first tokens tells the labels apart."""
    return len({a[0] for a in answers}) == len(answers)
