"""`kit export`: a trained run as a plain transformers model directory that serving engines
(vLLM, TGI, plain `from_pretrained`) load without the kit.

The export holds the LoRA merged into the base weights (or the fully fine-tuned weights), in the
dtype the run trained in, saved as safetensors; the classification head with `id2label` and
`pad_token_id` for classify-head runs; the run's tokenizer and chat template; `kit_export.json`
(the task and the prompt's prefix/tail token ids, so a client rebuilds the kit's prompts token
for token); and a README.md with the prompt format and the serving commands.

It is written into a temporary folder beside --out and renamed at the end: a crash leaves no
half export, and --force replaces an existing export only once the new one is complete.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from kit.core.errors import KitError, WriteError, remote_code_guard
from kit.core.files import umask, writing
from kit.core.logs import log
from kit.core.settings import EMBEDDED_ENCODER, EMBEDDED_LLM
from kit.engine.prompts import PromptEncoder, first_tokens_differ, with_the_instruction
from kit.inputs.spec import read_toml
from kit.models.base import Estimator
from kit.models.transformer import TransformerModel, _weights_dtype, saved_weights
from kit.runs.folder import RUNS, trained_run

EXPORT_FILE = "kit_export.json"
FORMAT_VERSION = 1
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)    # vLLM's --max-lora-rank choices


# -- the destination ----------------------------------------------------------------------------
def _inside(path, folder):
    """Whether path is folder or lies under it (both resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_destination(out, run_directory, force):
    """Refuse what --out must never be: a file, a non-empty folder without --force, a non-empty
    folder that is not an earlier export (--force replaces only what the kit wrote), the run itself
    or a folder holding it, or a folder holding the current directory (--force deletes it)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KitError(f"--out {out}: exists and is not a folder")
    if _inside(run_directory, out) or _inside(out, run_directory):
        raise KitError(f"--out {out}: overlaps the run folder {run_directory}; export somewhere else")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise KitError(f"--out {out}: exists and is not empty; pass --force to replace it")
        if not (out / EXPORT_FILE).is_file():
            raise KitError(f"--out {out}: is not empty and holds no {EXPORT_FILE}, so it is not a kit export; "
                           "--force replaces only an earlier export: choose another folder")
        if _inside(Path.cwd(), out):
            raise KitError(f"--out {out}: holds the current directory; --force would delete it")
    parent = out.parent                  # the export is staged beside out, then renamed into place
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise KitError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KitError(f"--out {out}: cannot write in {parent} (permission denied or a read-only file system)")


def _replace_folder(staging, out):
    """Move the finished staging folder to out; an old out is moved aside first and deleted last."""
    out = Path(out)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.rmdir(old)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- the model ----------------------------------------------------------------------------------
def _load_estimator(run, trust_remote_code):
    """The run's TransformerModel with its text side prepared (config, tokenizer, prompts); no weights.
    A run with fold models only (`kit cv --keep-models`, no `kit train`) has no one model to export."""
    state = Estimator.read_model_file(run.model_dir if run.has_full_model else run.fold_models[0])
    if state.get("kind") != TransformerModel.kind:
        raise KitError(f"run {run.directory}: a {state.get('kind')} model has no weights a serving engine "
                       "loads; export a transformer run (smollm2, minilm or a model directory)")
    if not run.has_full_model:
        raise KitError(f"run {run.directory}: only fold models (`kit cv --keep-models`), no full-train model to "
                       "export; run `python -m kit train` with its settings first (or predict with its folds: "
                       "`kit predict --models folds` or `--models merged`)")
    estimator = TransformerModel._from_state(state, trust_remote_code)
    if not estimator.args.lora_r:             # full fine-tune: the weights and tokenizer are in the run
        estimator.path = str(run.model_dir / "model")
    estimator._prepare_text()
    return estimator


def _export_dtype(estimator, run, choice="trained"):
    """The dtype to write: by default the one the run's weights had while it trained (fp32 on a
    CPU, bf16/fp16 frozen bases on GPUs), or the one --dtype names."""
    if choice not in EXPORT_DTYPES:
        raise KitError(f"--dtype {choice!r}: choose one of {', '.join(EXPORT_DTYPES)}")
    if EXPORT_DTYPES[choice]:
        return getattr(torch, EXPORT_DTYPES[choice])
    device = "cuda" if str(run.config.get("device", "cpu")).startswith("cuda") else "cpu"
    return _weights_dtype(estimator.args.precision, device, not estimator.args.lora_r)


def _merged_model(estimator, run, labels, dtype):
    """The base (or full fine-tune) in dtype on the CPU, with the run's LoRA merged in."""

    common = {"trust_remote_code": estimator.trust_remote_code, "dtype": dtype}
    if estimator.args.head == "classify":
        model = remote_code_guard(
            estimator.args.model, AutoModelForSequenceClassification.from_pretrained, estimator.path,
            num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, **common)
    else:
        model = remote_code_guard(estimator.args.model, AutoModelForCausalLM.from_pretrained, estimator.path,
                                   **common)
    if estimator.args.lora_r:
        model = PeftModel.from_pretrained(model, run.model_dir / "adapter").merge_and_unload()
    model = model.to(device="cpu", dtype=dtype).eval()
    pad = estimator.tokenizer.pad_token_id
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.pad_token_id = pad            # the classify head pools the last non-pad token
    if estimator.args.head == "classify":
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
    elif getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = pad
    return model


