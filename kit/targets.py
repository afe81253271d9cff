"""Predicted submission columns ([targets] in the spec): keyword lists today.

A target is learned, cross-validated and predicted the way the label is: its own spec view
(Spec.for_target: its answers, input text and instruction), run folders keyed by what decides
the model (runs/<spec>.<column>-<model>-...), the same fold assignment, finished folds reused
only under the same key. Its scores are keyword precision, recall and F1 per row, averaged:
exact after normalisation, and partial (token overlap) beside it.
"""
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import dist
from .data import Rows, atomic_write, clean_ids, read_csv, render_inputs, require_columns, write_json
from .errors import KitError
from .keywords import infer_separator, keyword_scores, paper_scores, split_keywords
from .logs import log
from .models.keywords import KeywordExtractor, KeywordTask, make_keyword_model
from .runs import RUNS, fingerprint, open_run, trained_run

def target_rows(target_spec, split, frame=None):
    """A split as Rows for a target: the target's input text and, where the split has the
    source column, its answers as keyword lists (labels)."""
    path = target_spec.split_path(split)
    frame = read_csv(path) if frame is None else frame
    require_columns(frame, [target_spec.id_column], path, "the spec's [columns] id")
    ids = clean_ids(frame, target_spec.id_column, path)
    texts, _ = render_inputs(frame, target_spec.input_template, path)
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


def setup(spec, column, model_args, train_args, trust_remote_code=False):
    """(the target's spec, its training rows, the estimator, its resolved arguments)."""
    target_spec = spec.for_target(column)
    rows, frame = target_rows(target_spec, "train")
    model = make_keyword_model(keyword_task(target_spec, frame), model_args, train_args, trust_remote_code)
    return target_spec, rows, model, model.resolve_args()


# -- cross-validation -------------------------------------------------------------------------
def cross_validate_target(spec, column, model_args, train_args, folds=5, holdout=None, fold_seed=0, name=None,
                          overwrite=False, trust_remote_code=False, runs=RUNS):
    """`kit cv --target COLUMN`: every fold fits on the other folds' rows and writes keywords
    for its own; one score over all held-out rows."""
    from .cv import _saved_fold, assign_folds
    if dist.active():
        raise KitError("kit cv --target runs in one process; start it without torchrun / accelerate launch")
    started = time.time()
    target_spec, rows, model, model_args = setup(spec, column, model_args, train_args, trust_remote_code)
    if rows.labels is None:
        raise KitError(f"[targets.{column}] has no source column: nothing to score keywords against")
    # the same shuffled folds for every road (no label to stratify on)
    fold = assign_folds(np.zeros(len(rows), dtype=int), folds, fold_seed, holdout)
    run = open_run(target_spec, model_args, train_args, name, overwrite, runs)
    key = fingerprint(run.key, fold.tolist(), "keywords")
    results = []
    numbers = sorted(set(fold.tolist()) - {-1})
    for number in numbers:
        log(f"cv: {column} fold {number + 1} of {len(numbers)} ({run.name})")
        saved = _saved_fold(run.fold_result(number), key)
        if saved is None:
            fresh = make_keyword_model(model.task, model_args, train_args, trust_remote_code)
            saved = _target_fold(fresh, run, key, number, fold, rows)
        else:
            log(f"cv: fold {number + 1} already done, reused ({run.fold_result(number)})")
        results.append(saved)
    scores = summarise_target(target_spec, rows, fold, results, run, model.task.separator)
    scores["wall_seconds"] = round(time.time() - started, 1)
    scores["run_key"], scores["cv_key"] = run.key, key
    scores["config"] = {"name": run.name, "model": model_args.model, "head": model_args.head, "target": column,
                        "folds": folds, "holdout": holdout, "fold_seed": fold_seed, "seed": train_args.seed}
    write_json(run.cv_scores, scores)
    return scores


def _target_fold(model, run, key, number, fold, rows):
    """Fit a fresh model on the rows outside the fold, write keywords for the fold's rows."""
    from .pipeline import fit_timed
    train_index, held_index = np.flatnonzero(fold != number), np.flatnonzero(fold == number)
    checkpoint = run.fold_checkpoint(number)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    stats = fit_timed(model, rows.subset(train_index), checkpoint=checkpoint, resume=True,
                      checkpoint_key=fingerprint(key, number))
    start = time.time()
    prediction = model.predict(rows.subset(held_index))
    seconds = time.time() - start
    result = {"key": key, "fold": number, "index": held_index.tolist(), "keywords": prediction.keywords,
              "decided": prediction.decided, "answers": prediction.answers,
              "stats": {**stats, "loss_log": getattr(model, "loss_log", []), "predict_seconds": round(seconds, 1),
                        "predict_rows_per_s": round(len(held_index) / seconds, 2) if seconds else None}}
    write_json(run.fold_result(number), result)
    checkpoint.unlink(missing_ok=True)
    return result


