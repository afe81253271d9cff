"""A transformers model with a generative head (answers the label word) or a classification
head, fine-tuned with LoRA (or fully when lora_r == 0)."""

import contextlib
import importlib.util
import pickle
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
)
from transformers.utils import logging as hf_logging

from kit.core.errors import KitError, remote_code_guard
from kit.core.logs import log
from kit.core.settings import HEADS
from kit.engine import loop, losses
from kit.engine.device import (
    available_memory_bytes,
    check_memory,
    cuda_info,
    estimate_peak,
    model_shape,
    require_quantization,
    resolve,
)
from kit.engine.frozen import FrozenBottom
from kit.engine.inference import (
    FALLBACK,
    GENERATE,
    SCORE,
    answer_scores,
    classify_proba,
    generate_labels,
    is_decoder,
    score_labels,
)
from kit.engine.loop import autocast_and_scaler
from kit.engine.prompts import PromptEncoder, answer_ids, end_of_turn, first_tokens_differ
from kit.engine.states import DiskStates, MemoryStates
from kit.models.base import Estimator, Prediction
from kit.models.embedded import base_identity, resolve_model


def _quiet_transformers():
    """Load reports and per-weight progress bars drown the kit's own progress; keep errors."""

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def _device(choice="auto"):
    return "cuda" if cuda_info(choice) else "cpu"


def _weights_dtype(precision, device, full_fine_tune):
    """Frozen weights in half precision on a GPU; fp32 on a CPU (bf16 matmuls are slower than
    fp32 there without AMX; bf16/fp16 then run as autocast). Weights that train stay fp32 (AdamW
    steps round away in bf16, and the fp16 gradient scaler cannot unscale fp16 gradients)."""
    if device == "cpu" or precision == "fp32" or full_fine_tune:
        return torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _supports_sdpa(config):
    """Whether the architecture has an SDPA path (Gemma-2 does not: it soft-caps the logits)."""
    cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    return getattr(cls, "_supports_sdpa", True) if cls is not None else True


