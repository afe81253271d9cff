"""The command line: `python -m kit prepare | train | predict | cv | score | check | bench`."""
import functools
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

import click
from click.core import ParameterSource

from .errors import KitError
from .device import ATTENTION, PRECISIONS, QUANTIZE
from .models import EMBEDDED_ENCODER, EMBEDDED_LLM, FROZEN_STATES, HEADS, TFIDF, ModelArgs
from .train import TrainArgs

DEFAULTS_M, DEFAULTS_T = ModelArgs(), TrainArgs()
# --target's road when --model is not given: TF-IDF phrases, in seconds. On the real papers
# (README "Predicted columns") SmolLM2 with LoRA on its top 8 blocks scored a higher exact keyword
# F1 (0.174 against 0.159) but took 31 minutes to train on a 2-core CPU: a choice to make, not a default
DEFAULT_ROAD = TFIDF
class AutoInt(click.ParamType):
    """A non-negative integer or the word auto."""
    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer or 'auto'", param, ctx)
        if number < 0:
            self.fail(f"{number} is negative", param, ctx)
        return number


AUTO_INT = AutoInt()
TRUST_REMOTE_CODE = click.option(
    "--trust-remote-code", is_flag=True,
    help="Let the base model's own Python code run (ChatGLM2/3). Taken from this command line only, "
         "never from a run folder or a sweep file.")


TARGET = click.option(
    "--target", default=None, metavar="COLUMN",
    help="Work on a predicted submission column of the spec's [targets] (e.g. Keywords) instead of the label. "
         "Its roads are --model tfidf (top TF-IDF phrases; the default with --target: seconds), minilm "
         "(MiniLM similarity + MMR diversity) or an LLM (smollm2, a path, a hub id: LoRA writes the keyword list; "
         "best exact F1 with --lora-layers 8, measured).")


def _spec_option(command):
    return click.option("--spec", "spec_path", default="data/competition.toml", show_default=True,
                        type=click.Path(dir_okay=False), help="The competition spec (TOML).")(command)