# -- what a client needs ------------------------------------------------------------------------
def _labels(run, estimator):
    resolved = run.config.get("spec", {}).get("resolved", {})
    labels = resolved.get("labels") or list(estimator.task.words)
    words = resolved.get("label_words") or dict(zip(labels, estimator.task.words))
    return [str(label) for label in labels], {str(k): str(v) for k, v in words.items()}


def _descriptions(run):
    """The spec's [task] label_descriptions (label -> what it means), read from the spec the run
    saved; {} when it has none."""
    saved = run.spec_copy
    if not saved.is_file():
        return {}
    try:
        table = read_toml(saved).get("task", {}).get("label_descriptions", {})
    except KitError:
        return {}
    return {str(k): str(v) for k, v in table.items()} if isinstance(table, dict) else {}


def _prompt(estimator):
    """Prefix and tail ids (decoders), or the encoder's [CLS] text [SEP] rule, and the readable template."""
    tokenizer, task = estimator.tokenizer, estimator.task
    if not estimator.decoder:
        return {"chat": False, "prefix_ids": [], "tail_ids": [], "input_room": task.max_length,
                "rule": f"tokenizer(text, truncation=True, max_length={task.max_length}).input_ids "
                        "(special tokens added by the tokenizer; the end of a long text is cut)",
                "template": "{input}"}
    prefix, tail = list(estimator.encoder.prefix), list(estimator.encoder.tail)
    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return {"chat": True, "prefix_ids": prefix, "tail_ids": tail,
            "input_room": task.max_length - len(prefix) - len(tail),
            "rule": "prefix_ids + tokenizer(text, add_special_tokens=False).input_ids[:input_room] + tail_ids",
            "template": decode(prefix) + "{input}" + decode(tail)}


def _answers(estimator, labels):
    tokenizer = estimator.tokenizer
    return [{"label": label, "word": word, "answer_ids": ids, "first_token_id": ids[0],
             "first_token": tokenizer.convert_ids_to_tokens(ids[0])}
            for label, word, ids in zip(labels, estimator.task.words, estimator.answers)]


