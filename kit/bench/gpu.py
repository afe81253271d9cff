"""`kit bench-gpu`: the kit's GPU road against the usual way, in one run on one device.

For each model configuration (configs/qwen2.5-*.json: the real Qwen2.5 shapes) a model with
random weights is built on the device and saved with a tokenizer to a temporary directory;
speed and memory do not depend on the weight values. Then, on that directory:

- training: kit train against transformers.Trainer + peft at identical settings (LoRA r16 on
  every linear layer, batch, max length, precision, steps, and the very same token sequences),
  in bf16 and with 4-bit (QLoRA) base weights;
- prediction: kit score and generate modes against the seeds' per-row `model.generate` loop and a
  batched `model.generate` (left padding, batch 32), on rows of the paper data.

Everything runs on the CPU too (`--device cpu --config configs/tiny-qwen2.json`), so the GPU run
is the same command with its defaults.
"""
import contextlib
import dataclasses
import gc
import importlib.metadata
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from kit.bench.cpu import matmul_peak, peak_rss_mb, reset_peak_rss
from kit.core.errors import KitError
from kit.core.logs import log
from kit.core.settings import ModelArgs, TrainArgs
from kit.evaluation.parse import parse_answer
from kit.inputs.data import Rows, read_csv, require_columns
from kit.inputs.tasks import Task
from kit.models.embedded import resolve_model
from kit.models.registry import make_model

INSTRUCTION = "Is this paper from the medical field? Answer 1 or 0."
WORDS = ["0", "1"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GPU_CONFIGS = [str(CONFIGS / f"qwen2.5-{size}.json") for size in ("0.5b", "1.5b", "7b")]
CPU_CONFIG = str(CONFIGS / "tiny-qwen2.json")
DATA = "data/testB.csv"      # the demo's papers; the README's figures: ../shared/data/paper/testB.csv
LR = 2e-4
# Dense bf16 tensor-core peaks in TFLOP/s from the vendors' sheets (no sparsity), matched in
# order against the device name (so "h100 pcie" before "h100", "l40s" before "l4").
GPU_PEAK_TFLOPS = [("h100 pcie", 756), ("h100 nvl", 835), ("gh200", 989), ("h100", 989), ("h200", 989),
                   ("a100", 312), ("l40s", 362), ("l4", 121), ("t4", 65), ("4090", 165)]
GOAL_TRAIN, GOAL_SCORE, GOAL_QLORA_GB = 1.5, 30.0, 20.0
# a keyword rule gives the training rows labels (the paper test split has none); the labels
# only need to be the same for both trainers
MEDICAL = ("patient", "clinical", "disease", "medical", "hospital", "cancer", "therapy", "treatment")


# -- the device ------------------------------------------------------------------------------
def pick_device(choice):
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise KitError("--device cuda: torch sees no CUDA device here (use --device cpu)")
    return choice


def half_dtype(device):
    """The precision both trainers use: bf16 on a GPU that has it, fp16 on older ones, fp32 on CPUs."""
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = "cpu"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({torch.get_num_threads()} threads)"


def peak_flops(device, given_tflops=None):
    """(FLOP/s, where the figure comes from): --peak-tflops, the vendor's sheet, or measured."""
    if given_tflops:
        return given_tflops * 1e12, "--peak-tflops"
    if device == "cpu":
        return matmul_peak(torch.float32), "fp32 matmul, measured"
    name = torch.cuda.get_device_name().lower()
    for key, tflops in GPU_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"dense {str(half_dtype(device))[6:]} peak of {key.upper()}"
    return gpu_matmul_peak(), f"{str(half_dtype(device))[6:]} matmul, measured (unknown GPU)"


def gpu_matmul_peak(seconds=1.0, n=8192):
    a = torch.randn(n, n, dtype=half_dtype("cuda"), device="cuda")
    a @ a
    torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        runs += 1
        torch.cuda.synchronize()
    return 2 * n ** 3 * runs / (time.perf_counter() - start)


def measure(fn, device):
    """(result, seconds, peak MB): CUDA's peak allocated memory on a GPU, peak RSS on a CPU."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        left = torch.cuda.memory_allocated() / 2**20
        if left > 256:     # the peak starts from what is allocated: an earlier row's leftovers count
            log(f"bench-gpu: {left:.0f} MB still allocated from earlier rows count in this row's peak")
    reset_peak_rss()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    return out, seconds, peak


def quiet():
    """Weight-writing progress bars and load reports would drown the table."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def versions():
    names = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")
    out = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def has_bitsandbytes():
    return "bitsandbytes" in versions()


# -- the model -------------------------------------------------------------------------------
def load_tokenizer(directory=None):
    """The embedded SmolLM2 tokenizer (ids < 49152: valid in every Qwen2.5 vocabulary), or --tokenizer."""
    if directory is None:
        try:
            directory = resolve_model("smollm2")
        except KitError as error:
            raise KitError(f"no tokenizer: {error}; or pass --tokenizer DIR (a local tokenizer directory "
                           "whose ids fit the configs' vocabulary, such as a Qwen2.5 or SmolLM2 one)") from None
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_config(path):
    values = json.loads(Path(path).read_text())
    return AutoConfig.for_model(values.pop("model_type"), **values)


def build_model(config_path, directory, device, tokenizer):
    """A random-weight model of the config, made directly on the device in the working precision
    (a 7B model never passes through CPU memory), saved with the tokenizer. Returns the
    parameters in the matmul path (all but the input embedding) and the model's size."""
    config = read_config(config_path)
    if len(tokenizer) > config.vocab_size:
        raise KitError(f"{config_path}: the tokenizer has {len(tokenizer)} tokens, over the vocabulary of "
                       f"{config.vocab_size}; use --tokenizer with a smaller one")
    # the kit's answers end with the tokenizer's end-of-turn token: generation must stop at it
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=half_dtype(device))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    # tied embeddings are counted once by parameters(): add the output layer's matmul back
    matmul = total - embedding + (embedding if config.tie_word_embeddings else 0)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return matmul, total


