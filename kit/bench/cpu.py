"""`kit bench`: the kit's predict and train paths against the usual way, in one run.

Prediction: (a) the seeds' naive loop (one row at a time, chat template with its default system
message, generate at low temperature, parse), (b) kit generate mode, (c) kit score mode, and
one ablation row per optimisation switched off. Training: kit train against a plain
transformers.Trainer + peft on the seeds' chat prompt at the same LoRA settings, batch size and
steps. Also model load times, the machine's matmul peak, achieved FLOP/s and peak memory.
Figures are rough FLOP estimates (2 x non-embedding parameters x tokens forward, plus the output
layer where logits are computed; LoRA training about 2x forward), good for ratios.
"""
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from kit.core.errors import KitError
from kit.core.logs import log
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine.architecture import block_list
from kit.engine.device import cuda_info, resolve
from kit.engine.inference import generate_labels, score_labels, shared_prefix_length
from kit.engine.states import BATCH_SIZE, DiskStates, lower_pass
from kit.evaluation.parse import parse_answer
from kit.inputs.data import Rows, load_rows
from kit.inputs.tasks import Task
from kit.models.embedded import resolve_model
from kit.models.transformer import TransformerModel


def matmul_peak(dtype=torch.float32, seconds=2.0):
    a, b = torch.randn(1024, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    runs, start = 0, time.time()
    while time.time() - start < seconds:
        a @ b
        runs += 1
    return 2 * 1024 * 2048 * 2048 * runs / (time.time() - start)


def reset_peak_rss():
    try:   # Linux: "5" resets the peak resident set size of this process
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_mb():
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_mb():
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _timed(fn):
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.time() - start, peak_rss_mb(), gpu_peak_mb()


class Bench:
    def __init__(self, model_name, task, texts, labels):
        self.task = task
        self.kit = TransformerModel(task, ModelArgs(model=model_name, head="generate"))
        self.texts, self.labels = texts, np.asarray(labels)
        self.rows = []

    def load(self):
        self.model = self.kit._load_base().eval()
        self.tok = self.kit.tokenizer
        self.params = sum(p.numel() for n, p in self.model.named_parameters() if "embed" not in n)
        self.vocab = self.model.config.vocab_size
        self.hidden = self.model.config.hidden_size
        self.pad = self.tok.pad_token_id
        self.kit_ids, _ = self.kit.encoder.encode_all(self.texts)
        self.seed_ids = [self.tok.apply_chat_template([{"role": "user", "content": f"{self.task.instruction}\n{t}"}],
                                                      add_generation_prompt=True, tokenize=True,
                                                      return_dict=False) for t in self.texts]

    def flops(self, tokens, logit_positions):
        return 2 * self.params * tokens + 2 * self.hidden * self.vocab * logit_positions

    def record(self, name, seconds, predicted, flops, rss, gpu, extra=""):
        agree = float(np.mean(np.asarray(predicted) == self.labels)) if predicted is not None else None
        self.rows.append({"path": name, "rows_per_s": len(self.texts) / seconds, "seconds": seconds,
                          "label_agreement": agree, "gflops": flops / seconds / 1e9, "peak_rss_mb": rss,
                          "gpu_peak_mb": gpu, "note": extra})

    # -- prediction paths ------------------------------------------------------------------
    def naive(self):
        """One row at a time: chat template, generate (greedy = temperature -> 0), strict parse."""
        def run():
            out = []
            with torch.no_grad():
                for ids in self.seed_ids:
                    x = torch.tensor([ids], device=self.model.device)
                    gen = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                              max_new_tokens=2, pad_token_id=self.pad)
                    label = parse_answer(self.tok.decode(gen[0, x.shape[1]:], skip_special_tokens=True), self.task.words)
                    out.append(-1 if label is None else label)
            return out
        predicted, seconds, rss, gpu = _timed(run)
        tokens = sum(len(s) + 1 for s in self.seed_ids)
        self.record("naive: per-row chat + generate", seconds, predicted,
                    self.flops(tokens, 2 * len(self.seed_ids)), rss, gpu,
                    f"{np.mean([len(s) for s in self.seed_ids]):.1f} tokens/row; {sum(p < 0 for p in predicted)} unparsed")

    def kit_generate(self):
        (probs, parsed, _), seconds, rss, gpu = _timed(lambda: generate_labels(
            self.model, self.tok, self.kit_ids, self.kit.answers, self.task.words, self.pad, 32))
        predicted = np.where(parsed >= 0, parsed, probs.argmax(1))
        tokens = sum(len(s) + 1 for s in self.kit_ids)
        self.record("kit predict --mode generate", seconds, predicted, self.flops(tokens, 2 * len(self.kit_ids)),
                    rss, gpu, f"{int((parsed < 0).sum())} fell back to scoring")

    def kit_score(self, name="kit predict --mode score", ids=None, batch=32, **switches):
        ids = ids or self.kit_ids
        firsts = [a[0] for a in self.kit.answers]
        probs, seconds, rss, gpu = _timed(lambda: score_labels(self.model, ids, firsts, self.pad, batch, **switches))
        tokens = sum(len(s) for s in ids)
        logits = tokens if switches.get("last_logits_only") is False else len(ids)
        self.record(name, seconds, probs.argmax(1), self.flops(tokens, logits), rss, gpu,
                    f"{np.mean([len(s) for s in ids]):.1f} tokens/row")
        return probs

    def precision_check(self, reference):
        """fp16 weights on the CPU: faster matmuls; report whether any label changes."""
        if self.model.device.type != "cpu":
            return
        self.model.half()
        try:
            probs = self.kit_score("score, fp16 weights (not the default)")
        finally:
            self.model.float()
        changed = int((probs.argmax(1) != reference.argmax(1)).sum())
        self.rows[-1]["note"] += f"; {changed} label(s) differ from fp32, max |dP| {np.abs(probs - reference).max():.4f}"


