"""The stages as functions: train a run folder, predict a split into a validated submission.

A run folder (runs/<name>/) holds everything needed to reproduce it: the spec as read, the
arguments, the trained model, the training metrics, and (after `kit cv`) the OOF scores.
"""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import dist, submit
from .data import atomic_write, load_rows, read_csv, write_json
from .errors import KitError
from .logs import log
from .metrics import decide
from .models import Prediction, Task, load_model, make_model
from .runs import RUNS, fingerprint, open_run, trained_run

SUBMISSION = Path("submissions") / "submit.csv"
PREDICT_CHUNK = int(os.environ.get("KIT_PREDICT_CHUNK", 256))   # rows per resumable unit of prediction


def fit_timed(model, rows, encoded=None, checkpoint=None, resume=False, checkpoint_key=None):
    """Fit and return the training figures every report shows."""
    start = time.time()
    model.fit(rows, checkpoint=checkpoint, resume=resume, encoded=encoded, checkpoint_key=checkpoint_key)
    seconds = time.time() - start
    losses = getattr(model, "loss_log", [])
    targs = getattr(model, "train_args", None)
    seen = len(losses) * targs.batch_size * targs.grad_accum if losses else len(rows)
    stats = {"train_seconds": round(seconds, 1), "train_rows": len(rows), "steps": len(losses),
             "train_rows_per_s": round(seen / seconds, 2) if seconds else None,
             "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}
    stats.update(getattr(model, "train_stats", {}))
    return stats


def require_label(spec, command):
    """A spec whose only task is a [targets] column has no label model to train or score."""
    if not spec.has_labels:
        raise KitError(f"{spec.path} has no [columns] label; {command} a predicted column with --target "
                       f"{next(iter(spec.targets))}")


def train_run(spec, model_args, train_args, name=None, resume=False, overwrite=False,
              trust_remote_code=False, runs=RUNS, target=None):
    """`kit train`: fit on the whole train split and save the run's model (the label's, or with
    target the model of a predicted [targets] column)."""
    from . import levers
    lever_stats = {}
    if target:
        from .targets import setup
        levers.refuse_for_target(train_args)
        spec, rows, model, model_args = setup(spec, target, model_args, train_args, trust_remote_code)
    else:
        require_label(spec, "train")
        rows, _ = load_rows(spec, "train")
        model = make_model(Task.from_spec(spec), model_args, train_args, trust_remote_code)
        model_args = model.resolve_args()      # `auto` -> this device's values, part of the run's key
        # pseudo rows and teacher probabilities; their fingerprints join the run's key
        rows, train_args, lever_stats = levers.for_train(spec, rows, model, train_args, runs)
        model.train_args = train_args
    run = open_run(spec, model_args, train_args, name, overwrite, runs)
    if dist.is_main():
        run.clear_predict_progress()
    ranks = f" on {dist.world_size()} ranks ({dist.backend()})" if dist.active() else ""
    log(f"train: {len(rows)} rows, model {model_args.model}, head {model_args.head}, run {run.directory}{ranks}")
    stats = fit_timed(model, rows, checkpoint=run.checkpoint, resume=resume, checkpoint_key=run.key)
    stats.update(lever_stats, world_size=dist.world_size())
    if not dist.is_main():           # rank 0 writes the model; the others are done
        return run.directory, stats
    staging = run.directory / "model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save(staging)
    shutil.rmtree(run.model_dir, ignore_errors=True)
    staging.rename(run.model_dir)
    write_json(run.train_metrics, {**stats, "model_id": model.model_id, "loss_log": getattr(model, "loss_log", [])})
    run.checkpoint.unlink(missing_ok=True)
    log(f"train: done in {stats['train_seconds']} s ({stats['train_rows_per_s']} rows/s), "
        f"final loss {stats['final_loss']}; saved {run.model_dir}")
    return run.directory, stats


def predict_resumable(model, rows, mode, progress_file=None, chunk=None):
    """Predict in chunks, saving each finished chunk, so a killed run resumes where it stopped."""
    chunk = chunk or PREDICT_CHUNK
    # the model's id (new at every fit), the rows, the mode and the chunking: progress made
    # under anything else is never reused
    key = fingerprint(model.model_id, rows.ids, rows.texts, mode, chunk)
    done = _read_progress(progress_file, key)
    if done:
        log(f"predict: resuming, {len(done)} finished chunk(s) of {chunk} rows reused")
    for start in range(0, len(rows), chunk):
        if str(start) in done:
            continue
        part = model.predict(rows.subset(range(start, min(start + chunk, len(rows)))), mode)
        done[str(start)] = {"probs": part.probs.tolist(), "decided": part.decided,
                            "answers": part.answers, "stats": part.stats,
                            "parsed": None if part.parsed is None else part.parsed.tolist()}
        if progress_file:
            write_json(progress_file, {"key": key, "chunks": done})
    return _join_chunks([done[str(s)] for s in range(0, len(rows), chunk)])


def _predict_rows(model, rows, mode, progress_file):
    """One process: resumable chunks. N ranks: rank r predicts rows r, r+N, ...; rank 0 gathers
    them back into the original order (the other ranks get None)."""
    if not dist.active():
        return predict_resumable(model, rows, mode, progress_file)
    mine = list(range(dist.rank(), len(rows), dist.world_size()))
    shards = dist.gather((mine, model.predict(rows.subset(mine), mode)))
    return _merge_shards(shards, len(rows)) if dist.is_main() else None


def _merge_shards(shards, n):
    first = shards[0][1]
    probs = np.zeros((n, first.probs.shape[1]))
    decided, answers = [None] * n, None if first.answers is None else [None] * n
    parsed = None if first.parsed is None else np.full(n, -1)
    for index, part in shards:
        probs[index] = part.probs
        for j, i in enumerate(index):
            decided[i] = part.decided[j]
            if answers is not None:
                answers[i] = part.answers[j]
        if parsed is not None:
            parsed[index] = part.parsed
    return Prediction(probs, decided, answers, parsed, _combined_stats([p.stats for _, p in shards]))


def _read_progress(progress_file, key):
    if not progress_file or not Path(progress_file).exists():
        return {}
    try:
        saved = json.loads(Path(progress_file).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = {}
    if saved.get("key") != key:
        log(f"predict: {progress_file} was made by another model or settings; predicting from the start")
        return {}
    return saved["chunks"]


def _join_chunks(parts):
    answers = None if parts[0]["answers"] is None else sum((p["answers"] for p in parts), [])
    parsed = None if parts[0]["parsed"] is None else np.concatenate([p["parsed"] for p in parts])
    return Prediction(np.concatenate([np.asarray(p["probs"]) for p in parts]),
                      sum((p["decided"] for p in parts), []), answers, parsed,
                      _combined_stats([p["stats"] for p in parts]))


def _combined_stats(parts):
    """Prediction stats of several parts of one split (chunks, ranks' shares) as one."""
    stats = {}
    for key in ("rows", "truncated_rows", "fallback_rows", "frozen_rows_reused", "frozen_rows_computed",
                "frozen_seconds"):
        if key in parts[0]:
            stats[key] = round(sum(p.get(key, 0) for p in parts), 1)
    if "mean_tokens" in parts[0]:
        stats["mean_tokens"] = round(sum(p["mean_tokens"] * p["rows"] for p in parts) / max(1, stats["rows"]), 1)
    return stats


def predictions_frame(spec, ids, prediction, labels):
    """Per-row predictions: id, label, probability per label, how it was decided, raw answer."""
    frame = pd.DataFrame({"id": ids, "label": [spec.labels[i] for i in labels]})
    for j, label in enumerate(spec.labels):
        frame[f"p_{label}"] = np.round(prediction.probs[:, j], 6)
    frame["decided"] = prediction.decided
    if prediction.answers is not None:
        frame["answer"] = prediction.answers
    return frame


def resolve_threshold(spec, threshold, run):
    """None / a number / 'oof' (the threshold kit cv tuned on out-of-fold rows of this run)."""
    if threshold in (None, ""):
        return None
    if len(spec.labels) != 2:
        raise KitError("--threshold applies to binary tasks only")
    if str(threshold) == "oof":
        if not run.cv_scores.exists():
            raise KitError(f"--threshold oof: {run.cv_scores} not found; run `python -m kit cv` with the same "
                           "settings as the training run first (it writes into the same run folder)")
        scores = json.loads(run.cv_scores.read_text())
        if scores.get("run_key") != run.key or "tuned_threshold" not in scores:
            raise KitError(f"--threshold oof: {run.cv_scores} was not made by this run's settings; "
                           "run `python -m kit cv` again with them")
        return float(scores["tuned_threshold"])
    try:
        value = float(threshold)
    except ValueError:
        raise KitError(f"--threshold {threshold!r}: give a number in (0, 1) or 'oof'") from None
    if not 0 < value < 1:
        raise KitError(f"--threshold {value}: must be between 0 and 1")
    return value


def load_predictor(run, models="auto", trust_remote_code=False):
    """The run's full-train model, or its fold ensemble (`kit cv --keep-models`): averaged
    probabilities ("folds") or one adapter of averaged LoRA weights ("merged"). auto: the
    full-train model when there is one, else the fold ensemble. Returns (predictor, the model
    folders that went in)."""
    from .models.folds import FoldEnsemble, merge_fold_adapters
    has_full = (run.model_dir / "kit_model.json").is_file()
    if models == "auto":
        models = "full" if has_full else "folds"
    if models == "full":
        if not has_full:
            raise KitError(f"run {run.directory}: no full-train model; run `python -m kit train` with its settings, "
                           "or predict with its fold models (--models folds)")
        return load_model(run.model_dir, trust_remote_code), [str(run.model_dir)]
    folds = run.fold_models
    if not folds:
        raise KitError(f"run {run.directory}: no fold models; run `python -m kit cv --keep-models` with its settings")
    _refuse_stale_fold_models(run, folds)
    if models == "merged":
        merged = merge_fold_adapters(folds, run.merged_folds)
        return load_model(merged, trust_remote_code), [str(p) for p in folds]
    return FoldEnsemble([load_model(p, trust_remote_code) for p in folds], folds), [str(p) for p in folds]


def _refuse_stale_fold_models(run, folds):
    """The fold models must be those of the run's last CV: a CV on other folds (another fold seed
    or count, the same run folder) leaves the old ones behind, and averaging them with new ones,
    or alone, is not the ensemble the CV scored."""
    from .models import Estimator
    for path in folds:
        number = int(path.name.split("-")[1])
        try:
            result = json.loads(run.fold_result(number).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            result = None
        # fold results written before they named their model carry no model_id key: nothing to compare
        stale = result is None or ("model_id" in result and
                                   result["model_id"] != Estimator.read_model_file(path).get("model_id"))
        if stale:
            raise KitError(f"run {run.directory}: {path.name} was kept by an earlier CV on other folds, not by the "
                           "last one; re-run `python -m kit cv --keep-models` with the folds you want")


def predict_split(spec, split="test", run=None, mode="score", threshold=None, out=SUBMISSION, runs=RUNS,
                  allow_spec_change=False, trust_remote_code=False, models="auto", target_runs=None):
    """`kit predict`: the label's predictions for a split and every predicted [targets] column,
    then a validated submission written atomically. Returns (submission path, the label's
    (per-row file, stats) or None, {target column: stats}); None on ranks other than 0."""
    rows, frame = load_rows(spec, split)       # input errors first: they need no trained run
    submit.check_destination(out)             # and a submission that could not be written
    from .targets import find_target_runs, predict_targets
    found = find_target_runs(spec, target_runs, allow_spec_change, runs)   # a missing keyword model: before label work
    labels = label_result = None
    if spec.has_labels:
        label_result = _predict_labels(spec, split, rows, run, mode, threshold, runs, allow_spec_change,
                                       trust_remote_code, models)
        if label_result is None:       # another rank: rank 0 gathered its rows and writes
            return None
        labels, run, table = label_result[:3]
    predicted, promised, target_stats = predict_targets(spec, split, frame, found, trust_remote_code)
    submission = submit.build(spec, frame, rows.ids, labels, spec.split_path(split), predicted)
    submit.validate(spec, submission, rows.ids, split, where=f"submission for {split}", promised=promised)
    submit.write(submission, out)
    if label_result is None:
        submit.write_scores_beside(out, None)
        return out, None, target_stats
    stats = label_result[3]
    atomic_write(run.predictions(split), lambda tmp: table.to_csv(tmp, index=False))
    submit.write_scores_beside(out, run.cv_scores if run.cv_scores.exists() else None)
    run.predict_progress(split, mode).unlink(missing_ok=True)
    write_json(run.predict_stats(split), stats)
    return out, (run.predictions(split), stats), target_stats


def _predict_labels(spec, split, rows, run, mode, threshold, runs, allow_spec_change, trust_remote_code, models):
    """(label strings, run, per-row table, stats) of the label model; None on ranks other than 0."""
    run = trained_run(spec, run, allow_spec_change, runs)
    cut = resolve_threshold(spec, threshold, run)
    model, used = load_predictor(run, models, trust_remote_code)
    log(f"predict: {split} ({len(rows)} rows) with run {run.directory}"
        + (f", {len(used)} fold models" + (" merged into one adapter" if models == "merged" else " averaged")
           if used[0] != str(run.model_dir) else ""))
    start = time.time()
    prediction = _predict_rows(model, rows, mode, run.predict_progress(split, mode))
    seconds = time.time() - start
    if prediction is None:
        return None
    labels = decide(prediction.probs, prediction.parsed, cut if cut is not None else 0.5, positive=1)
    table = predictions_frame(spec, rows.ids, prediction, labels)
    stats = {"split": split, "run": str(run.directory), "rows": len(rows), "mode": mode,
             "seconds": round(seconds, 1), "rows_per_s": round(len(rows) / seconds, 2) if seconds else None,
             "threshold": cut if cut is not None else 0.5, "model_id": model.model_id, "models": used,
             "decided": {k: int(v) for k, v in pd.Series(prediction.decided).value_counts().items()},
             **prediction.stats}
    return [spec.labels[i] for i in labels], run, table, stats


def score_file(spec, pred_path, truth_path):
    """`kit score`: a predictions or submission file against a labelled CSV."""
    from .data import clean_ids, id_key, labelled_rows, normalise_labels, require_columns
    from .metrics import report
    truth_ids, truth = labelled_rows(spec, truth_path)
    truth_ids = [id_key(i) for i in truth_ids]            # '12.0' and '12' are the same id
    frame = read_csv(pred_path)
    id_col = next((c for c in ("id", spec.submission_id, spec.id_column) if c in frame.columns), None)
    label_col = next((c for c in ("label", spec.submission_label, spec.label_column) if c in frame.columns), None)
    if id_col is None or label_col is None:
        raise KitError(f"{pred_path}: needs an id column and a label column "
                       f"({spec.submission_id!r}/{spec.submission_label!r} or id/label); has {list(frame.columns)}")
    require_columns(frame, [id_col, label_col], pred_path, "to score")
    ids = [id_key(i) for i in clean_ids(frame, id_col, pred_path)]
    predicted = normalise_labels(frame[label_col].tolist(), spec.labels, pred_path, label_col)
    by_id = dict(zip(ids, predicted))
    missing = [i for i in truth_ids if i not in by_id]
    extra = sorted(set(ids) - set(truth_ids))
    if missing or extra:
        raise KitError(f"{pred_path}: ids do not match {truth_path}: "
                       f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})")
    prob_cols = [f"p_{label}" for label in spec.labels]
    if all(c in frame.columns for c in prob_cols):
        by_id_probs = dict(zip(ids, frame[prob_cols].astype(float).to_numpy()))
        probs = np.array([by_id_probs[i] for i in truth_ids])
    else:  # a submission file: hard labels only
        probs = np.eye(len(spec.labels))[[by_id[i] for i in truth_ids]]
    parsed = np.array([by_id[i] for i in truth_ids])
    return report(truth, probs, spec.labels, spec.metric, parsed=parsed)
