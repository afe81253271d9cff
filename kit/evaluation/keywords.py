"""Keyword lists as a predictable column, as pure functions: reading gold values, parsing
generated answers, scoring (the unsupervised extractors live in kit/models/extractors.py).

The seed competition asks for `uuid,Keywords,label`, with author keywords such as
"Flow cytometry; HDACi; Leukemia; ROS.". Everything here works on plain lists of strings:

- `split_keywords` / `infer_separator` read a training column and learn how to write one back;
- `parse_answer` turns a generated answer into a list, strictly (a sentence is not a keyword);
- `normalise` is the one way keywords are compared ("Neural Networks" == "neural network");
- `keyword_scores` / `paper_scores` score predicted lists against gold lists, exactly and by
  token overlap (author keywords are rarely reproduced word for word).
"""
import math
import re
import unicodedata

import numpy as np
import pandas as pd

from kit.core.errors import KitError

# Separators understood when reading answers; the order is the one they are tried in where order
# matters (two-character forms before their one-character prefix).
SEPARATORS = ("; ", ";", "；", ", ", ",", "，", "、", "|", "\n")

# split_keywords with no separator given: the first of these present in the text wins, so a
# semicolon list whose items contain commas ("fuzzy ART, GA; x") splits on the semicolons.
_SPLIT_PRIORITY = (";", "；", "，", ",", "、", "|", "\n")

# infer_separator: what a training column may use, most specific first.
_WRITE_SEPARATORS = ("; ", ";", "；", ", ", ",", "，", "、")

_DEFAULT_SEPARATOR = "; "

_NON_ALPHANUMERIC = re.compile(r"[\W_]+")
# A comma between two digits is part of a name ("1,2-Dicarbonylation"), not a separator.
_COMMA_OUTSIDE_NUMBERS = re.compile(r"(?<!\d)[,，]|[,，](?!\d)")
_ANSWER_SEPARATORS = re.compile(r"(?<!\d)[,，]|[,，](?!\d)|[;；、|]")
_ANSWER_LABEL = re.compile(r"^[\s*_#]*(?:key\s*words?|key\s*phrases?|关键词|关键字)[\s*_]*[:：][\s*_]*",
                           re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)、]|[-*•·])\s+")
_EDGE_NOISE = " \t\r\"'`*“”‘’「」『』"
_TRAILING_PERIODS = ".。"
_BRACKET_PAIRS = {"(": ")", "[": "]", "{": "}", "（": "）", "【": "】", "<": ">"}

# candidates(): a word is letters/digits, possibly joined by hyphens or apostrophes
# ("state-of-the-art", "Parkinson's"); anything else between two words ends a phrase.
WORD = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*")


def normalise(keyword):
    """The form keywords are compared in: NFKC, lowercase, punctuation (hyphens, brackets,
    quotes...) as spaces, whitespace collapsed, each word made singular by a simple rule.

    The plural rule is deliberately crude ("series" -> "sery") but it is applied to both sides
    of every comparison, so it only has to be consistent, not correct English.
    """
    text = unicodedata.normalize("NFKC", str(keyword)).lower()
    words = _NON_ALPHANUMERIC.sub(" ", text).split()
    return " ".join(_singular(word) for word in words)


def _singular(word):
    if len(word) <= 3:           # "ros", "gas", "bus": too short to tell a plural
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _is_missing(value):
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:                         # pandas' NA and NaT refuse bool(), but are missing all the same
        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (ImportError, TypeError, ValueError):
        return False


def _split_on(text, separator):
    if separator.strip() in (",", "，"):
        return _COMMA_OUTSIDE_NUMBERS.split(text)
    return text.split(separator)


def split_keywords(text, separator=None):
    """A gold or training value -> its keywords, case kept: "Flow cytometry; ROS." ->
    ["Flow cytometry", "ROS"]. None, NaN and "" give []."""
    if _is_missing(text):
        return []
    text = str(text)
    if separator is None:
        separator = next((candidate for candidate in _SPLIT_PRIORITY if candidate in text), None)
    items = [item.strip() for item in _split_on(text, separator)] if separator else [text.strip()]
    items = [item for item in items if item]
    if items:                    # authors end the list with a period: "...; ROS."
        items[-1] = items[-1].rstrip(_TRAILING_PERIODS).strip()
    return [item for item in items if item]


def infer_separator(values):
    """The separator a training column uses ("; " for "a; b"), so predictions are written the way
    the competition's own files are. Each value votes for the first separator it contains; the
    most common wins (ties: the more specific one); "; " when no value has a separator."""
    votes = {separator: 0 for separator in _WRITE_SEPARATORS}
    for value in values:
        if _is_missing(value) or not str(value).strip():
            continue
        found = next((separator for separator in _WRITE_SEPARATORS if separator in str(value)), None)
        if found is not None:
            votes[found] += 1
    best = max(_WRITE_SEPARATORS, key=lambda separator: votes[separator])  # first max on ties
    return best if votes[best] else _DEFAULT_SEPARATOR