PLAIN_TEXT = (  # the opening of the US Declaration of Independence: plain, public-domain English
    "When in the Course of human events, it becomes necessary for one people to dissolve the political "
    "bands which have connected them with another, and to assume among the powers of the earth, the "
    "separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent "
    "respect to the opinions of mankind requires that they should declare the causes which impel them to "
    "the separation. We hold these truths to be self-evident, that all men are created equal, that they "
    "are endowed by their Creator with certain unalienable Rights, that among these are Life, Liberty and "
    "the pursuit of Happiness. That to secure these rights, Governments are instituted among Men, deriving "
    "their just powers from the consent of the governed.")


def plain_text_loss(model, tokenizer):
    """Mean next-token loss of the un-tuned weights on plain English: a check that the GGUF
    de-quantisation left a working language model (a broken conversion gives a loss near ln V)."""
    ids = torch.tensor([tokenizer(PLAIN_TEXT).input_ids], device=model.device)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss), ids.shape[1]


def load_times(model_name):
    """Cold: GGUF de-quantised and converted (the first run on a machine); warm: the cache."""
    out = {}
    if model_name == "smollm2":
        previous = os.environ.get("KIT_CACHE")
        with tempfile.TemporaryDirectory() as empty:
            os.environ["KIT_CACHE"] = empty
            start = time.time()
            path = resolve_model("smollm2")
            AutoModelForCausalLM.from_pretrained(path)
            out["cold_load_s"] = round(time.time() - start, 1)
        if previous is None:
            os.environ.pop("KIT_CACHE")
        else:
            os.environ["KIT_CACHE"] = previous
    start = time.time()
    AutoModelForCausalLM.from_pretrained(resolve_model(model_name))
    out["warm_load_s"] = round(time.time() - start, 1)
    return out