def kit_model(model_dir, max_length, device, steps=1, batch=1, **args):
    return make_model(Task(INSTRUCTION, WORDS, max_length),
                      ModelArgs(model=model_dir, head="generate", lora_r=16, lora_alpha=32, lora_layers=0, device=device,
                                **args),
                      TrainArgs(lr=LR, max_steps=steps, batch_size=batch, warmup=0, checkpoint_every=0))


# -- the data --------------------------------------------------------------------------------
def read_inputs(path, n):
    frame = read_csv(path)
    require_columns(frame, ["title", "abstract"], path, "the paper data")
    frame = frame.head(n)
    return [f"title:{t},abstract:{a}" for t, a in zip(frame["title"], frame["abstract"])]


def filled_texts(texts, n, max_length):
    """n training inputs, each running on into the next rows' text so that every sequence is cut
    at max_length: batch x max_length tokens exactly, the shape the memory goal names."""
    out = []
    for i in range(n):
        text, j = texts[i % len(texts)], i + 1
        while len(text) < 8 * max_length:          # about 4 characters a token: twice enough
            text += " " + texts[j % len(texts)]
            j += 1
        out.append(text)
    return out


def keyword_label(text):
    return int(any(word in text.lower() for word in MEDICAL))


# -- training --------------------------------------------------------------------------------
class StepClock:
    """When each training step starts, and when the last one ends. The first step pays one-time
    costs (CUDA kernels and handles, allocator growth, lazy imports) that differ between the
    trainers, so speeds count the steps after it: every step holds the same number of tokens
    (the inputs are filled to max_length), so that is fair to both."""

    def __init__(self, device):
        self.device, self.starts, self.end = device, [], None

    def now(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step(self, *_):
        self.starts.append(self.now())

    def stop(self):
        self.end = self.now()

    def timing(self, steps, whole):
        """(seconds, steps timed): the steps after the first, or everything when there is one."""
        if len(self.starts) >= 2 and self.end is not None:
            return self.end - self.starts[1], len(self.starts) - 1
        return whole, steps


def train_row(name, run, tokens_per_row, batch, flops_per_token, peak_flops_s):
    """Speeds over the timed steps (all but the first); losses of the first step and the mean
    of the last three (one step's loss is noisy)."""
    seconds, rows, losses = run["seconds"], run["steps"] * batch, run["losses"]
    tokens = rows * tokens_per_row
    tail = losses[-3:]
    return {"path": name, "tokens_per_s": tokens / seconds, "samples_per_s": rows / seconds, "seconds": seconds,
            "timed_steps": run["steps"],
            "loss_first": float(losses[0]), "loss_end": float(np.mean(tail)),
            "mfu": flops_per_token * tokens / seconds / peak_flops_s, "peak_mb": run["peak"],
            "losses": [float(x) for x in losses], "note": run["note"]}


def train_kit(model_dir, rows, steps, batch, max_length, device, quantize=None):
    """Returns (kit model, {seconds, peak, losses}); the model's resolved args and encoded rows
    set the Trainer's settings."""
    extra = {"quantize": quantize} if quantize else {}
    kit = kit_model(model_dir, max_length, device, steps, batch, **extra)
    encoded = kit.encode(rows)
    clock = StepClock(device)
    # the loop calls on_step as each step begins, and with the step count once the last one ends
    kit.on_step = lambda step: clock.stop() if step == steps else clock.step()
    _, whole, peak = measure(lambda: kit.fit(rows, encoded=encoded), device)
    seconds, timed = clock.timing(steps, whole)
    note = "" if clock.starts else "time includes loading: the training loop was not reached"
    return kit, encoded[0], {"seconds": seconds, "steps": timed, "peak": peak, "losses": kit.loss_log, "note": note}


def trainer_features(ids, answers, labels):
    """The kit's exact token sequences, loss on the answer tokens only (prompt labels -100)."""
    return [{"input_ids": s + answers[y], "attention_mask": [1] * (len(s) + len(answers[y])),
             "labels": [-100] * len(s) + answers[y]} for s, y in zip(ids, labels)]


def trainer_base(model_dir, device, qlora, checkpointing):
    """The base as the usual recipes load it: the half-precision checkpoint, or NF4 with double
    quantisation plus peft's k-bit preparation (norms in fp32, gradient-ready inputs)."""
    dtype = half_dtype(device)
    if not qlora:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, quantization_config=quantization,
                                                 device_map={"": 0 if device == "cuda" else "cpu"})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def train_trainer(model_dir, features, tokenizer, steps, batch, device, qlora=False, checkpointing=False):
    """transformers.Trainer + peft: LoRA r16 on all linear layers, the kit's lr, schedule
    (linear, no warm-up), clipping (1.0), precision and gradient checkpointing. The optimiser is
    the Trainer's default (fused AdamW), the usual way."""
    clock = StepClock(device)

    class Clocked(TrainerCallback):
        def on_step_begin(self, *_, **__):
            clock.step()

        def on_step_end(self, *_, **__):
            clock.stop()
    torch.manual_seed(0)
    model = get_peft_model(trainer_base(model_dir, device, qlora, checkpointing),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    dtype = half_dtype(device)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                                 max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
                                 disable_tqdm=True, seed=0, use_cpu=device == "cpu",
                                 bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
                                 gradient_checkpointing=checkpointing and not qlora,
                                 gradient_checkpointing_kwargs={"use_reentrant": False}, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=features,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), callbacks=[Clocked()])
        trainer.remove_callback(PrinterCallback)      # it prints every step's log dict
        _, whole, peak = measure(trainer.train, device)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    del trainer, model
    seconds, timed = clock.timing(steps, whole)
    return {"seconds": seconds, "steps": timed, "peak": peak, "losses": losses, "note": ""}


