"""`kit train`, `kit cv`, `kit predict` and `kit blend`: fitting, scoring and writing submissions."""
import functools
import time
from dataclasses import replace
from pathlib import Path

import click
from click.core import ParameterSource

from kit.commands.options import (
    DEFAULT_ROAD,
    DEFAULTS_M,
    RUN_NAMES,
    RUNS_DIR,
    TARGET,
    TRUST_REMOTE_CODE,
    FiniteFloat,
    friendly,
    model_options,
    open_spec,
    say,
    spec_option,
    split_args,
)
from kit.core.budget import minutes, parse_duration
from kit.core.errors import KitError
from kit.core.files import write_json, write_text
from kit.core.settings import TFIDF, ModelArgs
from kit.inputs.submit import check_destination
from kit.inputs.sweep import read_sweep, split_overrides
from kit.outputs.report import write_report
from kit.tasks.columns import column_of, predicted_columns
from kit.workflows.auto import auto, parse_budget, write_choice
from kit.workflows.blend import blend, format_blend
from kit.workflows.cv import cross_validate
from kit.workflows.fit import took, train_run
from kit.workflows.levers import refuse_unless_supported, without_levers
from kit.workflows.predict import SUBMISSION, find_run, predict_split
from kit.workflows.zero_shot import format_zero_shot, zero_shot


@click.command()
@spec_option
@model_options
@click.option("--name", default=None,
              help="Run folder name under runs/ (default: <spec>-<model>-<head>-<settings key>).")
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint (same settings only).")
@click.option("--time-budget", default=None,
              help="Time for the whole command (30m, 2h, 90s): training stops when it is spent and the model so far "
                   "is saved, usable, and said to be cut short.")
@TARGET
@RUNS_DIR
@friendly
def train(spec_path, name, resume, time_budget, trust_remote_code, overwrite, target, runs_dir, **options):
    """Fine-tune on the whole train split; saves runs/<name>/."""
    deadline = time.monotonic() + parse_duration(time_budget) if time_budget is not None else None
    if target and click.get_current_context().get_parameter_source("model") is ParameterSource.DEFAULT:
        options["model"] = DEFAULT_ROAD
    model_args, train_args, max_length = split_args(options)
    train_args = replace(train_args, deadline=deadline)
    directory, stats = train_run(open_spec(spec_path, max_length), model_args, train_args, name, resume, overwrite,
                                 trust_remote_code, runs=Path(runs_dir), target=target)
    loss = f"; final loss {stats['final_loss']}" if stats["final_loss"] is not None else ""
    say(f"trained {directory} in {took(stats['train_seconds'])}{loss}")
    cut = stats.get("stopped_by_time_budget")
    if cut:
        say(f"time budget: training stopped at step {cut['steps']} of {cut['planned']} ({time_budget}); "
            "the saved model is the one at that step")


@click.command()
@spec_option
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
@click.option("--time-budget", default=None,
              help="Time for the label's prediction, from the command's start (30m, 2h, 90s): the rows the run has no "
                   "time for, by the rate measured on its first rows, are decided by --fallback, counted per row. "
                   "[targets] columns are predicted after it, without a limit.")
@click.option("--fallback", default=None, help="With --time-budget: a fast run of this spec (TF-IDF, a smaller model).")
@click.option("--second-pass", default=None, metavar="RUN",
              help="With --time-budget: when every row is predicted with time to spare, another run of this spec "
                   "re-scores the least certain rows (nearest the threshold, cut point or runner-up) while the time "
                   "lasts, its probabilities averaged in, each such row marked.")
@TRUST_REMOTE_CODE
@RUNS_DIR
@friendly
def predict(spec_path, split, run, mode, threshold, out, allow_spec_change, trust_remote_code, report_out, models,
            target_runs, time_budget, fallback, second_pass, runs_dir):
    """Predict a split and write a validated submission."""
    started = time.monotonic()
    budget = parse_duration(time_budget) if time_budget is not None else None
    spec = open_spec(spec_path)
    result = predict_split(spec, split, run, mode, threshold, out, runs=Path(runs_dir), allow_spec_change=allow_spec_change,
                           trust_remote_code=trust_remote_code, models=models,
                           target_runs=_column_runs(target_runs, spec), time_budget=budget, fallback=fallback,
                           second_pass=second_pass)
    if result is None:                      # not rank 0: rank 0 wrote the submission
        return
    path, results = result
    for column_result in results:
        say(column_result.column.prediction_line(column_result.stats, column_result.predictions_file))
        if "time_budget_s" in column_result.stats:
            say(_budget_line(column_result.stats, time.monotonic() - started))
    say(f"submission: {path}")
    label_runs = [r.run.directory for r in results if r.column.target is None]
    if report_out and label_runs:
        say(f"report: {write_report(label_runs, spec, report_out, split)}")