def _model_options(command, multiple_models=False):
    """Model and training options, shared by `train` and `cv` so both run the same recipe."""
    options = [
        click.option("--model", multiple=multiple_models, default=None if multiple_models else DEFAULTS_M.model,
                     show_default=not multiple_models,
                     help=f"'{EMBEDDED_LLM}' (embedded SmolLM2-135M-Instruct), '{EMBEDDED_ENCODER}' "
                          f"(embedded all-MiniLM-L6-v2), '{TFIDF}' (TF-IDF + logistic regression), a local "
                          "model directory, or a hub id." + (" Repeat to compare." if multiple_models else "")),
        click.option("--head", type=click.Choice(HEADS), default=DEFAULTS_M.head, show_default=True,
                     help="classify: a classification head on the last token; generate: answer the label word."),
        click.option("--lora-r", type=click.IntRange(min=0), default=DEFAULTS_M.lora_r, show_default=True,
                     help="LoRA rank; 0 fine-tunes every weight."),
        click.option("--lora-alpha", type=click.IntRange(min=1), default=DEFAULTS_M.lora_alpha, show_default=True),
        click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS_M.lora_dropout,
                     show_default=True),
        click.option("--lora-targets", default=None,
                     help="Comma-separated module names (default: peft's all-linear, every linear layer in the "
                          "blocks)."),
        click.option("--lora-layers", type=AUTO_INT, default=DEFAULTS_M.lora_layers, show_default=True,
                     help="LoRA on the top N blocks only (0: all); the lower blocks are then computed once. "
                          "auto: 4 on a CPU (measured best there), all blocks on a GPU."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS_M.precision, show_default=True,
                     help="auto: bf16 on GPUs that have it, fp16 autocast + gradient scaler on others (T4, V100), "
                          "fp32 on a CPU."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
                     help="Recompute activations in the backward pass [default: on for models over 1B "
                          "parameters on a GPU]."),
        click.option("--attention", type=click.Choice(ATTENTION), default=DEFAULTS_M.attention, show_default=True,
                     help="auto: flash_attention_2 when installed on a GPU, else PyTorch SDPA."),
        click.option("--quantize", type=click.Choice(QUANTIZE), default=None,
                     help="QLoRA: load the base in 4-bit NF4 (double quantisation) or 8-bit through bitsandbytes."),
        click.option("--frozen-states", type=click.Choice(FROZEN_STATES), default=DEFAULTS_M.frozen_states,
                     show_default=True,
                     help="With --lora-layers N: how the frozen lower blocks' states are computed and kept. fp16: an "
                          "fp32 pass kept in half precision; fp32: kept exactly; int8: int8 dynamic-quantised lower "
                          "blocks (CPU; faster, measured in `kit bench`)."),
        click.option("--state-cache/--no-state-cache", default=DEFAULTS_T.state_cache, show_default=True,
                     help="Keep the frozen lower blocks' states on disk (runs/.state-cache), computed once for every "
                          "CV fold, later `kit train`, sweep entry and prediction from the same base model and "
                          "prompt. `kit cache --clear` empties it."),
        click.option("--frozen-cache-gb", type=click.FloatRange(min=0), default=DEFAULTS_T.frozen_cache_gb,
                     show_default=True,
                     help="Budget for those states: the disk cache's (0: 20 GB, or half the free disk when less; "
                          "least recently used states are dropped beyond it), or with --no-state-cache this fit's RAM "
                          "(0: half the free RAM). A fit whose states exceed it runs through every block."),
        TRUST_REMOTE_CODE,
        click.option("--max-length", type=click.IntRange(16, 131072), default=None,
                     help="Tokens per prompt (default: the spec's [task] max_length); the input is cut, "
                          "never the instruction or the answer."),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=DEFAULTS_T.lr, show_default=True),
        click.option("--epochs", type=click.FloatRange(0, min_open=True), default=DEFAULTS_T.epochs,
                     show_default=True),
        click.option("--max-steps", type=click.IntRange(min=0), default=DEFAULTS_T.max_steps, show_default=True,
                     help="Stop after this many optimizer steps (0: use --epochs)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS_T.batch_size, show_default=True),
        click.option("--grad-accum", type=click.IntRange(min=1), default=DEFAULTS_T.grad_accum, show_default=True),
        click.option("--warmup", type=click.FloatRange(0, 1), default=DEFAULTS_T.warmup, show_default=True,
                     help="Linear warm-up from 0 over this fraction of the steps; then linear decay to 0."),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=DEFAULTS_T.weight_decay,
                     show_default=True),
        click.option("--seed", type=int, default=DEFAULTS_T.seed, show_default=True,
                     help="Training seed (initial weights, batch order, dropout)."),
        click.option("--checkpoint-every", type=click.IntRange(min=0), default=DEFAULTS_T.checkpoint_every,
                     show_default=True, help="Save a resumable checkpoint every N steps (0: never)."),
        click.option("--class-weights", is_flag=True, help="Weight the classify loss by inverse class frequency."),
        click.option("--pseudo", default=None, metavar="RUN[:SPLIT]",
                     help="Pseudo-labels: add SPLIT's rows (default test) whose top probability in RUN's "
                          "predictions-SPLIT.csv reaches --pseudo-threshold, labelled with its argmax. Under "
                          "`kit cv`, RUN must be a `kit cv --keep-models` run on the same folds (or a `kit blend` of "
                          "such runs): fold k uses its fold-k model(s) only."),
        click.option("--pseudo-threshold", type=click.FloatRange(0.5, 1), default=DEFAULTS_T.pseudo_threshold,
                     show_default=True, help="The top probability a split row needs to become a pseudo-label."),
        click.option("--pseudo-soft", is_flag=True,
                     help="Learn the pseudo rows' probability vectors instead of their argmax (--head classify)."),
        click.option("--teacher", default=None, metavar="RUN",
                     help="Distil: learn RUN's probabilities beside the labels (its oof.csv; under `kit cv` its "
                          "fold-k model for fold k; a blend: its members' fold-k models). "
                          "Loss (1 - W) * CE + W * T^2 * KL(teacher_T || student_T)."),
        click.option("--kl-weight", type=click.FloatRange(0, 1), default=DEFAULTS_T.kl_weight, show_default=True,
                     help="W: the teacher's share of the loss."),
        click.option("--temperature", type=click.FloatRange(0, min_open=True), default=DEFAULTS_T.temperature,
                     show_default=True, help="T: both distributions are softened by it before the KL."),
        click.option("--predict-batch-size", type=click.IntRange(min=1), default=DEFAULTS_M.predict_batch_size,
                     show_default=True),
        click.option("--overwrite", is_flag=True,
                     help="Replace a run folder of the same name that was made with other settings."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _split_args(options):
    """CLI keyword arguments -> (ModelArgs, TrainArgs, max_length); the run-time flags
    (trust_remote_code, overwrite) stay in options."""
    model_keys = {f.name for f in fields(ModelArgs)}
    train_keys = {f.name for f in fields(TrainArgs)}
    model = {k: v for k, v in options.items() if k in model_keys}
    if model.get("gradient_checkpointing") is None:
        model["gradient_checkpointing"] = "auto"
    if model.get("lora_targets"):
        model["lora_targets"] = [t.strip() for t in model["lora_targets"].split(",") if t.strip()]
    return (ModelArgs(**model), TrainArgs(**{k: v for k, v in options.items() if k in train_keys}),
            options.get("max_length"))


def _load(spec_path, max_length=None):
    from .spec import load_spec
    spec = load_spec(spec_path)
    if max_length:
        spec.max_length = max_length
    return spec


def _say(text=""):
    """Command output, printed once: by rank 0 when several ranks run the command."""
    from . import dist
    if dist.is_main():
        click.echo(text)


def _friendly(command):
    """KitError -> one line and exit 2; Ctrl-C -> exit 130; tracebacks only with --debug."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KitError as error:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: finished files are kept; re-run to resume", err=True)
            sys.exit(130)
    return wrapper


class _KitGroup(click.Group):
    """The commands with heavy imports of their own (fastapi, the GPU benchmark) live in their
    modules and are imported only when used, so `import kit.cli` stays cheap and acyclic."""
    lazy = {"bench-gpu": ("kit.bench_gpu", "bench_gpu"), "export": ("kit.export", "export"),
            "serve": ("kit.serve", "serve"), "runs": ("kit.report", "runs_command"),
            "report": ("kit.report", "report_command"), "blend": ("kit.ensemble", "blend_command")}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib
            module, attribute = self.lazy[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=_KitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug):
    """kit: fine-tune an instruction LLM (or a baseline) on a competition's CSVs, score it with
    honest cross-validation, and write a validated submission.

    \b
    Typical use:
      python -m kit check                  validate the spec and its files
      python -m kit cv --holdout 0.2       local score, beside the TF-IDF baseline
      python -m kit train                  fine-tune on all of train.csv -> runs/<name>/
      python -m kit predict --split testB  -> submissions/submit.csv
    """
    from . import dist
    from .logs import setup
    setup(logging.INFO if dist.is_main() else logging.WARNING)
    dist.init()          # under torchrun / accelerate launch: join the ranks' process group


@main.command()
@_spec_option
@click.option("--out", default="data/prepared", show_default=True, help="Folder for the instruction data.")
@_friendly
def prepare(spec_path, out):
    """Write the instruction data (Alpaca JSON, chat JSONL, dataset_info.json)."""
    from .data import prepare as write_prepared
    result = write_prepared(_load(spec_path), out)
    for name, (rows, files) in result["written"].items():
        _say(f"prepared {name}: {rows} rows: {', '.join(files)}")
    _say(f"dataset info: {result['dataset_info']}")


@main.command()
@_spec_option
@_model_options
@click.option("--name", default=None,
              help="Run folder name under runs/ (default: <spec>-<model>-<head>-<settings key>).")
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint (same settings only).")
@TARGET
@_friendly
def train(spec_path, name, resume, trust_remote_code, overwrite, target, **options):
    """Fine-tune on the whole train split; saves runs/<name>/."""
    from .pipeline import train_run
    if target and click.get_current_context().get_parameter_source("model") is ParameterSource.DEFAULT:
        options["model"] = DEFAULT_ROAD
    model_args, train_args, max_length = _split_args(options)
    directory, stats = train_run(_load(spec_path, max_length), model_args, train_args, name, resume, overwrite,
                                 trust_remote_code, target=target)
    loss = f"; final loss {stats['final_loss']}" if stats["final_loss"] is not None else ""
    _say(f"trained {directory} in {stats['train_seconds']} s{loss}")


@main.command()
@_spec_option
@click.option("--split", default="test", show_default=True, help="A split named in the spec's [splits].")
@click.option("--run", "--run-name", "run", default=None,
              help="Run folder name or path (default: the latest run trained on this spec). Under torchrun, "
                   "write --run-name: torchrun reads --run as its own --run-path.")
@click.option("--mode", type=click.Choice(["score", "generate"]), default="score", show_default=True,
              help="score: label probabilities from one forward pass; generate: greedy answer, strict "
                   "parse, rows that do not parse fall back to scoring (counted).")
@click.option("--threshold", default=None,
              help="Binary tasks: P(positive) cut-off, a number or 'oof' (tuned by `kit cv`). Default 0.5.")
@click.option("--out", default="submissions/submit.csv", show_default=True)
@click.option("--allow-spec-change", is_flag=True,
              help="Predict with a run trained on another version of the spec (instruction, labels, ...).")
@click.option("--report", "report_out", is_flag=False, flag_value="reports/report.html", default=None,
              help="Also write the HTML report (default path reports/report.html).")
@click.option("--models", type=click.Choice(["auto", "full", "folds", "merged"]), default="auto", show_default=True,
              help="full: the run's full-train model; folds: average the fold models' probabilities (kept by "
                   "`kit cv --keep-models`); merged: average their LoRA weights into one adapter first; "
                   "auto: full when the run has one, else folds.")
@click.option("--target-run", "target_runs", multiple=True, metavar="COLUMN=RUN",
              help="The run that predicts a [targets] column (default: its latest trained run). Repeatable.")
@TRUST_REMOTE_CODE
@_friendly
def predict(spec_path, split, run, mode, threshold, out, allow_spec_change, trust_remote_code, report_out, models,
            target_runs):
    """Predict a split and write a validated submission."""
    from .pipeline import predict_split
    spec = _load(spec_path)
    result = predict_split(spec, split, run, mode, threshold, out, allow_spec_change=allow_spec_change,
                           trust_remote_code=trust_remote_code, models=models,
                           target_runs=_column_runs(target_runs, spec))
    if result is None:                      # not rank 0: rank 0 wrote the submission
        return
    path, label_result, target_stats = result
    if label_result is not None:
        pred_path, stats = label_result
        decided = ", ".join(f"{k}: {v}" for k, v in stats["decided"].items())
        _say(f"predicted {stats['rows']} rows of {split} in {stats['seconds']} s ({stats['rows_per_s']} rows/s,"
             f" {stats.get('mean_tokens', '-')} tokens per row, {stats.get('truncated_rows', 0)} truncated); "
             f"decided by {decided}; {stats.get('fallback_rows', 0)} fell back")
        _say(f"per-row predictions: {pred_path}")
    for column, stats in target_stats.items():
        decided = ", ".join(f"{k}: {v}" for k, v in stats["decided"].items())
        scored = stats.get("scores")
        _say(f"{column}: {stats['rows']} rows in {stats['seconds']} s; decided by {decided}; "
             f"{stats['empty_rows']} empty" + (f"; exact F1 {scored['exact_f1']:.4f}, partial F1 "
                                               f"{scored['partial_f1']:.4f} against the split's {column}"
                                               + (" (its training rows)" if scored.get("on_training_rows") else "")
                                               if scored else ""))
    _say(f"submission: {path}")
    if report_out and label_result is not None:
        from .report import write_report
        _say(f"report: {write_report([Path(label_result[1]['run'])], spec, report_out, split)}")


def _column_runs(pairs, spec):
    """--target-run COLUMN=RUN pairs as a dict, each column one of the spec's targets."""
    runs = {}
    for pair in pairs:
        column, _, run = pair.partition("=")
        if not run or column not in spec.targets:
            raise KitError(f"--target-run {pair!r}: write COLUMN=RUN with COLUMN one of {sorted(spec.targets) or 'none'}")
        runs[column] = run
    return runs


@main.command()
@_spec_option
@functools.partial(_model_options, multiple_models=True)
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Hold out this fraction once instead of k folds.")
@click.option("--fold-seed", type=int, default=0, show_default=True,
              help="Seed of the fold assignment, separate from --seed: configurations are scored on the same folds.")
@click.option("--mode", type=click.Choice(["score", "generate"]), default="score", show_default=True)
@click.option("--sweep", type=click.Path(dir_okay=False), default=None,
              help="A TOML file of [[config]] tables (name + option overrides), one CV per entry.")
@click.option("--name", default=None, help="Run folder name (one configuration only).")
@click.option("--no-baseline", is_flag=True, help="Skip the TF-IDF baseline row.")
@click.option("--keep-models", is_flag=True,
              help="Keep each fold's model in the run folder, for `kit predict --models folds|merged`.")
@click.option("--report", "report_out", is_flag=False, flag_value="reports/report.html", default=None,
              help="Also write the HTML report (default path reports/report.html).")
@TARGET
@_friendly
def cv(spec_path, folds, holdout, fold_seed, mode, sweep, name, no_baseline, trust_remote_code, overwrite,
       report_out, keep_models, target, **options):
    """Cross-validate: OOF score, per-fold spread, the TF-IDF baseline beside it."""
    from dataclasses import replace
    from .cv import cross_validate, format_scores, read_sweep, split_overrides, table, verdict
    from .data import write_json, write_text
    from .runs import RUNS
    models = options.pop("model") or ((DEFAULT_ROAD,) if target else (DEFAULTS_M.model,))
    model_args, train_args, max_length = _split_args(options)
    spec = _load(spec_path, max_length)
    if target:
        from .levers import refuse_for_target
        refuse_for_target(train_args)
        if sweep or keep_models:
            raise KitError(f"{'--sweep' if sweep else '--keep-models'} is for the label's cv; with --target, "
                           "compare roads with --model A --model B")
        return _cv_target(spec, target, models, model_args, train_args, folds, holdout, fold_seed, name, overwrite,
                          trust_remote_code, no_baseline)
    from .pipeline import require_label
    require_label(spec, "cross-validate")
    configs = []   # (name, spec, ModelArgs, TrainArgs)
    if sweep:
        for entry in read_sweep(sweep):
            configs.append((f"{Path(sweep).stem}-{entry['name']}",
                            *split_overrides(entry, spec, model_args, train_args,
                                             f"{sweep} [[config]] {entry['name']}")))
    else:
        for model in models:
            m = replace(model_args, model=model)
            configs.append((name if name and len(models) == 1 else None, spec, m, train_args))
    if not no_baseline and not any(m.model == TFIDF for _, _, m, _ in configs):
        from .levers import without_levers      # the baseline stays the plain classical reference
        configs.insert(0, (None, spec, ModelArgs(model=TFIDF), without_levers(train_args)))
    results = []
    for config_name, s, m, t in configs:
        scores = cross_validate(s, m, t, folds, holdout, fold_seed, mode, config_name, overwrite, trust_remote_code,
                                keep_models=keep_models)
        if scores is None:                  # not rank 0: its folds are in rank 0's results
            continue
        _say(format_scores(scores, spec) + "\n")
        results.append(scores)
    if not results:
        return
    summary = table(results, spec)
    baseline = next((s for s in results if s["config"]["model"] == TFIDF), None)
    _say(summary)
    if baseline and len(results) > 1:
        _say(verdict(results, baseline, spec))
    if len(results) > 1:
        stem = Path(sweep).stem if sweep else f"{spec.name}-compare"
        write_text(RUNS / f"{stem}-table.md", summary + "\n")
        write_json(RUNS / f"{stem}-table.json", results)
        _say(f"table saved: {RUNS / f'{stem}-table.md'}")
    if report_out:
        from .report import write_report
        _say(f"report: {write_report([RUNS / s['config']['name'] for s in results], spec, report_out)}")


def _cv_target(spec, target, models, model_args, train_args, folds, holdout, fold_seed, name, overwrite,
               trust_remote_code, no_baseline):
    """`kit cv --target COLUMN`: each road on the same folds, the TF-IDF road beside them."""
    from dataclasses import replace
    from .data import write_json, write_text
    from .runs import RUNS
    from .targets import cross_validate_target, format_target_scores, target_table
    if not no_baseline and TFIDF not in models:
        models = (TFIDF, *models)
    results = []
    for model in models:
        scores = cross_validate_target(spec, target, replace(model_args, model=model), train_args, folds, holdout,
                                       fold_seed, name if name and len(models) == 1 else None, overwrite,
                                       trust_remote_code)
        _say(format_target_scores(scores) + "\n")
        results.append(scores)
    summary = target_table(results)
    _say(summary)
    if len(results) > 1:
        stem = f"{spec.name}.{target}-compare"
        write_text(RUNS / f"{stem}-table.md", summary + "\n")
        write_json(RUNS / f"{stem}-table.json", results)
        _say(f"table saved: {RUNS / f'{stem}-table.md'}")


@main.command()
@_spec_option
@click.option("--pred", required=True, type=click.Path(dir_okay=False),
              help="A predictions CSV (runs/<name>/predictions-*.csv, oof.csv) or a submission.")
@click.option("--split", default=None, help="Score against the spec's [answers] file for this split.")
@click.option("--truth", default=None, type=click.Path(dir_okay=False), help="A labelled CSV (id + label columns).")
@_friendly
def score(spec_path, pred, split, truth):
    """Score a predictions or submission file against labelled rows."""
    from .metrics import format_report
    from .pipeline import score_file
    spec = _load(spec_path)
    if (split is None) == (truth is None):
        raise KitError("score: give exactly one of --split (uses the spec's [answers]) or --truth FILE")
    if split is not None:
        if split not in spec.answers:
            raise KitError(f"{spec.path}: no [answers] entry for split {split!r}; "
                           f"it has {sorted(spec.answers) or 'none'}; or pass --truth FILE")
        truth = spec.answers[split]
    from .data import read_csv
    from .targets import score_target_columns
    frame = read_csv(pred)
    keyword_scores = score_target_columns(spec, frame, pred, truth)
    label_columns = ("label", spec.submission_label, spec.label_column)
    if spec.has_labels and (any(c in frame.columns for c in label_columns if c) or not keyword_scores):
        _say(format_report(score_file(spec, pred, truth), spec.labels))
    for column, scores in keyword_scores.items():
        _say(f"{column}: exact P/R/F1 {scores['exact_precision']:.4f} / {scores['exact_recall']:.4f} / "
             f"{scores['exact_f1']:.4f}; partial F1 {scores['partial_f1']:.4f} over {scores['rows']} rows")
    if not spec.has_labels and not keyword_scores:
        raise KitError(f"{pred}: nothing to score; it has none of the columns {sorted(spec.targets)} whose answers "
                       f"{truth} holds")


@main.command()
@_spec_option
@click.option("--submission", default=None, type=click.Path(dir_okay=False), help="Also validate this file.")
@click.option("--split", default="test", show_default=True, help="The split the submission is for.")
@_friendly
def check(spec_path, submission, split):
    """Validate the spec and every file it names (and optionally a submission), without training."""
    from .check import check_all
    for line in check_all(_load(spec_path), submission, split):
        _say(line)


@main.command()
@click.option("--clear", is_flag=True, help="Delete every cached state.")
@_friendly
def cache(clear):
    """Show (or --clear) the frozen lower blocks' state cache: runs/.state-cache, or $KIT_STATE_CACHE."""
    from .states import ROOT, cache_size, clear_cache, describe_cache
    if clear:
        _say(f"state cache {ROOT}: {clear_cache() / 2**30:.2f} GB deleted")
        return
    lines = describe_cache()
    _say("\n".join(lines) if lines else f"state cache {ROOT}: empty")
    if lines:
        _say(f"total {cache_size() / 2**30:.2f} GB; `kit cache --clear` deletes it")


@main.command()
@click.option("--data", default="../shared/data/disaster/train.csv", show_default=True,
              help="A CSV with a 'text' column (and 'target' for label agreement).")
@click.option("--rows", type=int, default=96, show_default=True, help="Rows to predict.")
@click.option("--train-steps", type=int, default=6, show_default=True, help="Training steps per trainer.")
@click.option("--model", default=EMBEDDED_LLM, show_default=True)
@click.option("--quick", is_flag=True, help="Skip the ablations and the Trainer baseline.")
@click.option("--out", default=None, help="Also write the figures as JSON here.")
@_friendly
def bench(data, rows, train_steps, model, quick, out):
    """Measure predict and train speed against the usual way (naive loop, transformers.Trainer)."""
    from .bench import run_bench
    started = time.time()
    run_bench(data, rows, train_steps, model, quick, out)
    _say(f"bench done in {time.time() - started:.0f} s")
