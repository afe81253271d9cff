"""Keyword lists as a predictable column: reading gold values, parsing generated answers,
scoring, and two unsupervised extractors.

The seed competition asks for `uuid,Keywords,label`, with author keywords such as
"Flow cytometry; HDACi; Leukemia; ROS.". Everything here works on plain lists of strings:

- `split_keywords` / `infer_separator` read a training column and learn how to write one back;
- `parse_answer` turns a generated answer into a list, strictly (a sentence is not a keyword);
- `normalise` is the one way keywords are compared ("Neural Networks" == "neural network");
- `keyword_scores` / `paper_scores` score predicted lists against gold lists, exactly and by
  token overlap (author keywords are rarely reproduced word for word);
- `TfidfExtractor` (road 1, the baseline) and `MiniLMExtractor` (road 2, embeddings + MMR)
  extract keywords from abstracts with no training at all.
"""
import math
import re
import unicodedata

import numpy as np

from .errors import KitError

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
_WORD = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*")

# English function words plus the filler of abstracts: a candidate phrase may not start or end
# with one ("of deep learning", "proposed method"), though one may sit inside ("quality of life").
STOPWORDS = frozenset("""
a about above across after again against all almost along already also although always am among
an and another any are around as at be because been before being below between both but by can
cannot could did do does doing done down during each either else enough even ever every few for
from further had has have having he her here hers herself him himself his how i if in into is it
its itself just least less like many may me might more most much must my myself near neither no
nor not now of off often on once one only or other others otherwise our ours ourselves out over
own per perhaps rather same several shall she should since so some still such than that the their
theirs them themselves then there therefore these they this those though three through thus to
together too two under until up upon us very via was we were what whatever when where whereas
whether which while who whom whose why will with within without would yet you your yours
yourself yourselves
paper papers study studies studied method methods result results propose proposes proposed
approach approaches based using use used uses show shows showed shown also however new first
second well present presents presented article work works novel various different obtained
performed investigate investigated analyze analyzed analyse analysed demonstrate demonstrated
finally furthermore moreover respectively including include includes included compared
significantly significant effective effectively addition aim aims able make makes made provide
provides provided find found
""".split())


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
        import pandas as pd
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


def _chunks(text):
    """Runs of words with nothing but spaces between them: punctuation and line breaks end a
    phrase (a template's "title: {title}\nabstract: {abstract}" must not join the title's last
    word to the next line)."""
    chunk, previous_end = [], None
    text = str(text)
    for match in _WORD.finditer(text):
        between = text[previous_end:match.start()] if previous_end is not None else ""
        if previous_end is not None and (between.strip() or "\n" in between or "\r" in between):
            yield chunk
            chunk = []
        chunk.append(match.group())
        previous_end = match.end()
    if chunk:
        yield chunk


def _usable_word(word):
    return len(word) >= 2 or word.isupper()      # "T cell" keeps its "T", "a b" does not


def _is_phrase(words):
    if words[0].lower() in STOPWORDS or words[-1].lower() in STOPWORDS:
        return False
    if all(word.isdigit() for word in words):
        return False
    return all(_usable_word(word) for word in words)


def _phrase_occurrences(text, max_words):
    """Every candidate phrase occurrence, in text order: (original, normalised, word count).
    Repeats are kept: they are the term frequencies TF-IDF needs."""
    found = []
    for chunk in _chunks(text):
        for start in range(len(chunk)):
            for size in range(1, max_words + 1):
                words = chunk[start:start + size]
                if len(words) < size:
                    break
                if _is_phrase(words):
                    phrase = " ".join(words)
                    key = normalise(phrase)
                    if key:
                        found.append((phrase, key, size))
    return found


def _first_occurrences(occurrences):
    unique = {}
    for phrase, key, size in occurrences:
        unique.setdefault(key, (phrase, size))
    return unique


def candidates(text, max_words=3):
    """Candidate keyphrases of a text: n-grams of 1..max_words words inside punctuation-free
    runs, not starting or ending with a stopword, not pure numbers, words of 2+ characters
    (or capitals). In order of first appearance, unique by normalise(), first casing kept."""
    return [phrase for phrase, _ in _first_occurrences(_phrase_occurrences(text, max_words)).values()]


def _contains(outer, inner):
    """Whether the word sequence inner occurs inside outer, contiguously."""
    size = len(inner)
    return any(outer[i:i + size] == inner for i in range(len(outer) - size + 1))


def _overlaps_chosen(key, chosen_keys):
    words = key.split()
    return any(_contains(words, other.split()) or _contains(other.split(), words) for other in chosen_keys)


def _pick_non_overlapping(phrases, k):
    """The first k phrases, skipping one that contains or is contained in one already taken
    ("neural network" after "convolutional neural network" adds nothing)."""
    chosen, chosen_keys = [], []
    for phrase in phrases:
        if len(chosen) >= k:
            break
        key = normalise(phrase)
        if _overlaps_chosen(key, chosen_keys):
            continue
        chosen.append(phrase)
        chosen_keys.append(key)
    return chosen


def _already_analysed(document):
    return document


