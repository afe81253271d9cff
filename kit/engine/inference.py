"""Batched prediction: constrained label scoring, and generation with a strict parser.

CPU time goes where tokens are computed, so: rows sorted by length (little padding), the
shared prefix (template + instruction) computed once and reused as a KV cache, and only the
last position's logits, restricted to the label words' first tokens.
"""
import copy

import numpy as np
import torch

from kit.core.progress import progress
from kit.engine.batching import batches_by_length, pad_batch
from kit.evaluation.parse import parse_answer

SCORE, GENERATE, FALLBACK = "score", "generate", "fallback"
PROGRESS = True      # per-batch progress bars (kit serve turns them off: one bar per request is noise)


def shared_prefix_length(ids):
    first = ids[0]
    length = min(len(s) for s in ids) - 1          # keep at least one token per row
    for s in ids[1:]:
        while length and s[:length] != first[:length]:
            length -= 1
    return max(length, 0)


def _window_too_short(config, ids):
    """Under sliding-window attention (Mistral, Gemma-2) the pads between the cached prefix and a
    row's suffix count as distance, so the cache is exact only when every row fits the window."""
    window = getattr(config.get_text_config(), "sliding_window", None)
    return bool(window) and max(len(s) for s in ids) > window


class PrefixCache:
    """The KV cache of the prompt prefix every row shares, computed once per predict call."""

    def __init__(self, model, ids, enabled=True, left=True):
        self.left = left          # decoders pad on the left; encoders pool [CLS] and pad on the right
        enabled = enabled and not _window_too_short(model.config, ids)
        self.length = shared_prefix_length(ids) if enabled and len(ids) > 1 else 0
        self.cache = None
        if self.length:
            with torch.no_grad():
                prefix = torch.tensor([ids[0][:self.length]], device=model.device)
                self.cache = model(input_ids=prefix, use_cache=True).past_key_values

    def inputs(self, rows, pad_id, device):
        """Model inputs for a batch: the suffixes left-padded, positions continuing the prefix."""
        if not self.length:
            return pad_batch(rows, pad_id, self.left, device)
        suffixes = [s[self.length:] for s in rows]
        batch = pad_batch(suffixes, pad_id, True, device)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(rows))
        return {"input_ids": input_ids,
                "attention_mask": torch.cat([torch.ones(len(rows), self.length, dtype=mask.dtype, device=device), mask], 1),
                "position_ids": (self.length + mask.cumsum(1) - 1).clamp(min=self.length),
                "past_key_values": cache}


def _run_batches(ids, batch_size, desc, forward, sort=True):
    """Call forward(index, rows) per length-sorted batch; gather its (n, K) outputs in row order."""
    out = None
    with torch.no_grad():
        for index in progress(batches_by_length(ids, batch_size, sort), desc=desc, unit="batch",
                              disable=not PROGRESS):
            values = forward(index, [ids[i] for i in index])
            if out is None:
                out = np.zeros((len(ids), values.shape[1]), dtype=np.float64)
            out[index] = values
    return out


def _batch_inputs(model, ids, pad_id, use_prefix_cache, inputs, left=True):
    """inputs(index, rows) -> model inputs: the caller's (the top blocks fed from cached lower
    states, kit/engine/states.py), else the rows after the shared prefix's KV cache."""
    if inputs is not None:
        return inputs
    prefix = PrefixCache(model, ids, use_prefix_cache, left=left)
    return lambda index, rows: prefix.inputs(rows, pad_id, model.device)


def score_labels(model, ids, first_tokens, pad_id, batch_size=32, use_prefix_cache=True,
                 sort_by_length=True, last_logits_only=True, inputs=None):
    """P(label) from one forward pass: softmax over the label words' first tokens.
    (The switches after use_prefix_cache exist for the benchmark's ablations.)"""
    make_inputs = _batch_inputs(model, ids, pad_id, use_prefix_cache, inputs)
    firsts = torch.tensor(first_tokens)

    def forward(index, rows):
        keep = 1 if last_logits_only else 0
        logits = model(**make_inputs(index, rows), logits_to_keep=keep).logits[:, -1]
        return torch.softmax(logits.float()[:, firsts], -1).cpu().numpy()
    return _run_batches(ids, batch_size, "score", forward, sort_by_length)