def train_pair(model_dir, rows, opts, qlora, per_token, peak_flops_s):
    """kit train, then the Trainer on the kit's token sequences with the settings the kit resolved."""
    device, steps, batch, max_length = opts["device"], opts["steps"], opts["batch_size"], opts["max_length"]
    suffix = ", QLoRA 4-bit" if qlora else ""
    log(f"bench-gpu: kit train{suffix} ...")
    kit, ids, kit_run = train_kit(model_dir, rows, steps, batch, max_length, device, "4bit" if qlora else None)
    tokens_per_row = float(np.mean([len(s) + len(kit.answers[y]) for s, y in zip(ids, rows.labels)]))
    checkpointing = bool(kit.args.gradient_checkpointing)
    features = trainer_features(ids, kit.answers, rows.labels)
    tokenizer, settings = kit.tokenizer, {"gradient_checkpointing": checkpointing, "attention": kit.args.attention}
    log(f"bench-gpu: transformers.Trainer + peft{suffix} ...")
    trainer_run = train_trainer(model_dir, features, tokenizer, steps, batch, device, qlora, checkpointing)
    return [{**train_row(name, run, tokens_per_row, batch, per_token, peak_flops_s), **settings,
             "tokens_per_row": tokens_per_row}
            for name, run in ((f"transformers.Trainer + peft{suffix}", trainer_run), (f"kit train{suffix}", kit_run))]