# -- training ------------------------------------------------------------------------------
def train_kit(model_name, task, texts, labels, steps, batch, lora_layers=0, head="generate", seed_prompt=False):
    """kit's training loop; seed_prompt feeds it the seeds' chat prompt, to compare losses with
    the Trainer on identical inputs."""
    model = TransformerModel(task,
                             ModelArgs(model=model_name, head=head, lora_layers=lora_layers),
                             # states for this fit only: the frozen pass is part of the measured time
                             TrainArgs(lr=3e-4, max_steps=steps, batch_size=batch, warmup=0, checkpoint_every=0,
                                       state_cache=False))
    rows = Rows([str(i) for i in range(len(texts))], texts, list(labels))
    ids, _ = model.encode(rows)
    if seed_prompt:
        ids = [model.tokenizer.apply_chat_template([{"role": "user", "content": f"{task.instruction}\n{t}"}],
                                                   add_generation_prompt=True, tokenize=True, return_dict=False)
               for t in texts]
    tokens_per_row = np.mean([len(s) + (2 if head == "generate" else 0) for s in ids])
    (_, seconds, rss, gpu) = _timed(lambda: model.fit(rows, encoded=(ids, {"rows": len(ids), "mean_tokens": 0,
                                                                           "truncated_rows": 0})))
    return {"samples_per_s": steps * batch / seconds, "tokens_per_s": steps * batch * tokens_per_row / seconds,
            "seconds": seconds, "loss_first": model.loss_log[0], "loss_last": float(np.mean(model.loss_log[-3:])),
            "peak_rss_mb": rss, "gpu_peak_mb": gpu, "tokens_per_row": tokens_per_row}


def train_trainer(model_name, task, texts, labels, steps, batch):
    """The usual way: transformers.Trainer + peft on the seeds' chat-formatted prompt (with the
    template's default system message), loss on the answer tokens (prompt labels -100)."""
    path = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    features = []
    for text, label in zip(texts, labels):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"{task.instruction}\n{text}"}],
                                         add_generation_prompt=True, tokenize=True, return_dict=False)
        answer = tok(task.words[label], add_special_tokens=False).input_ids + [tok.eos_token_id]
        features.append({"input_ids": prompt + answer, "attention_mask": [1] * (len(prompt) + len(answer)),
                         "labels": [-100] * len(prompt) + answer})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and ".layers." in n})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
                                 learning_rate=3e-4, lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
                                 report_to=[], disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(),
                                 bf16=torch.cuda.is_available(), dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=features,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True))
        _, seconds, rss, gpu = _timed(trainer.train)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens_per_row = np.mean([len(f["input_ids"]) for f in features])
    return {"samples_per_s": steps * batch / seconds, "tokens_per_s": steps * batch * tokens_per_row / seconds,
            "seconds": seconds, "loss_first": losses[0], "loss_last": float(np.mean(losses[-3:])),
            "peak_rss_mb": rss, "gpu_peak_mb": gpu, "tokens_per_row": tokens_per_row}