def summarise_target(target_spec, rows, fold, results, run, separator):
    """Held-out keywords -> the scores, per-fold spread, and oof.csv (one row per held-out row)."""
    n = len(rows)
    predicted, decided, answers = [[] for _ in range(n)], [""] * n, [""] * n
    for result in results:
        for i, position in enumerate(result["index"]):
            predicted[position] = result["keywords"][i]
            decided[position] = result["decided"][i]
            answers[position] = (result["answers"] or [""] * len(result["index"]))[i]
    held = np.flatnonzero(fold >= 0)
    scores = keyword_scores([predicted[i] for i in held], [rows.labels[i] for i in held])
    metric = target_spec.metric
    per_fold = [keyword_scores([predicted[i] for i in r["index"]], [rows.labels[i] for i in r["index"]])[metric]
                for r in results]
    scores.update(metric=metric, per_fold=[round(v, 4) for v in per_fold],
                  fold_mean=round(float(np.mean(per_fold)), 4), fold_std=round(float(np.std(per_fold)), 4),
                  fallback_rows=sum(d == "fallback" for d in decided))
    stats = [r["stats"] for r in results]
    for part in ("train", "predict"):
        scores[f"{part}_seconds"] = round(sum(s[f"{part}_seconds"] for s in stats), 1)
        scores[f"{part}_rows_per_s"] = round(float(np.mean([s[f"{part}_rows_per_s"] or 0 for s in stats])), 2)
    pairs = [paper_scores(predicted[i], rows.labels[i]) for i in held]
    oof = pd.DataFrame({"id": [rows.ids[i] for i in held],
                        "true": [separator.join(rows.labels[i]) for i in held],
                        "predicted": [separator.join(predicted[i]) for i in held],
                        "exact_f1": [round(p[0], 4) for p in pairs], "partial_f1": [round(p[1], 4) for p in pairs],
                        "decided": [decided[i] for i in held], "fold": fold[held]})
    if any(answers):
        oof["answer"] = [answers[i] for i in held]
    atomic_write(run.oof, lambda tmp: oof.to_csv(tmp, index=False))
    return scores


def format_target_scores(scores):
    metric = scores["metric"]
    lines = [f"{scores['config']['name']}: {metric} {scores[metric]:.4f} (held-out rows: {scores['rows']}); "
             f"per fold {scores['fold_mean']:.4f} ± {scores['fold_std']:.4f}",
             f"exact P/R/F1 {scores['exact_precision']:.4f} / {scores['exact_recall']:.4f} / {scores['exact_f1']:.4f}; "
             f"partial P/R/F1 {scores['partial_precision']:.4f} / {scores['partial_recall']:.4f} / "
             f"{scores['partial_f1']:.4f}; {scores['mean_predicted']} keywords per row (gold {scores['mean_gold']})"]
    if scores.get("fallback_rows"):
        lines.append(f"{scores['fallback_rows']} row(s) fell back from generation to the extractor")
    lines.append(f"wall {scores['wall_seconds']} s: train {scores['train_seconds']} s, "
                 f"predict {scores['predict_seconds']} s ({scores['predict_rows_per_s']} rows/s)")
    return "\n".join(lines)


def target_table(all_scores):
    """One row per road: the comparison a competitor decides on."""
    lines = ["| config | exact F1 | partial F1 | exact P | exact R | keywords/row | fallback | train s | predict s |",
             "|" + " --- |" * 9]
    for s in all_scores:
        lines.append(f"| {s['config']['name']} | {s['exact_f1']:.4f} | {s['partial_f1']:.4f} | "
                     f"{s['exact_precision']:.4f} | {s['exact_recall']:.4f} | {s['mean_predicted']} | "
                     f"{s['fallback_rows']} | {s['train_seconds']:.0f} | {s['predict_seconds']:.0f} |")
    return "\n".join(lines)


# -- prediction -------------------------------------------------------------------------------
def find_target_run(spec, column, run_name=None, allow_spec_change=False, runs=RUNS):
    """The latest trained run of this target (or --target-run); None for a target with no
    source and no run: its extractor needs no training. Cheap: kit predict checks every target
    before the label's prediction work."""
    target_spec = spec.for_target(column)
    try:
        return trained_run(target_spec, run_name, allow_spec_change, runs)
    except KitError as error:
        if run_name is None and target_spec.label_column is None:
            return None
        if run_name is None and str(error).startswith("no trained run"):
            raise KitError(f"[targets.{column}]: no trained run for it in {runs}/; train it with "
                           f"`python -m kit train --spec {spec.path} --target {column}`") from None
        raise KitError(f"[targets.{column}]: {error}") from None


def find_target_runs(spec, target_runs=None, allow_spec_change=False, runs=RUNS):
    """{column: its run, or None for an extractor that needs none} for every [targets] column;
    the errors (no trained run, another spec version, ranks) come before any prediction work."""
    if spec.targets and dist.active():
        raise KitError("predicted [targets] columns are written in one process; run kit predict without torchrun")
    return {column: find_target_run(spec, column, (target_runs or {}).get(column), allow_spec_change, runs)
            for column in spec.targets}


def target_predictor(target_spec, run, trust_remote_code=False):
    """The estimator of a target column: its run's model, or an extractor with nothing to learn."""
    from .models import load_model
    if run is not None:
        return load_model(run.model_dir, trust_remote_code)
    return KeywordExtractor(keyword_task(target_spec)).fit(Rows([], [], None))