def _clean_item(item):
    """Strip what wraps a keyword in a generated answer: spaces, quotes, markdown stars,
    brackets around the whole item, trailing periods; repeated until nothing changes."""
    while True:
        before = item
        item = item.strip(_EDGE_NOISE).rstrip(_TRAILING_PERIODS)
        if len(item) >= 2 and _BRACKET_PAIRS.get(item[0]) == item[-1] and _balanced_inside(item[1:-1]):
            item = item[1:-1]
        if item == before:
            return item


def _balanced_inside(text):
    """"(CNN)" is wrapped, "(CNN) and (RNN)" is not: the inner text must not close early."""
    depth = 0
    for char in text:
        if char in _BRACKET_PAIRS:
            depth += 1
        elif char in _BRACKET_PAIRS.values():
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def parse_answer(text, max_count=10, max_words=6, max_chars=60):
    """A generated answer -> its keyword list, strictly.

    Drops a leading "Keywords:" label, keeps only the first paragraph (a model that rambles on
    adds sentences, not keywords), splits on every separator and on list lines ("1. x", "- x"),
    and drops items too long to be keywords rather than truncating them: a truncated sentence
    would still score partial overlap and hide that the model did not answer.
    """
    if _is_missing(text):
        return []
    text = _ANSWER_LABEL.sub("", str(text).strip(), count=1).strip()
    text = _BLANK_LINE.split(text, maxsplit=1)[0]
    items = []
    for line in text.split("\n"):
        line = _LIST_MARKER.sub("", line, count=1)
        items.extend(_ANSWER_SEPARATORS.split(line))
    kept, seen = [], set()
    for item in map(_clean_item, items):
        key = normalise(item)
        if not key or key in seen or len(item) > max_chars or len(item.split()) > max_words:
            continue
        seen.add(key)
        kept.append(item)
    return kept[:max_count]


def _as_list(keywords):
    """A paper's keywords: a list as given, or a raw column value ("a; b", NaN) split."""
    if isinstance(keywords, str):
        return split_keywords(keywords)
    if isinstance(keywords, (list, tuple)):
        return list(keywords)
    return [] if _is_missing(keywords) else list(keywords)


def _normalised_set(keywords):
    return {key for key in map(normalise, _as_list(keywords)) if key}


def _f1(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _token_f1(left, right):
    return 2 * len(left & right) / (len(left) + len(right))


def _paper_detail(predicted_one, gold_one):
    """Exact and partial precision/recall/F1 of one paper; None when it has no gold keywords."""
    predicted, gold = _normalised_set(predicted_one), _normalised_set(gold_one)
    if not gold:
        return None
    hits = len(predicted & gold)
    exact_precision = hits / len(predicted) if predicted else 0.0
    exact_recall = hits / len(gold)
    predicted_tokens = [set(key.split()) for key in sorted(predicted)]
    gold_tokens = [set(key.split()) for key in sorted(gold)]
    partial_precision = (float(np.mean([max(_token_f1(p, g) for g in gold_tokens) for p in predicted_tokens]))
                         if predicted_tokens else 0.0)
    partial_recall = (float(np.mean([max(_token_f1(g, p) for p in predicted_tokens) for g in gold_tokens]))
                      if predicted_tokens else 0.0)
    return {"exact_precision": exact_precision, "exact_recall": exact_recall,
            "exact_f1": _f1(exact_precision, exact_recall),
            "partial_precision": partial_precision, "partial_recall": partial_recall,
            "partial_f1": _f1(partial_precision, partial_recall),
            "predicted": len(predicted), "gold": len(gold)}


def paper_scores(predicted_one, gold_one):
    """(exact F1, partial F1) of one paper; (nan, nan) when it has no gold keywords (it is not
    scored, and nan writes as an empty cell rather than a misleading 0)."""
    detail = _paper_detail(predicted_one, gold_one)
    if detail is None:
        return float("nan"), float("nan")
    return detail["exact_f1"], detail["partial_f1"]


_SCORE_KEYS = ("exact_precision", "exact_recall", "exact_f1", "partial_precision", "partial_recall", "partial_f1")


def keyword_scores(predicted, gold):
    """Macro averages over papers of exact and partial (token overlap) precision, recall and F1.

    predicted and gold hold one keyword list per paper (a raw column value such as "a; b" is
    split first). Papers with no gold keywords are skipped and counted in rows_without_gold.
    Counts are of distinct normalised keywords, the sets that are scored.
    """
    predicted, gold = list(predicted), list(gold)
    if len(predicted) != len(gold):
        raise KitError(f"keyword scores: {len(predicted)} predicted rows but {len(gold)} gold rows")
    details = [_paper_detail(p, g) for p, g in zip(predicted, gold)]
    scored = [detail for detail in details if detail is not None]
    scores = {key: round(float(np.mean([d[key] for d in scored])), 4) if scored else 0.0 for key in _SCORE_KEYS}
    scores["rows"] = len(scored)
    scores["rows_without_gold"] = len(details) - len(scored)
    scores["mean_predicted"] = round(float(np.mean([d["predicted"] for d in scored])), 2) if scored else 0.0
    scores["mean_gold"] = round(float(np.mean([d["gold"] for d in scored])), 2) if scored else 0.0
    return scores


