"""Predicted keyword columns: three roads behind one interface (fit / predict / save / load).

- KeywordExtractor, `--model tfidf`: the baseline, the top TF-IDF n-grams of the text.
- KeywordExtractor, `--model minilm`: candidate n-grams ranked by their MiniLM similarity to
  the text, with a diversity step (maximal marginal relevance).
  Neither learns anything from the answers but how many keywords to write.
- KeywordWriter, any LLM (`--model smollm2`, a path, a hub id): LoRA on the generative head whose
  answer is the keyword list joined by the competition's separator; greedy decoding; a strict
  parser; rows whose answer parses to nothing fall back to the extractor, counted.

Keywords and labels come from two models: the label's default head is a classification head,
which cannot write text, and the keyword model is trained on a different answer.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kit.core.logs import log
from kit.core.settings import EMBEDDED_ENCODER, TFIDF, ModelArgs
from kit.engine import losses
from kit.engine.inference import generate_texts
from kit.engine.prompts import end_of_turn
from kit.evaluation.keywords import parse_answer
from kit.inputs.tasks import KeywordTask
from kit.models.base import Estimator, Rowwise
from kit.models.extractors import MiniLMExtractor, TfidfExtractor
from kit.models.transformer import TransformerModel, _quiet_transformers

EXTRACT, GENERATE, FALLBACK = "extract", "generate", "fallback"
DEFAULT_COUNT = 5
MAX_ANSWER_TOKENS = 160      # a training answer longer than this is cut (and so is generation)


@dataclass
class KeywordPrediction(Rowwise):
    keywords: list              # per row: a list of keyword strings
    decided: list               # per row: "extract", "generate" or "fallback"
    answers: list = None        # the LLM road: the raw generated text per row
    stats: dict = field(default_factory=dict)
    ROW_FIELDS = ("keywords", "decided", "answers")


def learned_count(task, answers):
    """How many keywords to write: the spec's count, else the median length of the answers."""
    if task.count:
        return task.count
    lengths = [len(a) for a in answers or [] if a]
    return int(min(task.max_count, max(1, round(float(np.median(lengths)))))) if lengths else DEFAULT_COUNT


class KeywordExtractor(Estimator):
    """Roads 1 (tfidf) and 2 (minilm): unsupervised extraction from the row's text."""
    kind = "keywords-extract"
    task_type = KeywordTask
    prediction_type = KeywordPrediction
    whole_split = True          # TF-IDF weights over the split's texts: one piece

    def __init__(self, task, args=None, train_args=None, trust_remote_code=False):
        super().__init__(task, args or ModelArgs(model=task.extractor), train_args, trust_remote_code)
        self.count, self._road = None, None

    @property
    def fitted(self):
        return self.count is not None

    def fit(self, rows, **_):
        self.count = learned_count(self.task, rows.labels)
        self.train_stats = {"count": self.count}
        self._fitted_now()
        return self

    def extract(self, texts):
        if self._road is None:
            _quiet_transformers()
            self._road = TfidfExtractor() if self.args.model == TFIDF else MiniLMExtractor()
        return self._road.extract(list(texts), self.count)

    def predict(self, rows, mode=None, **_):
        self._require_fitted("predict")
        return KeywordPrediction(self.extract(rows.texts), [EXTRACT] * len(rows), stats={"rows": len(rows)})

    def save(self, directory):
        self._require_fitted("save")
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._write_model_file(directory, **self.learned_state())

    def learned_state(self):
        return {"count": self.count}

    @classmethod
    def load(cls, directory, trust_remote_code=False):
        state = cls.read_model_file(directory)
        model = cls._from_state(state, trust_remote_code)
        model.count = int(state["count"])
        return model


class KeywordWriter(TransformerModel):
    """Road 3: the LLM writes the keyword list (LoRA, generative head)."""
    kind = "keywords-llm"
    task_type = KeywordTask
    prediction_type = KeywordPrediction

    def __init__(self, task, args=None, train_args=None, trust_remote_code=False):
        args = replace(args or ModelArgs(), head="generate")    # the answer is text: only this head writes it
        super().__init__(task, args, train_args, trust_remote_code)
        self.count, self.max_new_tokens = None, MAX_ANSWER_TOKENS

    def fit(self, rows, checkpoint=None, resume=False, encoded=None, checkpoint_key=None):
        keep = [i for i, answer in enumerate(rows.labels) if answer]
        if len(keep) < len(rows):
            log(f"train: {len(rows) - len(keep)} row(s) without keywords left out (nothing to learn from)")
        if encoded:
            encoded = ([encoded[0][i] for i in keep], encoded[1])
        self.count = learned_count(self.task, rows.labels)
        return super().fit(rows.subset(keep), checkpoint, resume, encoded, checkpoint_key)

    def _answer_ids(self, keywords):
        text = self.task.separator.join(keywords)
        return self.tokenizer(text, add_special_tokens=False).input_ids[:MAX_ANSWER_TOKENS] + [end_of_turn(self.tokenizer)]

    def _training_pairs(self, model, ids, rows):
        targets = [self._answer_ids(keywords) for keywords in rows.labels]
        # room for the long answers seen in training, not a fixed budget: generation is the cost
        self.max_new_tokens = int(min(MAX_ANSWER_TOKENS, np.percentile([len(t) for t in targets], 98) * 1.25 + 4))
        return [s + t for s, t in zip(ids, targets)], targets, losses.AnswerLoss(model)

    def predict(self, rows, mode=None, encoded=None):
        self._require_fitted("predict")
        ids, stats = encoded if encoded else self.encode(rows)
        answers = generate_texts(self.model, self.tokenizer, ids, self.tokenizer.pad_token_id,
                                 self.args.predict_batch_size, self.max_new_tokens, end_of_turn(self.tokenizer))
        keywords = [parse_answer(answer, max_count=self.task.max_count) for answer in answers]
        empty = [i for i, found in enumerate(keywords) if not found]
        if empty:            # a rambling or empty answer: the extractor's keywords for that row, counted
            fallback = KeywordExtractor(self.task)
            fallback.count = self.count
            for i, found in zip(empty, fallback.extract([rows.texts[i] for i in empty])):
                keywords[i] = found
            log(f"predict: {len(empty)} of {len(rows)} answer(s) gave no keywords; "
                f"used the {self.task.extractor} extractor for them")
        fell_back = set(empty)
        decided = [FALLBACK if i in fell_back else GENERATE for i in range(len(rows))]
        return KeywordPrediction(keywords, decided, answers, {**stats, "fallback_rows": len(empty)})

    def learned_state(self):
        return {"count": self.count, "max_new_tokens": self.max_new_tokens}

    @classmethod
    def load(cls, directory, trust_remote_code=False):
        model = super().load(directory, trust_remote_code)
        state = cls.read_model_file(directory)
        model.count, model.max_new_tokens = int(state["count"]), int(state["max_new_tokens"])
        return model


def make_keyword_model(task, model_args, train_args, trust_remote_code=False):
    """tfidf / minilm: an extractor; any other model: the LLM writes the keywords."""
    if model_args.model in (TFIDF, EMBEDDED_ENCODER):
        return KeywordExtractor(task, replace(model_args, head=EXTRACT), train_args, trust_remote_code)
    return KeywordWriter(task, model_args, train_args, trust_remote_code)
