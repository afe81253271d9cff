"""The interface every estimator follows (scikit-learn's lesson): `fit(rows) -> self`,
`predict(rows, mode) -> Prediction`, `save(dir)`, `load(dir)`. CV, predict, ensembles and the
benchmark call only these, so they never branch on the kind of model."""
import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import KitError

EMBEDDED_LLM = "smollm2"
EMBEDDED_ENCODER = "minilm"
TFIDF = "tfidf"
HEADS = ("classify", "generate")
FROZEN_STATES = ("fp16", "fp32", "int8")   # how the frozen lower blocks' states are computed and kept
MODEL_FILE = "kit_model.json"     # what every saved estimator writes: its kind, task and settings


class NotFittedError(KitError):
    """predict() or save() before fit()."""


@dataclass
class Task:
    """What an estimator needs from the spec, saved with it so a model folder is self-contained."""
    instruction: str
    words: list               # label words, in label order
    max_length: int = 256
    few_shot: int = 0         # k labelled examples in the prompt, drawn by fit from its training rows
    examples: list = None     # what fit drew: [input text, label word] pairs, saved with the model

    @classmethod
    def from_spec(cls, spec, max_length=None):
        return cls(spec.instruction, [spec.label_words[label] for label in spec.labels],
                   max_length or spec.max_length, getattr(spec, "few_shot", 0))

    def prompt(self):
        """The instruction the model reads: with few-shot examples, followed by them."""
        if not self.examples:
            return self.instruction
        shown = "\n\n".join(f"Input: {text}\nAnswer: {word}" for text, word in self.examples)
        return f"{self.instruction}\n\nExamples:\n\n{shown}"

    def with_examples(self, rows, seed):
        """A copy holding few_shot examples drawn from these (training) rows: labels taken in
        turn so every label is shown, rows at random (seeded), each text cut to EXAMPLE_CHARS."""
        from dataclasses import replace
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


EXAMPLE_CHARS = 300       # a few-shot example's input, cut: k long abstracts would crowd out the row


def _cut(text):
    text = " ".join(str(text).split())
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS].rsplit(" ", 1)[0] + " ..."


@dataclass
class Prediction:
    probs: np.ndarray         # (rows, labels)
    decided: list             # per row: "score", "generate", "fallback", "classify" or "tfidf"
    answers: list = None      # generate mode: the raw generated text per row
    parsed: np.ndarray = None  # generate mode: the label index each answer parsed to, -1 if none
    stats: dict = field(default_factory=dict)


@dataclass
class ModelArgs:
    model: str = EMBEDDED_LLM
    head: str = "classify"
    lora_r: int = 16          # 0: full fine-tune
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list = None   # None: every linear layer inside the transformer blocks
    lora_layers: object = "auto"   # N > 0: LoRA on the top N blocks only (the lower ones are computed
                                   # once); 0: every block; auto: 4 on a CPU, 0 on a GPU (kit/device.py)
    precision: str = "auto"        # bf16 | fp16 (autocast + gradient scaler) | fp32 | auto
    gradient_checkpointing: object = "auto"   # True | False | auto: on for > 1B parameters on a GPU
    attention: str = "auto"        # sdpa | eager | flash_attention_2 | auto
    quantize: str = None           # 4bit | 8bit: QLoRA through bitsandbytes
    predict_batch_size: int = 32
    prefix_cache: bool = True
    frozen_states: str = "fp16"    # the frozen lower blocks' states (LoRA on the top blocks): fp16 (an fp32
                                   # pass, kept in half precision), fp32, or int8 (CPU: int8 lower blocks)


# Settings that change how fast a model trains or predicts, never what it learns: not part of a
# run's key (eager and SDPA attention compute the same function).
RUNTIME_ARGS_MODEL = ("predict_batch_size", "prefix_cache", "attention")


def _known(cls, values):
    """Only the fields cls has: a key a model file adds (say, trust_remote_code) is ignored,
    never applied."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


class Estimator:
    """Base class: holds the task and arguments, checks fitted-ness, writes the model file."""
    kind = None
    task_type = Task          # what the saved "task" holds (keyword estimators keep more)
    data_parallel = True      # under several ranks, fit shares each batch (False: this rank alone)

    def __init__(self, task, args=None, train_args=None, trust_remote_code=False):
        from ..train import TrainArgs
        self.task = task
        self.args = args or ModelArgs()
        self.train_args = train_args or TrainArgs()
        self.trust_remote_code = trust_remote_code   # from the current command line only, never saved
        self.model_id = None                          # a fresh id per fit: predict progress keys on it

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
                 "args": asdict(self.args), "train_args": asdict(self.train_args), **extra}
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
        from ..train import TrainArgs
        model = cls(cls.task_type(**_known(cls.task_type, state["task"])), ModelArgs(**_known(ModelArgs, state["args"])),
                    TrainArgs(**_known(TrainArgs, state["train_args"])), trust_remote_code=trust_remote_code)
        model.model_id = state.get("model_id")
        return model