def bench_training(model_dir, texts, matmul_params, opts, peak_flops_s):
    """kit and Trainer rows, bf16 then 4-bit; each pair on the same token sequences."""
    device, max_length = opts["device"], opts["max_length"]
    n = opts["steps"] * opts["batch_size"]    # one epoch: both trainers see every row exactly once
    inputs = filled_texts(texts, n, max_length)
    rows = Rows([str(i) for i in range(n)], inputs, [keyword_label(t) for t in inputs])
    # LoRA on a frozen base: forward 2N, backward through the activations 2N, no weight
    # gradients for the frozen matmuls (full training would be 6N); LoRA's own FLOPs are
    # negligible and recomputation under gradient checkpointing is not counted (model FLOPs)
    per_token = 4 * matmul_params
    out, skipped = [], []
    for qlora in (False, True):
        suffix = ", QLoRA 4-bit" if qlora else ""
        if qlora and not opts["qlora"]:
            continue
        if qlora and not has_bitsandbytes():
            skipped.append("QLoRA rows skipped: bitsandbytes is not installed (pip install bitsandbytes)")
            continue
        if qlora and "quantize" not in {f.name for f in dataclasses.fields(ModelArgs)}:
            skipped.append("QLoRA rows skipped: this kit's ModelArgs has no 'quantize' field")
            continue
        try:
            out += train_pair(model_dir, rows, opts, qlora, per_token, peak_flops_s)
        except (KitError, torch.cuda.OutOfMemoryError) as error:
            # a refusal or out-of-memory is a result too (7B in bf16 on a small GPU): keep going
            first_line = (str(error).splitlines() or [""])[0][:200]
            skipped.append(f"training{suffix} failed: {type(error).__name__}: {first_line}")
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    return out, skipped


# -- prediction ------------------------------------------------------------------------------
def seed_messages(text):
    return [{"role": "user", "content": f"{INSTRUCTION}\n{text}"}]


def per_row_loop(model, tokenizer, texts, new_tokens):
    """The seeds' way: one row at a time, chat template, greedy generate, parse the answer."""
    labels, generated = [], 0
    with torch.no_grad():
        for text in texts:
            batch = tokenizer.apply_chat_template(seed_messages(text), add_generation_prompt=True, return_dict=True,
                                                  return_tensors="pt").to(model.device)
            out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            answer = out[0, batch["input_ids"].shape[1]:]
            generated += len(answer)
            labels.append(parse_answer(tokenizer.decode(answer, skip_special_tokens=True), WORDS))
    return labels, generated