# --dtype choices -> torch dtype names; "trained": the dtype the run's weights had while it trained
EXPORT_DTYPES = {"trained": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _serve_commands(out, estimator, run, adapter_name, dtype):
    # vLLM's --dtype auto runs fp32 weights in fp16/bf16: name the dtype the export holds
    remote = f" --dtype {str(dtype).replace('torch.', '')}"
    if estimator.trust_remote_code:
        remote += " --trust-remote-code"
    commands = {"merged": f"vllm serve {out}{remote}"}
    if estimator.args.head == "classify":
        commands["merged"] += " --runner pooling --convert classify"
        commands["merged_old_vllm"] = f"vllm serve {out}{remote} --task classify"
    elif estimator.args.lora_r:
        rank = next((r for r in VLLM_LORA_RANKS if r >= estimator.args.lora_r), estimator.args.lora_r)
        extra = f" --max-lora-rank {rank}" if rank > 16 else ""
        if estimator.args.quantize:
            extra += " --quantization bitsandbytes"
        commands["adapter"] = (f"vllm serve {estimator.path}{remote} --enable-lora "
                               f"--lora-modules {adapter_name}={(run.model_dir / 'adapter').resolve()}{extra}")
    return commands


def _describe(run, estimator, labels, words, dtype, commands):
    args, task = estimator.args, estimator.task
    info = {"format": "kit-export", "version": FORMAT_VERSION,
            "run": {"name": run.name, "key": run.key, "model_id": estimator.model_id,
                    "base_model": args.model, "base_path": str(estimator.path) if args.lora_r else None,
                    "lora_r": args.lora_r, "merged": bool(args.lora_r), "quantize_at_training": args.quantize,
                    "dtype": str(dtype).replace("torch.", "")},
            "task": {"head": args.head, "instruction": task.prompt(), "labels": labels,
                     "label_words": words, "label_descriptions": _descriptions(run), "max_length": task.max_length},
            "prompt": _prompt(estimator),
            "padding": "left, position ids counted from each row's first real token" if estimator.decoder
                       else "right",
            "serve": commands}
    if args.head == "classify":
        info["classify"] = {"id2label": {str(i): label for i, label in enumerate(labels)},
                            "probabilities": "softmax over the head's logits at the last prompt token"}
    else:
        rule = ("softmax over the logits of the label words' first tokens at the last prompt position"
                if first_tokens_differ(estimator.answers) else
                "softmax over the labels of the summed log-probabilities of each whole answer (its tokens and "
                "the end of turn) after the prompt: the label words share first tokens")
        info["generate"] = {"answers": _answers(estimator, labels), "probabilities": rule}
    return info


# the hub ids of the embedded models, for the model card's base_model (a local path names none)
HUB_IDS = {EMBEDDED_LLM: "HuggingFaceTB/SmolLM2-135M-Instruct", EMBEDDED_ENCODER: "sentence-transformers/all-MiniLM-L6-v2"}


def front_matter(info):
    """The model card's YAML header, as the Hugging Face hub reads it: base_model (when it is a hub
    id), library_name, pipeline_tag, tags. JSON strings are valid YAML scalars: nothing to escape."""
    run, head = info["run"], info["task"]["head"]
    base = HUB_IDS.get(run["base_model"], run["base_model"])
    lines = ["---"]
    if base and not Path(base).is_absolute() and not Path(base).exists() and "/" in base:
        lines.append(f"base_model: {json.dumps(base)}")
    lines += ["library_name: transformers",
              f"pipeline_tag: {'text-classification' if head == 'classify' else 'text-generation'}",
              "tags:", "- kit", *(["- lora"] if run["merged"] else []), "---", ""]
    return lines


def readable(directory):
    """Files 0644 and folders 0755 under the usual umask: an export is for teammates and servers
    (save_pretrained and mkdtemp leave some private)."""
    mask = umask()
    for path in [directory, *Path(directory).rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _readme(info, out):
    task, prompt, run = info["task"], info["prompt"], info["run"]
    fence = "````"
    lines = [*front_matter(info), f"# {run['name']}: exported by `kit export`", "",
             f"A plain transformers model directory ({task['head']} head, {run['dtype']}, safetensors"
             + (f"; LoRA r={run['lora_r']} merged into `{run['base_model']}`" if run["merged"]
                else "; fully fine-tuned weights") + "). It loads without the kit:", "",
             "```python", "from transformers import AutoTokenizer, "
             + ("AutoModelForSequenceClassification" if task["head"] == "classify" else "AutoModelForCausalLM"),
             f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})",
             f"model = {'AutoModelForSequenceClassification' if task['head'] == 'classify' else 'AutoModelForCausalLM'}"
             f".from_pretrained({str(out)!r})", "```", "",
             "## Task", "", f"Instruction (the system message): {task['instruction']!r}", ""]
    if prompt["chat"]:
        lines += ["## Prompt format", "",
                  "The exact prompt, with `{input}` where the row's text goes (the chat template the kit "
                  "trained with, the instruction as the system message, the text as the user message, "
                  "then the assistant's turn opened):", "", fence, prompt["template"], fence, "",
                  f"The kit tokenises the three pieces apart: `{EXPORT_FILE}` holds `prefix_ids` "
                  f"({len(prompt['prefix_ids'])} tokens) and `tail_ids` ({len(prompt['tail_ids'])} tokens); "
                  "the row's text is `tokenizer(text, add_special_tokens=False).input_ids`, cut to its "
                  f"first {prompt['input_room']} tokens, so that the whole prompt is at most "
                  f"max_length = {task['max_length']} tokens (only the input is cut). Tokenising the rendered "
                  "string in one go can differ from this at the joins; send token ids for the kit's numbers.",
                  ""]
    else:
        lines += ["## Prompt format", "", f"An encoder: the text alone, `{prompt['rule']}`; "
                  f"max_length = {task['max_length']}.", ""]
    lines += ["## Labels", ""]
    if task["head"] == "classify":
        lines += ["`config.json` `id2label` (the labels in their CSV form; label words "
                  f"{json.dumps(task['label_words'], ensure_ascii=False)}):", ""]
        meaning = task.get("label_descriptions") or {}
        lines += [f"- {i}: `{label}`" + (f": {meaning[label]}" if label in meaning else "")
                  for i, label in info["classify"]["id2label"].items()]
        lines += ["", "P(label) = softmax of the classification head's logits; the head reads the last "
                  "non-pad token (`config.pad_token_id` is set), i.e. the prompt's last token.", ""]
    else:
        lines += ["The model answers the label word, then ends its turn. Label words and answer tokens:", ""]
        meaning = task.get("label_descriptions") or {}
        lines += [f"- label `{a['label']}`" + (f" ({meaning[a['label']]})" if a["label"] in meaning else "")
                  + f": word `{a['word']}`, answer ids {a['answer_ids']}, first token "
                  f"{a['first_token_id']} (`{a['first_token']}`)" for a in info["generate"]["answers"]]
        lines += ["", "P(label) = softmax over the logits of the label words' FIRST tokens at the last "
                  "prompt position (one forward pass), as `kit predict --mode score` computes it.", ""]
    serve = info["serve"]
    lines += ["## Serving", "",
              "**vLLM was NOT run here** (the export was made and tested without a GPU): these commands "
              "are documented, not tested.", "", "```bash", serve["merged"]]
    if "merged_old_vllm" in serve:
        lines += [f"{serve['merged_old_vllm']}    # vLLM before 0.10.1 (no --runner/--convert)"]
    if "adapter" in serve:
        lines += [f"{serve['adapter']}    # the unmerged adapter on its base model"]
    lines += ["```", ""]
    if task["head"] == "classify":
        lines += ["Classification: POST `/classify` (or `LLM.classify` offline with "
                  "`TokensPrompt(prompt_token_ids=...)` for the kit's exact ids) returns the softmax over the "
                  "labels, pooled at the last token.", ""]
    else:
        lines += ["Scores: POST `/v1/completions` with `prompt` = the token ids above, `max_tokens` 1, "
                  "`temperature` 0, `logprobs` 20; P(label) = exp(logprob of its first token), renormalised "
                  "over the label words' first tokens (a label absent from the top logprobs is ~0).", ""]
    if run["quantize_at_training"]:
        lines += [f"The run trained on a {run['quantize_at_training']} base (QLoRA); the LoRA was merged into "
                  "the unquantized base, so probabilities differ slightly from the run's own.", ""]
    lines += [f"`{EXPORT_FILE}`: the task, the prompt ids and these commands, for clients.", ""]
    return "\n".join(lines)