def _budget_line(stats, seconds):
    """What a time budget did: the rows each road decided, the time spent against the budget."""
    return (f"time budget: {minutes(seconds)} of {minutes(stats['time_budget_s'])} spent; "
            f"{stats['main_rows']} rows by the run, {stats['fallback_rows']} by the fallback run {stats['fallback_run']}"
            + (f", {stats['second_pass_rows']} re-scored by the second-pass run {stats['second_pass_run']} and averaged"
               if "second_pass_run" in stats else "")
            + " (each row's road is in the predictions file's decided column)")


def _column_runs(pairs, spec):
    """--target-run COLUMN=RUN pairs as a dict, each column one of the spec's targets."""
    runs = {}
    for pair in pairs:
        column, _, run = pair.partition("=")
        if not run or column not in spec.targets:
            raise KitError(f"--target-run {pair!r}: write COLUMN=RUN with COLUMN one of {sorted(spec.targets) or 'none'}")
        runs[column] = run
    return runs


@click.command()
@spec_option
@functools.partial(model_options, multiple_models=True)
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--holdout", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=None,
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
@click.option("--zero-shot", is_flag=True,
              help="Score each --model untrained on the training rows (P(label word) of the spec's prompt): "
                   "choose a base model before fine-tuning. No folds and no run folder (the frozen-state cache keeps "
                   "the lower blocks' states for the fine-tuning that follows).")
@click.option("--rows", "sample", type=click.IntRange(min=2), default=None,
              help="With --zero-shot: a stratified sample of this many training rows (seeded by --fold-seed).")
@TARGET
@RUNS_DIR
@friendly
def cv(spec_path, folds, holdout, fold_seed, mode, sweep, name, no_baseline, trust_remote_code, overwrite,
       report_out, keep_models, zero_shot, sample, target, runs_dir, **options):
    """Cross-validate: OOF score, per-fold spread, the TF-IDF baseline beside it."""
    models = options.pop("model") or ((DEFAULT_ROAD,) if target else (DEFAULTS_M.model,))
    model_args, train_args, max_length = split_args(options)
    spec = open_spec(spec_path, max_length)
    if zero_shot or sample is not None:
        return _zero_shot(spec, model_args, train_args, models, sample, fold_seed, trust_remote_code, zero_shot,
                          {"--sweep": sweep, "--target": target, "--keep-models": keep_models, "--name": name,
                           "--holdout": holdout, "--report": report_out})
    column = column_of(spec, target, "cross-validate")
    if target and (sweep or keep_models):
        raise KitError(f"{'--sweep' if sweep else '--keep-models'} is for the label's cv; with --target, "
                       "compare roads with --model A --model B")
    refuse_unless_supported(column, train_args)       # before the baseline row spends any time
    runs = Path(runs_dir)
    configs = []   # (name, spec, ModelArgs, TrainArgs)
    if sweep:
        for entry in read_sweep(sweep):
            configs.append((f"{Path(sweep).stem}-{entry['name']}",
                            *split_overrides(entry, spec, model_args, train_args,
                                             f"{sweep} [[config]] {entry['name']}")))
    else:
        for model in models:
            configs.append((name if name and len(models) == 1 else None, spec, replace(model_args, model=model),
                            train_args))
    if not no_baseline and not any(m.model == TFIDF for _, _, m, _ in configs):
        configs.insert(0, (None, spec, ModelArgs(model=TFIDF), without_levers(train_args)))
    results = []
    for config_name, s, m, t in configs:
        scores = cross_validate(s, m, t, folds, holdout, fold_seed, mode, config_name, overwrite, trust_remote_code,
                                runs=runs, keep_models=keep_models, target=target)
        if scores is None:                  # not rank 0: its folds are in rank 0's results
            continue
        say(column.format_scores(scores) + "\n")
        results.append(scores)
    if not results:
        return
    summary = column.table(results)
    baseline = next((s for s in results if s["config"]["model"] == TFIDF), None)
    say(summary)
    if baseline and len(results) > 1 and column.verdict(results, baseline):
        say(column.verdict(results, baseline))
    if len(results) > 1:
        stem = Path(sweep).stem if sweep else f"{column.spec.name}-compare"
        write_text(runs / f"{stem}-table.md", summary + "\n")
        write_json(runs / f"{stem}-table.json", results)
        say(f"table saved: {runs / f'{stem}-table.md'}")
    if report_out:
        say(f"report: {write_report([runs / s['config']['name'] for s in results], spec, report_out)}")


