"""The interface every estimator follows (scikit-learn's lesson): `fit(rows) -> self`,
`predict(rows, mode) -> Prediction`, `save(dir)`, `load(dir)`. CV, predict, ensembles and the
benchmark call only these, so they never branch on the kind of model."""
import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.tasks import KeywordTask, NumberTask, SeveralLabelsTask, Task

MODEL_FILE = "kit_model.json"     # what every saved estimator writes: its kind, task and settings
TASK_TYPES = {cls.__name__: cls for cls in (Task, NumberTask, SeveralLabelsTask, KeywordTask)}   # what a model file's task may be


class NotFittedError(KitError):
    """predict() or save() before fit()."""


# Prediction stats of several parts of one split (chunks, ranks' shares, folds) that add up
SUMMED_STATS = ("rows", "truncated_rows", "fallback_rows", "frozen_rows_reused", "frozen_rows_computed",
                "frozen_seconds")


def combined_stats(parts):
    """Prediction stats of several parts of one split as one."""
    stats = {}
    for key in SUMMED_STATS:
        if key in parts[0]:
            stats[key] = round(sum(p.get(key, 0) for p in parts), 1)
    if "mean_tokens" in parts[0]:
        stats["mean_tokens"] = round(sum(p["mean_tokens"] * p["rows"] for p in parts) / max(1, stats["rows"]), 1)
    return stats


class Rowwise:
    """The codec every prediction type shares: per-row fields that can be saved as JSON (a
    resumable chunk, a CV fold's result), read back, joined in order, and taken by index.
    A subclass names its per-row fields in ROW_FIELDS, and ARRAYS those held as numpy arrays."""
    ROW_FIELDS = ()
    ARRAYS = ()

    def to_record(self):
        record = {name: self._plain(name) for name in self.ROW_FIELDS}
        record["stats"] = self.stats
        return record

    def _plain(self, name):
        value = getattr(self, name)
        return value.tolist() if isinstance(value, np.ndarray) else value

    @classmethod
    def from_record(cls, record):
        values = {}
        for name in cls.ROW_FIELDS:
            value = record.get(name)
            values[name] = np.asarray(value) if value is not None and name in cls.ARRAYS else value
        return cls(**values, stats=record.get("stats") or {})

    @classmethod
    def join(cls, parts):
        """One prediction from parts in order (chunks of a split, folds of a CV)."""
        values = {}
        for name in cls.ROW_FIELDS:
            pieces = [getattr(p, name) for p in parts]
            if pieces[0] is None:
                values[name] = None
            elif name in cls.ARRAYS:
                values[name] = np.concatenate([np.asarray(piece) for piece in pieces])
            else:
                values[name] = [item for piece in pieces for item in piece]
        return cls(**values, stats=combined_stats([p.stats for p in parts]))

    def take(self, index):
        """The rows at index, in that order."""
        index = list(index)
        values = {}
        for name in self.ROW_FIELDS:
            value = getattr(self, name)
            values[name] = None if value is None else (
                np.asarray(value)[index] if name in self.ARRAYS else [value[i] for i in index])
        return type(self)(**values, stats=dict(self.stats))


@dataclass
class Prediction(Rowwise):
    probs: np.ndarray         # (rows, labels)
    decided: list             # per row: "score", "generate", "fallback", "classify" or "tfidf"
    answers: list = None      # generate mode: the raw generated text per row
    parsed: np.ndarray = None  # generate mode: the label index each answer parsed to, -1 if none
    stats: dict = field(default_factory=dict)
    ROW_FIELDS = ("probs", "decided", "answers", "parsed")
    ARRAYS = ("probs", "parsed")


                                   # pass, kept in half precision), fp32, or int8 (CPU: int8 lower blocks)


def _known(cls, values):
    """Only the fields cls has: a key a model file adds (say, trust_remote_code) is ignored,
    never applied."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


class Estimator:
    """Base class: holds the task and arguments, checks fitted-ness, writes the model file."""
    kind = None
    task_type = Task          # what the saved "task" holds (keyword estimators keep more)
    prediction_type = Prediction   # what predict returns (its codec saves and joins chunks)
    data_parallel = True      # under several ranks, fit shares each batch (False: this rank alone)
    whole_split = False       # predict needs the whole split at once (TF-IDF weights over it): no chunks
    on_step = None            # called as each training step begins (benchmarks time the steps with it)

    def __init__(self, task, args=None, train_args=None, trust_remote_code=False):
        self.task = task
        self.args = args or ModelArgs()
        self.train_args = train_args or TrainArgs()
        self.trust_remote_code = trust_remote_code   # from the current command line only, never saved
        self.model_id = None                          # a fresh id per fit: predict progress keys on it
        self.loss_log = []                            # the training loss per step (none for a closed-form fit)
        self.train_stats = {}                         # what a fit adds to the training figures

    def encode(self, rows):
        """Token ids once for many fits (a CV's folds share them); None: this model has no tokens."""
        return None

    def check_levers(self, soft, teacher):
        """Refuse, before any work, a pseudo-label or teacher setting this model cannot learn."""

    def check_zero_shot(self):
        """Refuse, before any weights load, a model that has nothing to predict with untrained."""
        raise KitError(f"{self.args.model}: a {self.kind} model learns everything it predicts with from the "
                       "training rows; it has no zero-shot score")

    def zero_shot(self):
        """This model as it is before any training, ready to predict (kit cv --zero-shot)."""
        self.check_zero_shot()
        return self

    @property
    def uses_rationales(self):
        """It learns [columns] rationale (a generative head answers the label, then why)."""
        return False

    @property
    def generates(self):
        """It can answer in words (a generative head): `--mode generate` has answers to parse."""
        return False

    @property
    def answer_tokens(self):
        """The label words' token ids a generative head answers with (None: no generative head)."""
        return None

    def without_state_cache(self):
        """For requests whose rows are new every time (kit serve): write no frozen states to disk."""
        self.train_args.state_cache = False
        return self

    def resolve_args(self):
        """Concrete values for device-dependent settings (transformers override this)."""
        return self.args

    def _require_fitted(self, action):
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__}: call fit() before {action}()")

    def _fitted_now(self):
        self.model_id = uuid.uuid4().hex

    def learned_state(self):
        """What fit learned beside the weights, saved in the model file (JSON values only)."""
        return {}

    def _write_model_file(self, directory, **extra):
        state = {"kind": self.kind, "model_id": self.model_id, "task": asdict(self.task),
                 "task_type": type(self.task).__name__,
                 "args": asdict(self.args), "train_args": {**asdict(self.train_args), "deadline": None}, **extra}
        (Path(directory) / MODEL_FILE).write_text(json.dumps(state, indent=2))

    @staticmethod
    def read_model_file(directory):
        path = Path(directory) / MODEL_FILE
        if not path.is_file():
            raise KitError(f"{directory}: no trained model here (expected {MODEL_FILE})")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise KitError(f"{path}: not a kit model file: {error}") from None

    @classmethod
    def _from_state(cls, state, trust_remote_code=False):
        # the saved task's type (older model files name none: the estimator's own)
        task_type = TASK_TYPES.get(state.get("task_type"), cls.task_type)
        model = cls(task_type(**_known(task_type, state["task"])), ModelArgs(**_known(ModelArgs, state["args"])),
                    TrainArgs(**_known(TrainArgs, state["train_args"])), trust_remote_code=trust_remote_code)
        model.model_id = state.get("model_id")
        return model