def predict_targets(spec, split, frame, found, trust_remote_code=False):
    """Every [targets] column for a split (found: find_target_runs), as three dicts by column:
    the joined strings per row (what the submission holds), per row whether a value is owed
    (the row has text), and the stats. Each target run keeps its per-row predictions
    (predictions-<split>.csv)."""
    values_by, promised_by, stats_by = {}, {}, {}
    for column in spec.targets:
        run, target_spec = found[column], spec.for_target(column)
        model = target_predictor(target_spec, run, trust_remote_code)
        rows, _ = target_rows(target_spec, split, frame)
        log(f"predict: {column} for {split} ({len(rows)} rows) with "
            + (f"run {run.directory}" if run else f"the {model.args.model} extractor (nothing to train)"))
        start = time.time()
        prediction = _predict_resumable(model, rows, run.predict_progress(split, "keywords") if run else None)
        seconds = time.time() - start
        separator = model.task.separator
        values = [separator.join(keywords) for keywords in prediction.keywords]
        stats = {"column": column, "split": split, "run": str(run.directory) if run else None, "rows": len(rows),
                 "seconds": round(seconds, 1), "model_id": model.model_id,
                 "empty_rows": sum(not v for v in values),
                 "decided": {k: int(v) for k, v in pd.Series(prediction.decided).value_counts().items()},
                 **prediction.stats}
        if rows.labels is not None:       # a split with its answers (a labelled test copy): score it too
            stats["scores"] = keyword_scores(prediction.keywords, rows.labels)
            if Path(target_spec.split_path(split)).resolve() == Path(target_spec.train).resolve():
                stats["scores"]["on_training_rows"] = True
                log(f"predict: warning: split {split} is the file {column} was trained on; its keyword scores "
                    "are not held-out scores (use kit cv --target)")
        if run is not None:
            table = pd.DataFrame({"id": rows.ids, column: values, "decided": prediction.decided})
            if prediction.answers is not None:
                table["answer"] = prediction.answers
            atomic_write(run.predictions(split), lambda tmp: table.to_csv(tmp, index=False))
            write_json(run.predict_stats(split), stats)
            run.predict_progress(split, "keywords").unlink(missing_ok=True)
        values_by[column], stats_by[column] = values, stats
        promised_by[column] = [bool(text.strip()) for text in rows.texts]
    return values_by, promised_by, stats_by


def _predict_resumable(model, rows, progress_file):
    """The LLM writes in chunks, each saved as it finishes, so a killed run resumes (keyed like
    the label's progress: the model's id, the rows, the chunking). An extractor runs in one
    piece: its TF-IDF weights are over the whole split."""
    from .models.keywords import KeywordPrediction, KeywordWriter
    from .pipeline import PREDICT_CHUNK, _read_progress
    chunk = PREDICT_CHUNK if isinstance(model, KeywordWriter) else max(1, len(rows))
    key = fingerprint(model.model_id, rows.ids, rows.texts, "keywords", chunk)
    done = _read_progress(progress_file, key)
    if done:
        log(f"predict: resuming, {len(done)} finished chunk(s) of {chunk} rows reused")
    for start in range(0, len(rows), chunk):
        if str(start) not in done:
            part = model.predict(rows.subset(range(start, min(start + chunk, len(rows)))))
            done[str(start)] = {"keywords": part.keywords, "decided": part.decided, "answers": part.answers,
                                "fallback_rows": part.stats.get("fallback_rows", 0)}
            if progress_file:
                write_json(progress_file, {"key": key, "chunks": done})
    parts = [done[str(start)] for start in range(0, len(rows), chunk)]
    answers = None if not parts or parts[0]["answers"] is None else sum((p["answers"] for p in parts), [])
    return KeywordPrediction(sum((p["keywords"] for p in parts), []), sum((p["decided"] for p in parts), []),
                             answers, {"rows": len(rows), "fallback_rows": sum(p["fallback_rows"] for p in parts)})


def score_target_columns(spec, frame, pred_path, truth_path):
    """`kit score`: {column: keyword scores} for each [targets] column that the predictions
    file has and whose source column the labelled file has, matched by id."""
    from .data import id_key
    truth = read_csv(truth_path)
    out = {}
    for column, target in spec.targets.items():
        if column not in frame.columns or target.source is None or target.source not in truth.columns:
            continue
        id_column = next(c for c in ("id", spec.submission_id, spec.id_column) if c in frame.columns)
        predicted = dict(zip((id_key(i) for i in clean_ids(frame, id_column, pred_path)), frame[column]))
        truth_ids = [id_key(i) for i in clean_ids(truth, spec.id_column, truth_path)]
        missing = [i for i in truth_ids if i not in predicted]
        if missing:
            raise KitError(f"{pred_path}: {len(missing)} id(s) of {truth_path} have no {column} (e.g. {missing[:3]})")
        out[column] = keyword_scores([split_keywords(predicted[i]) for i in truth_ids],
                                     [split_keywords(v) for v in truth[target.source]])
    return out