class TransformerModel(Estimator):
    kind = "transformer"

    def __init__(self, task, args=None, train_args=None, trust_remote_code=False):
        super().__init__(task, args, train_args, trust_remote_code)
        if self.args.head not in HEADS:
            raise KitError(f"--head {self.args.head!r}: choose one of {', '.join(HEADS)}")
        if self.task.regression and self.args.head != "classify":
            raise KitError(f"--head {self.args.head}: a number task learns a regression head (one output, squared "
                           "error); use --head classify")
        if self.task.several and self.args.head != "classify":
            raise KitError(f"--head {self.args.head}: several label columns are learned by a head with an output "
                           "per column (binary cross-entropy); use --head classify")
        self.path = resolve_model(self.args.model)
        self.model = self.tokenizer = None
        self.loss_log = []

    @property
    def fitted(self):
        return self.model is not None

    @property
    def generates(self):
        return self.args.head == "generate"

    @property
    def answer_tokens(self):
        return getattr(self, "answers", None) if self.generates else None

    def resolve_args(self):
        """Concrete values for the `auto` settings on this device, logged as the run's plan."""
        cuda = cuda_info(self.args.device)
        needs_shape = cuda is not None and self.args.gradient_checkpointing == "auto"
        shape = self._shape() if needs_shape else None
        auto_attention = self.args.attention == "auto"
        self.args, lines = resolve(self.args, shape, cuda)
        if auto_attention and self.args.attention == "sdpa":
            self._prepare_text()
            if not _supports_sdpa(self.config):
                self.args = replace(self.args, attention="eager")
                lines = [line.replace("sdpa attention", "eager attention (no SDPA path for this architecture)")
                         for line in lines]
        why = self._quantize_to_fit(cuda)
        if why:
            self.args = replace(self.args, quantize="4bit")
            lines.append(why)
        if lines:
            log(f"plan ({cuda['name'] if cuda else 'cpu'}): " + "; ".join(lines))
        return self.args

    def _quantize_to_fit(self, cuda):
        """Why 4-bit base weights (QLoRA), when on a GPU the estimate says the unquantized model would
        not fit (a 7B model on a 16 GB T4) and bitsandbytes is there; None otherwise (check_memory
        then refuses in one line, naming what to change)."""
        if (cuda is None or self.args.quantize or not self.args.lora_r     # a full fine-tune cannot train k-bit weights
                or importlib.util.find_spec("bitsandbytes") is None):
            return None
        self._prepare_text()
        shape = self._shape() if self.decoder else None     # encoders are small, and have no causal-LM shape
        if shape is None:
            return None
        parts = estimate_peak(shape, self.args, self.train_args.batch_size, self.task.max_length, True)
        four_bit = estimate_peak(shape, replace(self.args, quantize="4bit"), self.train_args.batch_size,
                                 self.task.max_length, True)
        fits = 0.95 * cuda["total_bytes"]
        if sum(parts.values()) <= fits or sum(four_bit.values()) > fits:   # no need, or no help: check_memory says
            return None
        return (f"4bit base weights (QLoRA): unquantized, the estimated peak {sum(parts.values()) / 2**30:.1f} GB "
                f"would not fit the {cuda['total_bytes'] / 2**30:.1f} GB of {cuda['name']}")

    def _shape(self):
        """The model's parameter counts (built once, on the meta device)."""
        if not hasattr(self, "shape"):
            try:
                self.shape = model_shape(self.path, self.trust_remote_code)
            except Exception as error:   # an architecture the meta-device build does not know
                log(f"memory estimate skipped: {type(error).__name__}: {str(error)[:120]}")
                self.shape = None
        return self.shape

    def check_memory(self, batch_size):
        """Refuse before loading anything when the estimated peak would not fit."""
        shape = self._shape()
        if shape is None or not self.decoder:
            return None
        cuda = cuda_info(self.args.device)
        parts = estimate_peak(shape, self.args, batch_size, self.task.max_length, cuda is not None)
        capacity = cuda["total_bytes"] if cuda else available_memory_bytes()
        return check_memory(parts, capacity, cuda["name"] if cuda else "this machine's free memory")

    # -- building ------------------------------------------------------------------------
    def _prepare_text(self):
        """Config, tokenizer and prompt encoder: cheap, and all that encode() needs, so a CV
        run tokenises every row once before any fold loads weights."""
        if self.tokenizer is not None:
            return

        _quiet_transformers()
        remote = self.trust_remote_code
        config = remote_code_guard(self.args.model, AutoConfig.from_pretrained, self.path, trust_remote_code=remote)
        self.decoder = is_decoder(config)
        if not self.decoder and self.args.head == "generate":
            raise KitError(f"{self.args.model}: an encoder ({config.model_type}) has no generative head; "
                           "use --head classify")
        tokenizer = remote_code_guard(self.args.model, AutoTokenizer.from_pretrained, self.path,
                                       trust_remote_code=remote)
        self.config = config
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer, self.task.prompt(), self.task.max_length, chat=self.decoder)
        if self.args.head == "generate":
            self.answers = answer_ids(tokenizer, self.task.words, self.task.rationale_separator)

    @property
    def uses_rationales(self):
        return self.args.head == "generate"

    def _with_rationale(self, answer, rationale):
        """A training answer: the label word and separator, then the rationale's tokens (at most
        max_length of them) and the turn's end."""
        end = end_of_turn(self.tokenizer)
        tokens = self.tokenizer(rationale, add_special_tokens=False).input_ids[:self.task.max_length] if rationale else []
        return answer + tokens + ([end] if end is not None else [])

    def _load_base(self):
        self._prepare_text()
        if "auto" in (self.args.precision, self.args.attention, self.args.lora_layers,
                      self.args.gradient_checkpointing):
            self.resolve_args()
        device = _device(self.args.device)
        dtype = _weights_dtype(self.args.precision, device, not self.args.lora_r)
        torch.manual_seed(self.train_args.seed)   # the classification head's initial weights
        common = {"trust_remote_code": self.trust_remote_code, "dtype": dtype,
                  "attn_implementation": self.args.attention}
        if self.args.quantize:
            common["quantization_config"] = self._quantization(device)
            common["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else "cpu"}
        if self.args.head == "classify":
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, num_labels=self.task.outputs, **common)
            # The pad token tells the head which position is the last real token.
            model.config.pad_token_id = self.tokenizer.pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(self.path, **common)
        self.device, self.weights_dtype = device, dtype
        return model if self.args.quantize else model.to(device)

    def _quantization(self, device):
        """NF4 with double quantisation (QLoRA), computing in bf16/fp16 on a GPU, fp32 on a CPU."""

        require_quantization(self.args.quantize, device == "cuda")
        compute = torch.float32 if device == "cpu" else (torch.float16 if self.args.precision == "fp16"
                                                         else torch.bfloat16)
        if self.args.quantize == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute)

    def _add_lora(self, model):
        if self.args.quantize:    # norms in fp32, inputs that carry gradients: peft's k-bit recipe
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(self.args.gradient_checkpointing),
                gradient_checkpointing_kwargs={"use_reentrant": False})
        # ChatGLM's output layer is not declared as one, so "all-linear" would take it
        exclude = [r".*\.output_layer"] if any(n.endswith("output_layer") for n, _ in model.named_modules()) else []
        if self.args.lora_layers:
            # LoRA on the top N blocks: exclude the lower blocks' layers by name (peft refuses
            # layers_to_transform together with "all-linear")
            lower = range(max(0, model.config.num_hidden_layers - self.args.lora_layers))
            if len(lower):
                exclude.append(rf".*\.(layers|layer|h|blocks)\.({'|'.join(map(str, lower))})\..*")
        exclude = "|".join(f"({pattern})" for pattern in exclude) or None
        # peft's "all-linear": every linear layer except the output layer / classification head;
        # the SEQ_CLS task type saves the new head with the adapter (modules_to_save)
        config = LoraConfig(r=self.args.lora_r, lora_alpha=self.args.lora_alpha,
                            lora_dropout=self.args.lora_dropout,
                            target_modules=self.args.lora_targets or "all-linear", exclude_modules=exclude,
                            task_type="SEQ_CLS" if self.args.head == "classify" else "CAUSAL_LM")
        model = get_peft_model(model, config)
        for parameter in model.parameters():   # trained weights in fp32 (master weights under autocast)
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
        return model

    # -- the interface -------------------------------------------------------------------
    def encode(self, rows):
        self._prepare_text()
        ids, truncated = self.encoder.encode_all(rows.texts)
        return ids, {"rows": len(ids), "mean_tokens": round(float(np.mean([len(s) for s in ids])), 1),
                     "truncated_rows": truncated}

    def fit(self, rows, checkpoint=None, resume=False, encoded=None, checkpoint_key=None):
        if self.task.few_shot:
            # examples from this fit's training rows only (a CV fold's): the prompt is this model's own,
            # so rows encoded by the caller with the bare instruction are encoded again
            self.task, encoded = self.task.with_examples(rows, self.train_args.seed), None
            self.tokenizer = None
        if self.task.regression:      # standardised targets: the new head starts near the right scale
            self.task = self.task.standardised_on(rows.labels)
        self._prepare_text()
        self.resolve_args()
        self.check_memory(self.train_args.batch_size)
        model = self._load_base()
        if self.args.lora_r:
            model = self._add_lora(model)
        if self.args.gradient_checkpointing:
            # non-reentrant: gradients reach LoRA weights even when the inputs are cached
            # hidden states that need no gradient themselves
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids, stats = encoded if encoded else self.encode(rows)
        # a CV fold's ids are a subset of the run's encoded rows: its own figures
        stats = dict(stats, rows=len(ids), mean_tokens=round(float(np.mean([len(s) for s in ids])), 1))
        log(f"train: {stats['rows']} rows, {stats['mean_tokens']} tokens per row on average, "
            f"{stats['truncated_rows']} truncated to {self.task.max_length}")
        sequences, targets, module = self._training_pairs(model, ids, rows)
        source = self.state_source()
        self.loss_log = loop.fit(module, sequences, targets, self.tokenizer.pad_token_id, self.train_args,
                                  checkpoint=checkpoint, resume=resume, left_pad=self.decoder,
                                  checkpoint_key=checkpoint_key, precision=self.args.precision,
                                  data_parallel=self.data_parallel, state_source=source, on_step=self.on_step)
        self.model = model.eval()
        self.train_stats = {**stats, **_frozen_stats(source.last)}
        self._fitted_now()
        return self

    def state_source(self):
        """Where the frozen lower blocks' states come from (kit/engine/states.py): the disk cache shared
        by every fit and prediction from the same base model, or (--no-state-cache) this call's
        own pass."""
        budget = int(self.train_args.frozen_cache_gb * 2**30)
        if not self.train_args.state_cache:
            return MemoryStates(budget, self.args.frozen_states)
        if not hasattr(self, "base_fingerprint"):   # hashes weight files: once per model, not per predict chunk
            self.base_fingerprint = base_identity(self.args.model)["fingerprint"]
        identity = {"base": self.base_fingerprint, "dtype": str(self.weights_dtype),
                    "quantize": self.args.quantize, "attention": self.args.attention, "device": self.device}
        return DiskStates(identity, self.args.frozen_states, budget)

    def _top_blocks_only(self, ids):
        """With LoRA on the top N blocks the lower blocks are the base model's own, so a
        prediction reads their states from the cache (computing what is missing, once for every
        model that shares them: fold models, sweep entries) and runs the top blocks alone.
        None where that does not hold (full fine-tunes, k-bit bases, encoders) or without the disk
        cache (--no-state-cache, kit serve: the full pass with the prefix KV cache costs less than
        states computed for one prediction and dropped)."""
        layers = self.config.get_text_config().num_hidden_layers
        lora_layers = self.args.lora_layers if isinstance(self.args.lora_layers, int) else 0
        if not (self.train_args.state_cache and self.decoder and self.args.lora_r and 0 < lora_layers < layers
                and not self.args.quantize):
            return None
        split = layers - lora_layers
        source = self.state_source()
        states = source.states(self.model, split, ids)
        if states is None:
            return None
        self.predict_frozen = _frozen_stats(source.last)
        return FrozenBottom(self.model, split, states)

    def _training_pairs(self, model, ids, rows):
        """(token sequences, targets, the loss module): the generative head's answers follow
        their prompts; the classification head's targets are the label indices. With the levers
        (kit/workflows/levers.py: soft pseudo-labels, a teacher's probabilities) each target is a RowTarget
        and the loss the lever-aware module; without them, exactly the plain losses."""
        soft, teacher = rows.soft, rows.teacher
        if self.task.regression:
            targets = [(y - self.task.center) / self.task.spread for y in rows.labels]
            return ids, targets, losses.RegressionLoss(model)
        if self.task.several:
            return ids, [list(flags) for flags in rows.labels], losses.SeveralLabelsLoss(model)
        if self.args.head == "generate":
            targets = [self.answers[label] for label in rows.labels]
            if self.task.rationale_separator is not None:     # label first, then why: scored as before
                targets = [self._with_rationale(t, r) for t, r in zip(targets, rows.rationales or [None] * len(rows))]
            sequences = [s + t for s, t in zip(ids, targets)]
            self.check_levers(soft is not None, teacher is not None)
            if teacher is None:
                return sequences, targets, losses.AnswerLoss(model)
            loss = losses.DistillAnswerLoss(model, [a[0] for a in self.answers], self.train_args.kl_weight,
                                           self.train_args.temperature)
            return sequences, [losses.RowTarget(t, p) for t, p in zip(targets, teacher)], loss
        weights = self._class_weights(rows.labels) if self.train_args.class_weights else None
        if soft is None and teacher is None:
            return ids, list(rows.labels), losses.ClassifyLoss(model, weights)
        labels = [y if s is None else s for y, s in zip(rows.labels, soft or [None] * len(rows))]
        targets = [losses.RowTarget(y, p) for y, p in zip(labels, teacher or [None] * len(rows))]
        kl_weight = self.train_args.kl_weight if teacher is not None else 0.0
        return ids, targets, losses.SoftClassifyLoss(model, weights, kl_weight, self.train_args.temperature)

    def check_zero_shot(self):
        """An instruct LLM answers the spec's prompt with a label word before any training; an
        encoder's classify head (and any classify head) exists only after training."""
        config = remote_code_guard(self.args.model, AutoConfig.from_pretrained, self.path,
                                   trust_remote_code=self.trust_remote_code)
        if not is_decoder(config):
            raise KitError(f"{self.args.model}: an encoder ({config.model_type}) answers through a classify head, "
                           "which exists only after training; it has no zero-shot score (zero-shot needs an "
                           "instruct LLM)")
        if self.args.head != "generate":
            raise KitError(f"{self.args.model}: a classify head exists only after training; zero-shot scores the "
                           "label words (--head generate)")

    def zero_shot(self):
        """The base model with no adapter and no training, predicting by P(label word)."""
        self.check_zero_shot()
        self._prepare_text()
        self.resolve_args()
        self.model = self._load_base().eval()
        self._fitted_now()
        return self

    def check_levers(self, soft, teacher):
        """The generate head learns answer tokens: no soft targets; it distils over the label
        words' first tokens, so they must differ."""
        if self.args.head != "generate":
            return
        if soft:
            raise KitError("--pseudo-soft: soft targets need --head classify; with --head generate use hard "
                           "pseudo-labels (drop --pseudo-soft)")
        if not teacher:
            return
        self._prepare_text()          # the answers' token ids
        if not first_tokens_differ(self.answers):
            raise KitError(f"--teacher with --head generate: the label words {self.task.words} share their first "
                           "token, so one position cannot hold the teacher's distribution; use --head classify "
                           "or [task] label_words that start differently")

    def _class_weights(self, labels):
        counts = np.bincount(labels, minlength=len(self.task.words)).astype(float)
        weights = len(labels) / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def predict(self, rows, mode="score", encoded=None):
        self._require_fitted("predict")
        ids, stats = encoded if encoded and not self.task.examples else self.encode(rows)
        # the trained weights (LoRA, the classification head) are fp32 beside bf16/fp16 frozen
        # weights on a GPU: prediction runs under the autocast training ran under
        autocast, _ = autocast_and_scaler(self.args.precision, self.model.device.type)
        with autocast():
            return self._predict(ids, stats, mode)

    def _predict(self, ids, stats, mode):
        pad, size = self.tokenizer.pad_token_id, self.args.predict_batch_size
        self.predict_frozen = {}
        if self.args.head == "classify":
            if mode == GENERATE:
                log("predict: a classify-head model has no answers to generate; using its label probabilities")
            with self._inputs_maker(ids) as inputs:
                probs = classify_proba(self.model, ids, pad, size, self.args.prefix_cache, inputs=inputs,
                                       link=self.task.link)
            if self.task.regression:  # the number, as the one column of the prediction's outputs
                values = self.task.center + self.task.spread * probs
                return Prediction(values, ["regression"] * len(ids), stats={**stats, **self.predict_frozen})
            return Prediction(probs, ["classify"] * len(ids), stats={**stats, **self.predict_frozen})
        if mode == SCORE:
            return Prediction(self._label_scores(ids), [SCORE] * len(ids), stats={**stats, **self.predict_frozen})
        probs, parsed, raw = generate_labels(self.model, self.tokenizer, ids, self.answers, self.task.words, pad, size,
                                             separator=self.task.rationale_separator)
        if not first_tokens_differ(self.answers):   # the fallback needs whole-answer scores then
            probs = self._label_scores(ids)
        decided = [GENERATE if p >= 0 else FALLBACK for p in parsed]
        stats = {**stats, "fallback_rows": decided.count(FALLBACK)}
        return Prediction(probs, decided, answers=raw, parsed=parsed, stats=stats)

    def _label_scores(self, ids):
        """One pass over the label words' first tokens when they differ (the fast path), whole
        answers otherwise."""
        pad, size = self.tokenizer.pad_token_id, self.args.predict_batch_size
        if first_tokens_differ(self.answers):
            firsts = [a[0] for a in self.answers]
            with self._inputs_maker(ids) as inputs:
                return score_labels(self.model, ids, firsts, pad, size, self.args.prefix_cache, inputs=inputs)
        return answer_scores(self.model, ids, self.answers, pad, size)

    @contextlib.contextmanager
    def _inputs_maker(self, ids):
        """inputs(index, rows) for the prediction batches: from the cached lower states through the
        top blocks where that holds, else None (the full pass with the prefix KV cache)."""
        bottom = self._top_blocks_only(ids)
        if bottom is None:
            yield None
            return
        pad = self.tokenizer.pad_token_id
        with bottom:
            yield lambda index, rows: bottom.inputs(index, pad, self.model.device)

    def save(self, directory):
        self._require_fitted("save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / ("adapter" if self.args.lora_r else "model")
        self.model.save_pretrained(weights)
        self.tokenizer.save_pretrained(weights)
        self._write_model_file(directory, base_path=self.path, **self.learned_state())

    @classmethod
    def load(cls, directory, trust_remote_code=False):
        directory = Path(directory)
        state = cls.read_model_file(directory)
        model = cls._from_state(state, trust_remote_code)
        # attention is chosen again for this machine (flash-attn may be missing here)
        model.args = replace(model.args, attention="auto")
        weights = saved_weights(directory, model.args)      # before anything opens a weight file
        try:
            if model.args.lora_r:
                base = model._load_base()
                model.model = PeftModel.from_pretrained(base, weights)
                if not model.args.quantize:          # k-bit weights are placed at load time
                    model.model = model.model.to(model.device)
                model.model.eval()
            else:
                model.path = str(weights)
                model.model = model._load_base().eval()
        except pickle.UnpicklingError:       # a base model's pickled .bin that torch's weights_only load refuses
            raise KitError(f"{directory}: its base model {model.path} has pickled weights that cannot be loaded "
                           "safely; only safetensors weights are loaded") from None
        return model


# what a saved folder may hold instead of safetensors: pickles, which can run code when loaded
_PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def saved_weights(directory, args):
    """The folder of a saved model's weights (adapter/ for LoRA, model/ for a full fine-tune),
    refused in one line unless it holds safetensors weights: a run folder from someone else may
    hold pytorch_model.bin or adapter_model.bin, and nothing in a run folder is unpickled."""
    weights = Path(directory) / ("adapter" if args.lora_r else "model")
    names = sorted(p.name for p in weights.iterdir() if p.is_file()) if weights.is_dir() else []
    if any(name.endswith(".safetensors") for name in names):
        return weights
    pickled = [name for name in names if name.endswith(_PICKLED_WEIGHTS)]
    if pickled:
        raise KitError(f"{weights}: holds {pickled[0]} and no safetensors weights; only safetensors weights are "
                       "loaded from a run folder (a .bin is a pickle, which can run code)")
    raise KitError(f"{weights}: no safetensors weights; not a model the kit saved (retrain it)")


def _frozen_stats(counts):
    """The frozen pass's figures as the reports show them (nothing when it did not run)."""
    if not counts:
        return {}
    return {"frozen_rows_reused": counts["reused"], "frozen_rows_computed": counts["computed"],
            "frozen_seconds": counts["seconds"]}