# -- the export ---------------------------------------------------------------------------------
def export_run(spec, out, run=None, force=False, trust_remote_code=False, runs=RUNS, allow_spec_change=False,
               dtype="trained"):
    """Write the run's model as a plain transformers directory at out; returns kit_export.json's dict."""
    chosen = trained_run(spec, run, allow_spec_change, runs=runs)
    out = Path(out)
    check_destination(out, chosen.directory, force)
    estimator = _load_estimator(chosen, trust_remote_code)
    saved_weights(chosen.model_dir, estimator.args)      # safetensors only, before any weight file is opened
    if estimator.task.regression or estimator.task.several:
        what = "several label columns' head" if estimator.task.several else "a number task's regression head"
        raise KitError(f"run {chosen.name}: {what} is not exported (the export writes a one-label classifier or "
                       "generator); predict it with kit predict")
    labels, words = _labels(chosen, estimator)
    dtype = _export_dtype(estimator, chosen, dtype)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        log(f"export: {chosen.directory} -> {out} ({estimator.args.head} head, "
            f"{'merging the LoRA' if estimator.args.lora_r else 'full fine-tune'}, {dtype})")
        model = _merged_model(estimator, chosen, labels, dtype)
        with writing(out):
            try:
                model.save_pretrained(staging)
            except SafetensorError as error:       # safetensors reports a full disk as its own error
                raise WriteError(out, OSError(None, str(error).splitlines()[0])) from None
            del model
            baked = with_the_instruction(estimator.tokenizer, estimator.task.prompt()) if estimator.decoder else None
            if baked:
                estimator.tokenizer.chat_template = baked      # the export's own copy: the estimator ends here
            estimator.tokenizer.save_pretrained(staging)
        _check_tokenizer(staging, estimator)
        info = _describe(chosen, estimator, labels, words, dtype,
                         _serve_commands(out.resolve(), estimator, chosen, chosen.name, dtype))
        with writing(out):
            (staging / EXPORT_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
            (staging / "README.md").write_text(_readme(info, out.resolve()), encoding="utf-8")
            readable(staging)
            _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _check_tokenizer(directory, estimator):
    """The saved tokenizer must rebuild the kit's prompt ids exactly (chat template included)."""
    if not estimator.decoder:
        return

    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=estimator.trust_remote_code)
    again = PromptEncoder(tokenizer, estimator.task.prompt(), estimator.task.max_length)
    if (again.prefix, again.tail) != (estimator.encoder.prefix, estimator.encoder.tail):
        raise KitError(f"export: the saved tokenizer renders another prompt than the run's "
                       f"({len(again.prefix)}+{len(again.tail)} vs {len(estimator.encoder.prefix)}+"
                       f"{len(estimator.encoder.tail)} tokens); not exported")