def batched_generate(model, tokenizer, texts, new_tokens, batch_size=32):
    """The usual batched way: chat template, left padding, greedy generate, rows in file order."""
    labels, generated, side = [], 0, tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                prompts = [tokenizer.apply_chat_template(seed_messages(t), add_generation_prompt=True, tokenize=False)
                           for t in texts[start:start + batch_size]]
                batch = tokenizer(prompts, padding=True, add_special_tokens=False, return_tensors="pt").to(model.device)
                out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
                answers = out[:, batch["input_ids"].shape[1]:]
                generated += int((answers != tokenizer.pad_token_id).sum())
                labels += [parse_answer(a, WORDS) for a in tokenizer.batch_decode(answers, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return labels, generated


def truncated_inputs(kit, texts):
    """The seeds' loops get each input cut to the kit's token budget for it, so no path reads
    more of a row than the kit does."""
    room = kit.task.max_length - len(kit.encoder.prefix) - len(kit.encoder.tail)
    tok = kit.tokenizer
    return [tok.decode(tok(t, add_special_tokens=False).input_ids[:room]) for t in texts]


def loop_subset(texts, n):
    """Rows spread evenly over the set: the per-row loop's rate without running all of it."""
    if n >= len(texts):
        return texts
    return [texts[i] for i in np.linspace(0, len(texts) - 1, n).round().astype(int)]


def bench_prediction(model_dir, texts, opts):
    device, new_tokens = opts["device"], opts["new_tokens"]
    kit = kit_model(model_dir, opts["max_length"], device)
    # the untrained base stands in for a trained model: prediction speed does not depend on the weights
    kit.model = kit._load_base().eval()
    kit._fitted_now()
    seeds = truncated_inputs(kit, texts)
    looped = loop_subset(seeds, opts["loop_rows"])
    rows = Rows([str(i) for i in range(len(texts))], texts)
    paths = [
        (f"seeds: per-row chat + generate ({new_tokens} new)", len(looped),
         lambda: per_row_loop(kit.model, kit.tokenizer, looped, new_tokens)),
        (f"batched generate (left pad, 32, {new_tokens} new)", len(seeds),
         lambda: batched_generate(kit.model, kit.tokenizer, seeds, new_tokens)),
        ("kit predict --mode generate", len(texts), lambda: kit.predict(rows, "generate")),
        ("kit predict --mode score", len(texts), lambda: kit.predict(rows, "score")),
    ]
    out = []
    for name, n, fn in paths:
        log(f"bench-gpu: {name} on {n} rows ...")
        result, seconds, peak = measure(fn, device)
        note = (f"{result[1] / n:.1f} new tokens/row" if isinstance(result, tuple)
                else f"{result.stats.get('mean_tokens', 0)} prompt tokens/row")
        out.append({"path": name, "rows": n, "rows_per_s": n / seconds, "seconds": seconds, "peak_mb": peak,
                    "note": note})
    return out


# -- the report ------------------------------------------------------------------------------
def ratios_and_goals(name, train, predict, opts):
    by = {r["path"]: r for r in train}
    ratios, goals = {}, []
    trainer, kit = by.get("transformers.Trainer + peft"), by.get("kit train")
    if trainer and kit:
        ratios["train_tokens_per_s"] = kit["tokens_per_s"] / trainer["tokens_per_s"]
        gap = abs(kit["loss_end"] - trainer["loss_end"]) / max(trainer["loss_end"], 1e-9)
        met = ratios["train_tokens_per_s"] >= GOAL_TRAIN and gap <= 0.05
        goals.append(f"training >= {GOAL_TRAIN}x the Trainer's tokens/s at equal loss: "
                     f"{ratios['train_tokens_per_s']:.2f}x, loss@end {kit['loss_end']:.3f} vs "
                     f"{trainer['loss_end']:.3f} ({100 * gap:.1f}% apart) -> {'met' if met else 'NOT met'}")
    loop, score = predict[0], predict[-1]
    ratios["score_rows_per_s"] = score["rows_per_s"] / loop["rows_per_s"]
    goals.append(f"score-mode prediction >= {GOAL_SCORE:.0f}x the per-row loop: {ratios['score_rows_per_s']:.1f}x "
                 f"-> {'met' if ratios['score_rows_per_s'] >= GOAL_SCORE else 'NOT met'}")
    goals.append(qlora_goal(name, by, opts))
    return ratios, goals


def qlora_goal(name, by, opts):
    head = f"Qwen2.5-7B 4-bit, batch 8 x 512 tokens, under {GOAL_QLORA_GB:.0f} GB peak"
    kit = by.get("kit train, QLoRA 4-bit")
    shape_ok = "7b" in name.lower() and opts["device"] == "cuda" and opts["batch_size"] == 8 \
        and opts["max_length"] == 512
    if not shape_ok or kit is None:
        return f"{head}: not measured here (needs qwen2.5-7b on cuda, QLoRA rows, --batch-size 8 --max-length 512)"
    gb = kit["peak_mb"] / 1024
    return f"{head}: {gb:.1f} GB -> {'met' if gb < GOAL_QLORA_GB else 'NOT met'}"


def print_config_report(result, opts):
    print(f"\n== {result['config']}: {result['params'] / 1e6:.1f}M parameters (random weights), "
          f"{str(half_dtype(opts['device']))[6:]}")
    train = result["train"]
    if train:
        first = train[0]
        timed = f"speeds over steps 2-{opts['steps']}" if opts["steps"] > 1 else "one step, timed whole"
        print(f"training: LoRA r16 alpha 32 on all linear layers, batch {opts['batch_size']}, {opts['steps']} steps "
              f"({timed}), "
              f"{first['tokens_per_row']:.0f} tokens/row (inputs filled to max_length {opts['max_length']}), "
              f"gradient checkpointing {'on' if first['gradient_checkpointing'] else 'off'} (both), "
              f"kit attention {first['attention']}")
        print(f"{'training path':<38} {'tokens/s':>9} {'samples/s':>9} {'x Trainer':>9} {'loss@1':>7} "
              f"{'loss@end':>8} {'MFU':>6} {'peak MB':>8}")
        for r in train:
            base = next(t for t in train if t["path"] == r["path"].replace("kit train", "transformers.Trainer + peft"))
            print(f"{r['path']:<38} {r['tokens_per_s']:9.0f} {r['samples_per_s']:9.2f} "
                  f"{r['tokens_per_s'] / base['tokens_per_s']:9.2f} {r['loss_first']:7.3f} {r['loss_end']:8.3f} "
                  f"{100 * r['mfu']:5.1f}% {r['peak_mb']:8.0f}  {r['note']}")
    for line in result["skipped"]:
        print(f"  {line}")
    loop = result["predict"][0]["rows_per_s"]
    print(f"\n{'prediction path':<44} {'rows':>5} {'rows/s':>8} {'x loop':>7} {'peak MB':>8}  note")
    for r in result["predict"]:
        print(f"{r['path']:<44} {r['rows']:5d} {r['rows_per_s']:8.2f} {r['rows_per_s'] / loop:7.2f} "
              f"{r['peak_mb']:8.0f}  {r['note']}")
    print("\ngoals (issue 'One GPU, done right'):")
    for line in result["goals"]:
        print(f"  {line}")


def defaults(device, steps, batch_size, rows, loop_rows):
    """GPU: 20 steps of 8 rows, 2000 rows to predict (the per-row loop on 200 of them);
    CPU: a dry run small enough for two cores."""
    gpu = device == "cuda"
    steps = steps or (20 if gpu else 3)
    rows = rows or (2000 if gpu else 32)
    return {"steps": steps, "batch_size": batch_size or (8 if gpu else 4), "rows": rows,
            "loop_rows": min(rows, loop_rows or (200 if gpu else rows))}


def run_bench_gpu(configs=None, device="auto", steps=None, batch_size=None, max_length=512, rows=None,
                  loop_rows=None, data=DATA, tokenizer=None, peak_tflops=None, new_tokens=8, qlora=True,
                  out=None):
    """Every figure for every config, printed and returned (and written to `out` as JSON)."""
    device = pick_device(device)
    configs = list(configs or (GPU_CONFIGS if device == "cuda" else [CPU_CONFIG]))
    opts = {"device": device, "max_length": max_length, "new_tokens": new_tokens, "qlora": qlora,
            **defaults(device, steps, batch_size, rows, loop_rows)}
    quiet()
    tok = load_tokenizer(tokenizer)
    texts = read_inputs(data, opts["rows"])
    flops, source = peak_flops(device, peak_tflops)
    report = {"device": device_name(device), "versions": versions(), "peak_tflops": flops / 1e12,
              "peak_source": source, "data": data, "options": opts, "configs": []}
    print(f"device: {report['device']}; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"peak: {flops / 1e12:.3g} TFLOP/s ({source}); {len(texts)} rows of {data}")
    for config in configs:
        result = bench_config(config, texts, tok, opts, flops)
        report["configs"].append(result)
        print_config_report(result, opts)
    if out:
        Path(out).write_text(json.dumps(report, indent=2, default=str))
    return report


def bench_config(config, texts, tok, opts, flops):
    name = Path(config).stem
    with tempfile.TemporaryDirectory(prefix=f"bench-gpu-{name}-") as directory:
        log(f"bench-gpu: building {name} with random weights in {directory} ...")
        matmul, total = build_model(config, directory, opts["device"], tok)
        train, skipped = bench_training(directory, texts, matmul, opts, flops)
        predict = bench_prediction(directory, texts, opts)
    ratios, goals = ratios_and_goals(name, train, predict, opts)
    return {"config": name, "params": total, "matmul_params": matmul, "train": train, "skipped": skipped,
            "predict": predict, "ratios": ratios, "goals": goals}