# -- the report ----------------------------------------------------------------------------
def frozen_pass_rows(bench, peak, top=4):
    """The frozen lower blocks' pass (kit/engine/states.py) with and without each speed-up: rows/s,
    agreement with the fp32 pass (the worst token's cosine, the largest error relative to the
    largest state), % of the fp32 matmul peak (over the tokens the pass computes: the shared
    prefix once), and the disk cache's write and read-back."""
    attribute, backbone, blocks = block_list(bench.model)
    split = len(blocks) - top
    ids = bench.kit_ids
    # the tokens the pass computes: the shared prefix once, then each row's own tokens
    tokens = sum(len(s) for s in ids) - (len(ids) - 1) * shared_prefix_length(ids)
    lower_params = sum(p.numel() for block in list(blocks)[:split] for p in block.parameters())
    threads = torch.get_num_threads()

    def run(batch=BATCH_SIZE, int8=False, n_threads=threads):
        torch.set_num_threads(n_threads)
        try:
            start = time.time()
            arrays = [None] * len(ids)
            for rows, states in lower_pass(backbone, attribute, blocks, split, ids, batch, int8, desc="frozen pass"):
                for i, state in zip(rows, states):
                    arrays[i] = state
            return arrays, time.time() - start
        finally:
            torch.set_num_threads(threads)

    reference, _ = run()             # warm-up: first calls pay for allocation and kernel choice
    results = []

    def record(name, arrays, seconds, note="", computed=True):
        a, b = np.concatenate(reference), np.concatenate([np.asarray(x, dtype=np.float32) for x in arrays])
        cosine = float(((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)).min())
        error = float(np.abs(a - b).max() / np.abs(a).max())
        gflops = 2 * lower_params * tokens / seconds / 1e9 if computed else None
        results.append({"path": name, "rows_per_s": len(ids) / seconds, "seconds": seconds, "min_cosine": cosine,
                        "max_rel_error": error, "gflops": gflops,
                        "pct_peak": 100 * gflops * 1e9 / peak if computed else None, "note": note})
    record(f"frozen pass blocks 1-{split}, fp32, batch {BATCH_SIZE}", *run(), f"{threads} threads (the defaults)")
    record("  int8 dynamic-quantised lower blocks", *run(int8=True), "`--frozen-states int8`")
    for batch in (8, 32, 64):
        record(f"  batch {batch}", *run(batch=batch))
    if threads > 1:
        record("  1 thread", *run(n_threads=1))
    with tempfile.TemporaryDirectory() as root:
        identity = {"base": "bench", "device": "cpu"}
        for storage in ("fp16", "fp32"):
            source = DiskStates(identity, storage, 0, Path(root) / storage)
            start = time.time()
            source.states(bench.model, split, ids)
            written = time.time() - start
            start = time.time()
            kept = source.states(bench.model, split, ids)
            arrays = [np.asarray(a, dtype=np.float32) for a in kept.arrays]
            read = time.time() - start
            record(f"  {storage} disk cache: computed and written", arrays, written,
                   f"{sum(a.nbytes for a in kept.arrays) / 2**20:.0f} MB on disk")
            record(f"  {storage} disk cache: read back (a later fold, run or prediction)", arrays, read,
                   "no pass: memory-mapped", computed=False)
    print(f"\n{'frozen lower blocks (over ' + str(len(ids)) + ' rows)':<62} {'rows/s':>8} {'x fp32':>7} {'min cos':>8} {'max err':>8} "
          f"{'GFLOP/s':>8} {'%peak':>6}  note")
    base = results[0]["rows_per_s"]
    for r in results:
        print(f"{r['path']:<62} {r['rows_per_s']:8.1f} {r['rows_per_s'] / base:7.2f} {r['min_cosine']:8.5f} "
              f"{r['max_rel_error']:8.1e} {_fmt(r['gflops'], 1):>8} {_fmt(r['pct_peak'], 1):>5}%  {r['note']}")
    return results


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def print_predict_table(rows, peak):
    naive = rows[0]["rows_per_s"]
    print(f"\n{'prediction path':<40} {'rows/s':>8} {'x naive':>8} {'agree':>6} {'GFLOP/s':>8} {'%peak':>6} {'RSS MB':>7}  note")
    for r in rows:
        print(f"{r['path']:<40} {r['rows_per_s']:8.2f} {r['rows_per_s'] / naive:8.2f} {_fmt(r['label_agreement'], 3):>6} "
              f"{r['gflops']:8.1f} {100 * r['gflops'] * 1e9 / peak:5.1f}% {r['peak_rss_mb']:7.0f}  {r['note']}")


def print_train_table(results, peak, flops_per_token):
    base = results["transformers.Trainer + peft (seed prompt)"]["samples_per_s"]
    print(f"\n{'training path':<46} {'samples/s':>9} {'x Trainer':>9} {'tokens/s':>9} {'loss@1':>7} {'loss@end':>8} {'%peak':>6} {'RSS MB':>7}")
    for name, r in results.items():
        achieved = r["tokens_per_s"] * flops_per_token.get(name, 0)
        print(f"{name:<46} {r['samples_per_s']:9.2f} {r['samples_per_s'] / base:9.2f} {r['tokens_per_s']:9.0f} "
              f"{r['loss_first']:7.3f} {r['loss_last']:8.3f} {100 * achieved / peak:5.1f}% {r['peak_rss_mb']:7.0f}")


