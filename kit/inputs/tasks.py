"""What an estimator learns, read from the spec and saved with the model: the label's task (instruction, label
words, few-shot examples) and a keyword column's (separator, count), and the rows of a [targets] column."""
from dataclasses import dataclass, field, replace

import numpy as np

from kit.core.settings import EMBEDDED_ENCODER
from kit.evaluation.keywords import infer_separator, split_keywords
from kit.evaluation.metrics import metric_info
from kit.inputs.data import Rows, clean_ids, input_key, read_csv, render_inputs, require_columns


@dataclass
class Task:
    """What an estimator needs from the spec, saved with it so a model folder is self-contained."""
    instruction: str
    words: list               # label words, in label order
    max_length: int = 256
    few_shot: int = 0         # k labelled examples in the prompt, drawn by fit from its training rows
    examples: list = None     # what fit drew: [input text, label word] pairs, saved with the model
    # the metric scores the probabilities themselves (auc, logloss), not decided labels or a ranking:
    # the TF-IDF baseline then picks its C by log loss and keeps the class prior (no class weights)
    calibrated: bool = False
    # [columns] rationale: the generative head learns "label word + separator + rationale" (None: the word)
    rationale_separator: str = None
    regression = False        # a number per row (NumberTask), not a probability per label
    several = False           # a probability per label column, each on its own (SeveralLabelsTask)
    link = "softmax"          # how a classify head's outputs become the prediction's (kit/engine/inference.py)

    @property
    def outputs(self):
        """How many numbers the model's head gives per row: a score per label."""
        return len(self.words)

    @classmethod
    def from_spec(cls, spec, max_length=None):
        return cls(spec.instruction, [spec.label_words[label] for label in spec.labels],
                   max_length or spec.max_length, spec.few_shot,
                   calibrated=metric_info(spec.metric).needs == "probabilities",
                   rationale_separator=RATIONALE_SEPARATOR if spec.rationale_column else None)

    def prompt(self):
        """The instruction the model reads: with few-shot examples, followed by them."""
        if not self.examples:
            return self.instruction
        shown = "\n\n".join(f"Input: {text}\nAnswer: {word}" for text, word in self.examples)
        return f"{self.instruction}\n\nExamples:\n\n{shown}"

    def with_examples(self, rows, seed):
        """A copy holding few_shot examples drawn from these (training) rows: labels taken in
        turn so every label is shown, rows at random (seeded), each text cut to EXAMPLE_CHARS."""
        if not self.few_shot or rows.labels is None:
            return self
        rng = np.random.default_rng(seed)
        by_label = [list(rng.permutation(np.flatnonzero(np.asarray(rows.labels) == k)))
                    for k in range(len(self.words))]
        chosen = []
        while len(chosen) < self.few_shot and any(by_label):
            for k, pool in enumerate(by_label):
                if pool and len(chosen) < self.few_shot:
                    chosen.append([_cut(rows.texts[pool.pop()]), self.words[k]])
        return replace(self, examples=chosen)


@dataclass
class SeveralLabelsTask(Task):
    """The task of several 0/1 label columns: one independent probability per column (a sigmoid
    output each, learned by binary cross-entropy); words are the columns' names."""
    several = True
    link = "sigmoid"

    @classmethod
    def from_spec(cls, spec, max_length=None):
        return cls(spec.instruction, list(spec.labels), max_length or spec.max_length,
                   calibrated=metric_info(spec.metric).needs == "probabilities")


@dataclass
class NumberTask(Task):
    """The task of a number per row (a score, a grade): one regression output learned by squared
    error on standardised targets; center and spread are the training targets' mean and standard
    deviation, learned by fit and saved with the model (the head's output is center + spread * y)."""
    words: list = field(default_factory=list)    # no label words
    scale: list = None        # [low, high] the numbers lie in (predictions are clipped to it), or None
    center: float = 0.0
    spread: float = 1.0
    regression = True
    link = "identity"

    @property
    def outputs(self):
        return 1

    @classmethod
    def from_spec(cls, spec, max_length=None):
        return cls(spec.instruction, [], max_length or spec.max_length, scale=spec.scale)

    def standardised_on(self, values):
        """A copy whose center and spread are these (training) targets' mean and standard deviation."""
        values = np.asarray(values, float)
        return replace(self, center=float(values.mean()), spread=float(values.std()) or 1.0)

RATIONALE_SEPARATOR = "\n"    # between the label word and its rationale: the label is the answer's first line
EXAMPLE_CHARS = 300       # a few-shot example's input, cut: k long abstracts would crowd out the row


def _cut(text):
    text = " ".join(str(text).split())
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS].rsplit(" ", 1)[0] + " ..."


@dataclass
class KeywordTask(Task):
    """The task of a keyword column: an instruction, how the list is written, how long it is."""
    words: list = field(default_factory=list)    # no label words
    separator: str = "; "
    count: int = None           # how many an extractor writes; None: learned in fit (median of the answers)
    max_count: int = 10
    extractor: str = EMBEDDED_ENCODER

    @classmethod
    def from_target(cls, target_spec, separator):
        target = target_spec.target
        return cls(instruction=target_spec.instruction, max_length=target_spec.max_length, separator=separator,
                   count=target["count"], max_count=target["max_count"], extractor=target["extractor"])


def target_rows(target_spec, split, frame=None):
    """A split as Rows for a target: the target's input text and, where the split has the
    source column, its answers as keyword lists (labels)."""
    path = target_spec.split_path(split)
    frame = read_csv(path) if frame is None else frame
    require_columns(frame, [target_spec.id_column], path, "the spec's [columns] id")
    ids = clean_ids(frame, target_spec.id_column, path)
    train = split == "train"              # the training file: some text, and none of it the answers
    texts, _ = render_inputs(frame, target_spec.input_template, path, key=input_key(target_spec) if train else None,
                             answers=[target_spec.label_column] if train and target_spec.label_column else ())
    source = target_spec.label_column
    answers = None
    if source is not None and (split == "train" or source in frame.columns):
        require_columns(frame, [source], path, f"the answers of [targets.{target_spec.target['column']}] (source)")
        answers = [split_keywords(value) for value in frame[source]]
    return Rows(ids, texts, answers), frame


def keyword_task(target_spec, train_frame=None):
    """The task, with the separator the spec names or the training answers use (a target with
    no source has no answers: the default separator, and no train file to read)."""
    separator = target_spec.target["separator"]
    if separator is None:
        source = target_spec.label_column
        if source is not None and train_frame is None:
            train_frame = read_csv(target_spec.train)
        values = train_frame[source].tolist() if source and source in train_frame.columns else []
        separator = infer_separator(values)
    return KeywordTask.from_target(target_spec, separator)