def _zero_shot(spec, model_args, train_args, models, sample, seed, trust_remote_code, asked, others):
    """kit cv --zero-shot: the candidates' table, nothing trained."""
    if not asked:
        raise KitError("--rows samples the rows of --zero-shot; kit cv scores every training row out of fold")
    given = [option for option, value in others.items() if value]
    if given:
        raise KitError(f"{given[0]} does not apply to --zero-shot (no folds are fitted and no run is written)")
    results = zero_shot(spec, model_args, train_args, models, sample, seed, trust_remote_code)
    say(format_zero_shot(results, spec))


@click.command("blend")
@spec_option
@click.argument("runs", nargs=-1)
@click.option("--split", default=None, help="Also blend the runs' predictions-<split>.csv into a submission.")
@click.option("--out", default=str(SUBMISSION), show_default=True, help="The submission (with --split).")
@click.option("--name", default=None, help="Blend folder under runs/ (default: blend-<hash of the runs>).")
@RUN_NAMES
@RUNS_DIR
@friendly
def blend_command(spec_path, runs, split, out, name, run_options, runs_dir):
    """Blend runs (names under runs/ or paths): simplex weights fitted on their OOF rows."""
    names = [*runs, *run_options]
    if not names:
        raise KitError("blend: name the runs to blend (kit blend RUN RUN ..., or --run RUN --run RUN)")
    summary = blend(open_spec(spec_path), names, split, out, name, runs_dir=Path(runs_dir))
    say(format_blend(summary))
    say(f"blend folder: {summary['directory']}")
    if split is not None:
        cut = f", threshold {summary['threshold']:.4g}" if summary["threshold"] is not None else ""
        say(f"submission: {out} ({split}{cut})")


@click.command("auto")
@spec_option
@click.option("--budget", default="60m", show_default=True,
              help="Time for every road together: 30m, 2h, 90s (a plain number is minutes). A road whose estimate "
                   "does not fit what is left is listed, not run.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--holdout", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=None,
              help="Hold out this fraction once instead of k folds (no nested blend: blends are then not recommended).")
@click.option("--fold-seed", type=int, default=0, show_default=True)
@click.option("--model", "models", multiple=True,
              help="Another LLM road (a model directory: the larger model of a GPU), tried after the default ones.")
@click.option("--write", "split", default=None, help="Also write the chosen road's submission for this split.")
@click.option("--out", default=str(SUBMISSION), show_default=True, help="The submission (with --write).")
@TRUST_REMOTE_CODE
@RUNS_DIR
@friendly
def auto_command(spec_path, budget, folds, holdout, fold_seed, models, split, out, trust_remote_code, runs_dir):
    """Try the roads under one budget on the same folds, score them honestly, and name what to upload."""
    spec = open_spec(spec_path)
    if split is not None:                          # what --write needs is checked before any road runs
        spec.split_path(split)
        check_destination(out, spec, Path(runs_dir))
        for column in predicted_columns(spec):
            if column.target is not None:
                find_run(column, None, runs=Path(runs_dir))
    table, best = auto(spec, parse_budget(budget), folds, holdout, fold_seed, models, Path(runs_dir),
                       trust_remote_code)
    say(table)
    if split is not None and best is not None:
        write_choice(spec, best, split, out, Path(runs_dir))
        say(f"submission: {out} ({split}, {best['road']})")