def run_bench(spec, n_rows, train_steps, model_name, quick=False, out=None):
    """Every figure, printed (and written to out as JSON), on the first n_rows training rows of a
    two-label spec (the demo's by default; specs/disaster.toml gives the README's figures)."""
    if len(spec.labels) != 2:
        raise KitError(f"{spec.path}: kit bench measures two-label scoring; this spec has {len(spec.labels)} labels")
    rows, _ = load_rows(spec, "train")
    rows = rows.subset(range(min(n_rows, len(rows))))
    texts, labels = rows.texts, rows.labels
    task = Task(spec.instruction, [spec.label_words[label] for label in spec.labels], spec.max_length)
    data = spec.train
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    peak = matmul_peak()
    print(f"device: {device}; torch {torch.__version__}; model {model_name}; {len(texts)} rows of {data}")
    print(f"matmul peak (fp32, 1024x2048 @ 2048x2048): {peak / 1e9:.1f} GFLOP/s; "
          f"fp16: {matmul_peak(torch.float16) / 1e9:.1f} GFLOP/s")
    loads = {} if quick else load_times(model_name)
    if loads:
        print(f"model load: cold (GGUF -> safetensors cache) {loads.get('cold_load_s', '-')} s, warm {loads['warm_load_s']} s")
    bench = Bench(model_name, task, texts, labels)
    bench.load()
    loss, tokens = plain_text_loss(bench.model, bench.tok)
    print(f"un-tuned weights: loss {loss:.3f} nats/token on {tokens} tokens of plain English "
          f"(perplexity {np.exp(loss):.1f}; uniform over the vocabulary would be {np.log(bench.vocab):.1f})")
    log("bench: naive loop ...")
    bench.naive()
    bench.kit_generate()
    reference = bench.kit_score()
    if not quick:
        bench.kit_score("  ablation: no prefix KV cache", use_prefix_cache=False)
        bench.kit_score("  ablation: no length sorting", sort_by_length=False)
        bench.kit_score("  ablation: logits at every position", last_logits_only=False)
        bench.kit_score("  ablation: seed chat prompt (system msg)", ids=bench.seed_ids)
        bench.kit_score("  ablation: batch size 1", batch=1)
        bench.precision_check(reference)
    print_predict_table(bench.rows, peak)
    frozen = frozen_pass_rows(bench, peak)
    results = {}
    if not quick:
        log("bench: training ...")
        batch = 16
        results["transformers.Trainer + peft (seed prompt)"] = train_trainer(model_name, task, texts, labels, train_steps, batch)
        results["kit train, same settings and seed prompt"] = train_kit(
            model_name, task, texts, labels, train_steps, batch, seed_prompt=True)
        results["kit train, same settings, kit prompt"] = train_kit(model_name, task, texts, labels, train_steps, batch)
        default, _ = resolve(ModelArgs(), None, cuda_info())    # the defaults on this device
        top = default.lora_layers
        results[f"kit train, default recipe ({default.head}, top {top or 'all'})"] = train_kit(
            model_name, task, texts, labels, train_steps, batch, lora_layers=top, head=default.head)
        p, layers = bench.params, bench.model.config.num_hidden_layers
        # forward 2P + backward through activations ~2P (frozen weights); the default recipe
        # runs the lower blocks once (2P) and the top blocks forward and backward
        flops_per_token = {name: 4 * p for name in results}
        top = top or layers
        flops_per_token[list(results)[-1]] = 2 * p * (layers - top) / layers + 4 * p * top / layers
        print_train_table(results, peak, flops_per_token)
    if out:
        with open(out, "w") as handle:
            json.dump({"device": device, "matmul_peak_gflops": peak / 1e9, "loads": loads,
                       "predict": bench.rows, "frozen_pass": frozen, "train": results}, handle, indent=2)
    return bench.rows, results