class TfidfExtractor:
    """Road 1, the baseline: rank each text's candidate phrases by TF-IDF over the given texts.

    IDF is computed over candidate phrases (not single words) of the texts themselves, so a
    phrase frequent in one abstract but rare across the collection ranks first.
    """

    # A phrase occurs at most as often as its rarest word, so with sublinear TF its words
    # usually outweigh it even when the phrase is the keyword ("neural network" vs "network").
    # A small bonus per extra word evens that out without letting long n-grams always win.
    LENGTH_BONUS = 0.2

    def __init__(self, max_words=3):
        self.max_words = max_words

    def rank(self, texts):
        """All candidate phrases of each text, best first (ties: first appearance)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        occurrences = [_phrase_occurrences(text, self.max_words) for text in texts]
        if not any(occurrences):
            return [[] for _ in texts]
        # The documents are handed over already analysed (each a list of normalised candidate
        # occurrences), so phrase extraction runs once per text, not once for IDF and again here.
        vectorizer = TfidfVectorizer(analyzer=_already_analysed, sublinear_tf=True)
        weights = vectorizer.fit_transform([[key for _, key, _ in found] for found in occurrences]).tocsr()
        vocabulary = vectorizer.vocabulary_
        ranked = []
        for row, found in enumerate(occurrences):
            row_weights = dict(zip(weights.indices[weights.indptr[row]:weights.indptr[row + 1]],
                                   weights.data[weights.indptr[row]:weights.indptr[row + 1]]))
            unique = _first_occurrences(found)
            scored = [(-row_weights.get(vocabulary[key], 0.0) * (1 + self.LENGTH_BONUS * (size - 1)), order, phrase)
                      for order, (key, (phrase, size)) in enumerate(unique.items())]
            ranked.append([phrase for _, _, phrase in sorted(scored)])
        return ranked

    def extract(self, texts, k):
        """Top k phrases per text, none containing another, in their original casing."""
        return [_pick_non_overlapping(phrases, k) for phrases in self.rank(list(texts))]


def mmr(document_vector, candidate_vectors, k, diversity=0.5):
    """Maximal marginal relevance over L2-normalised vectors: indices of candidates in pick
    order, each the best trade-off between similarity to the document and dissimilarity to
    those already picked (diversity 0: plain relevance ranking)."""
    candidate_vectors = np.asarray(candidate_vectors, dtype=float)
    if k <= 0 or candidate_vectors.size == 0:
        return []
    candidate_vectors = candidate_vectors.reshape(len(candidate_vectors), -1)
    relevance = candidate_vectors @ np.asarray(document_vector, dtype=float).reshape(-1)
    similarity = candidate_vectors @ candidate_vectors.T
    chosen = [int(np.argmax(relevance))]
    remaining = [i for i in range(len(candidate_vectors)) if i != chosen[0]]
    while remaining and len(chosen) < k:
        redundancy = similarity[np.ix_(remaining, chosen)].max(axis=1)
        score = (1 - diversity) * relevance[remaining] - diversity * redundancy
        best = remaining[int(np.argmax(score))]
        chosen.append(best)
        remaining.remove(best)
    return chosen


class MiniLMExtractor:
    """Road 2: embed each text and its best TF-IDF candidates with the embedded
    all-MiniLM-L6-v2, then pick k by maximal marginal relevance (KeyBERT's recipe).

    The TF-IDF pre-ranking keeps `pool` candidates per text: an abstract has hundreds of
    n-grams, and embedding them all costs far more than it gains. Diversity 0.2 was chosen on
    the training 80% of the real papers' keywords (exact F1 0.073 / 0.077 / 0.067 / 0.049 at
    diversity 0 / 0.2 / 0.5 / 0.7): more diversity picks phrases off the paper's topic.
    """

    DOCUMENT_MAX_LENGTH = 256
    CANDIDATE_MAX_LENGTH = 16

    def __init__(self, encoder_dir=None, max_words=3, pool=40, diversity=0.2, batch_size=64):
        self.encoder_dir = encoder_dir
        self.max_words = max_words
        self.pool = pool
        self.diversity = diversity
        self.batch_size = batch_size
        self._tokenizer = None
        self._model = None

    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            from .models.embedded import embedded_encoder_dir

            directory = str(self.encoder_dir or embedded_encoder_dir())
            self._tokenizer = AutoTokenizer.from_pretrained(directory)
            self._model = AutoModel.from_pretrained(directory).float().eval()
        return self._tokenizer, self._model

    def _embed(self, texts, max_length, bar):
        """Mean-pooled, L2-normalised embeddings, shape (len(texts), hidden)."""
        import torch

        tokenizer, model = self._load()
        parts = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start:start + self.batch_size]
                encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                hidden = model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                parts.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
                bar.update(len(batch))
        return np.concatenate(parts) if parts else np.zeros((0, model.config.hidden_size), dtype=np.float32)

    def extract(self, texts, k, progress=True):
        from tqdm.auto import tqdm

        texts = [str(text) for text in texts]
        pooled = [phrases[:self.pool] for phrases in TfidfExtractor(self.max_words).rank(texts)]
        with_candidates = [i for i, phrases in enumerate(pooled) if phrases]
        flat = [phrase for i in with_candidates for phrase in pooled[i]]
        results = [[] for _ in texts]
        if not with_candidates or k <= 0:
            return results
        with tqdm(total=len(with_candidates) + len(flat), desc="embedding", unit="text", disable=not progress) as bar:
            documents = self._embed([texts[i] for i in with_candidates], self.DOCUMENT_MAX_LENGTH, bar)
            phrase_vectors = self._embed(flat, self.CANDIDATE_MAX_LENGTH, bar)
        offset = 0
        for document, i in zip(documents, with_candidates):
            phrases = pooled[i]
            vectors = phrase_vectors[offset:offset + len(phrases)]
            offset += len(phrases)
            # The whole pool in MMR order, then the first k that do not overlap a taken phrase,
            # so dropping "network" after "neural network" still leaves k keywords.
            order = mmr(document, vectors, len(phrases), self.diversity)
            results[i] = _pick_non_overlapping([phrases[j] for j in order], k)
        return results