def answer_scores(model, ids, answers, pad_id, batch_size=32):
    """P(label) from whole answers: log P(answer tokens, end of turn | prompt) summed per label,
    softmax over the labels. For label words that share first tokens, where the one-pass
    first-token scoring cannot tell them apart. Each row is run once per label, with the output
    layer applied only at the answer positions."""
    k, longest = len(answers), max(len(a) for a in answers)
    per_batch = max(1, batch_size // k)

    def forward(index, rows):
        sequences = [row + answer for row in rows for answer in answers]
        batch = pad_batch(sequences, pad_id, True, model.device)
        logits = model(**batch, logits_to_keep=longest + 1).logits.float()   # the last positions only
        logprobs = torch.log_softmax(logits, -1)
        scores = torch.zeros(len(sequences))
        for s, answer in enumerate(answers * len(rows)):
            # left padding: the answer fills the last len(answer) positions; position p predicts p + 1
            start = logprobs.shape[1] - len(answer) - 1
            positions = torch.arange(start, start + len(answer))
            scores[s] = logprobs[s, positions, torch.tensor(answer, device=logprobs.device)].sum().cpu()
        return torch.softmax(scores.view(len(rows), k), -1).numpy()
    return _run_batches(ids, per_batch, "score answers", forward)


LINKS = {"softmax": lambda logits: torch.softmax(logits, -1),   # one label per row: P(label)
         "sigmoid": torch.sigmoid,                              # several label columns: P(column) each
         "identity": lambda logits: logits}                     # a regression head: the number


def classify_proba(model, ids, pad_id, batch_size=32, use_prefix_cache=True, inputs=None, link="softmax"):
    """The classification head's outputs per row (the last real token is pooled), through the
    task's link: P(label), P(each label column), or a regression head's raw number."""
    decoder = is_decoder(model.config)
    make_inputs = _batch_inputs(model, ids, pad_id, use_prefix_cache and decoder, inputs, left=decoder)

    def forward(index, rows):
        return LINKS[link](model(**make_inputs(index, rows)).logits.float()).cpu().numpy()
    return _run_batches(ids, batch_size, "classify", forward)


ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra",
                 "albert", "mpnet", "camembert", "ernie", "modernbert"}


def is_decoder(config):
    return getattr(config, "model_type", "") not in ENCODER_TYPES


def generate_labels(model, tokenizer, ids, answers, words, pad_id, batch_size=32, max_new_tokens=None,
                    separator=None):
    """Greedy answers parsed strictly (with a rationale separator: the text before it); rows whose
    answer is not a label word fall back to the label scores of the first generated step (the same
    numbers score mode computes).
    Returns (probabilities, parsed label index or -1 per row, raw answers)."""
    firsts = torch.tensor([a[0] for a in answers])
    # the longest answer already ends with end-of-turn: enough tokens to see whether the model
    # said exactly a label word and stopped
    max_new = max_new_tokens or max(len(a) for a in answers)
    n = len(ids)
    probs, parsed, raw = np.zeros((n, len(answers))), np.full(n, -1), [""] * n
    with torch.no_grad():
        for index in progress(batches_by_length(ids, batch_size), desc="generate", unit="batch",
                              disable=not PROGRESS):
            batch = pad_batch([ids[i] for i in index], pad_id, True, model.device)
            input_ids, mask = batch["input_ids"], batch["attention_mask"]
            out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=pad_id)
            probs[index] = torch.softmax(out.logits[0].float()[:, firsts], -1).cpu().numpy()
            texts = tokenizer.batch_decode(out.sequences[:, input_ids.shape[1]:], skip_special_tokens=True)
            for i, text in zip(index, texts):
                raw[i] = text
                label = parse_answer(text, words, separator)
                parsed[i] = -1 if label is None else label
    return probs, parsed, raw


def generate_texts(model, tokenizer, ids, pad_id, batch_size=32, max_new_tokens=64, stop_id=None):
    """Greedy continuations of each prompt (the generate head of a predicted text column),
    decoded without special tokens; generation stops at stop_id (the turn's end)."""
    texts = [""] * len(ids)
    with torch.no_grad():
        for index in progress(batches_by_length(ids, batch_size), desc="generate", unit="batch",
                              disable=not PROGRESS):
            batch = pad_batch([ids[i] for i in index], pad_id, True, model.device)
            out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                 eos_token_id=stop_id if stop_id is not None else tokenizer.eos_token_id)
            decoded = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(index, decoded):
                texts[i] = text.strip()
    return texts
