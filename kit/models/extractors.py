"""Keyword extractors with nothing to learn from answers: candidate phrases ranked by TF-IDF, or re-ranked
by all-MiniLM-L6-v2 similarity with maximal marginal relevance."""
import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from transformers import AutoModel, AutoTokenizer

from kit.core.progress import progress as progress_bar
from kit.evaluation.keywords import WORD, normalise
from kit.models.embedded import embedded_encoder_dir

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


def _chunks(text):
    """Runs of words with nothing but spaces between them: punctuation and line breaks end a
    phrase (a template's "title: {title}\nabstract: {abstract}" must not join the title's last
    word to the next line)."""
    chunk, previous_end = [], None
    text = str(text)
    for match in WORD.finditer(text):
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


            directory = str(self.encoder_dir or embedded_encoder_dir())
            self._tokenizer = AutoTokenizer.from_pretrained(directory)
            self._model = AutoModel.from_pretrained(directory).float().eval()
        return self._tokenizer, self._model

    def _embed(self, texts, max_length, bar):
        """Mean-pooled, L2-normalised embeddings, shape (len(texts), hidden)."""

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

        texts = [str(text) for text in texts]
        pooled = [phrases[:self.pool] for phrases in TfidfExtractor(self.max_words).rank(texts)]
        with_candidates = [i for i, phrases in enumerate(pooled) if phrases]
        flat = [phrase for i in with_candidates for phrase in pooled[i]]
        results = [[] for _ in texts]
        if not with_candidates or k <= 0:
            return results
        with progress_bar(total=len(with_candidates) + len(flat), desc="embedding", unit="text",
                          disable=not progress) as bar:
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
