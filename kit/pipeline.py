"""The stages as functions: train a run folder, predict a split into a validated submission.

A run folder (runs/<name>/) holds everything needed to reproduce it: the spec as read, the
arguments, the trained model, the training metrics, and (after `kit cv`) the OOF scores.
"""
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from . import submit
from .data import atomic_write, load_rows, log, read_csv, write_json, write_text
from .errors import KitError
from .metrics import decide
from .models import TFIDF, Prediction, Task, load_model, make_model

RUNS = Path("runs")
SUBMISSION = Path("submissions") / "submit.csv"
PREDICT_CHUNK = int(os.environ.get("KIT_PREDICT_CHUNK", 256))   # rows per resumable unit of prediction


def run_name(spec, model_args):
    if model_args.model == TFIDF:
        return f"{spec.name}-tfidf"
    model = Path(model_args.model).name or "model"
    return f"{spec.name}-{model}-{model_args.head}"


def resolve_run(name=None, runs=RUNS):
    """A run folder by name, or the latest trained one."""
    if name is None:
        latest = runs / "LATEST"
        if not latest.exists():
            raise KitError(f"no trained run in {runs}/: run `python -m kit train` first or pass --run")
        name = latest.read_text().strip()
    directory = Path(name) if Path(name).is_dir() else runs / name
    if not (directory / "model").is_dir():
        raise KitError(f"run {name!r}: no trained model in {directory}/model; run `python -m kit train`")
    return directory


def save_run_config(directory, spec, model_args, train_args, extra=None):
    directory.mkdir(parents=True, exist_ok=True)
    write_text(directory / "spec.toml", spec.path.read_text(encoding="utf-8"))
    write_json(directory / "args.json", {"spec": str(spec.path), "model": asdict(model_args),
                                         "train": asdict(train_args), **(extra or {})})


def fit_timed(model, rows, encoded=None, checkpoint=None, resume=False):
    """Fit and return the training figures every report shows."""
    start = time.time()
    model.fit(rows, checkpoint=checkpoint, resume=resume, encoded=encoded)
    seconds = time.time() - start
    losses = getattr(model, "loss_log", [])
    targs = getattr(model, "train_args", None)
    seen = len(losses) * targs.batch_size * targs.grad_accum if losses else len(rows)
    stats = {"train_seconds": round(seconds, 1), "train_rows": len(rows), "steps": len(losses),
             "train_rows_per_s": round(seen / seconds, 2) if seconds else None,
             "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}
    stats.update(getattr(model, "train_stats", {}))
    return stats


def train_run(spec, model_args, train_args, name=None, resume=False, runs=RUNS):
    """`kit train`: fit on the whole train split and save runs/<name>/."""
    rows, _ = load_rows(spec, "train")
    directory = runs / (name or run_name(spec, model_args))
    save_run_config(directory, spec, model_args, train_args)
    model = make_model(Task.from_spec(spec), model_args, train_args)
    log(f"train: {len(rows)} rows, model {model_args.model}, head {model_args.head}, run {directory}")
    checkpoint = directory / "checkpoint.pt"
    stats = fit_timed(model, rows, checkpoint=checkpoint, resume=resume)
    staging = directory / "model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save(staging)
    shutil.rmtree(directory / "model", ignore_errors=True)
    staging.rename(directory / "model")
    write_json(directory / "train_metrics.json", {**stats, "loss_log": getattr(model, "loss_log", [])})
    checkpoint.unlink(missing_ok=True)
    write_text(runs / "LATEST", directory.name + "\n")
    log(f"train: done in {stats['train_seconds']} s ({stats['train_rows_per_s']} rows/s), "
        f"final loss {stats['final_loss']}; saved {directory}/model")
    return directory, stats


def _fingerprint(*parts):
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def predict_resumable(model, rows, mode, progress_file=None, chunk=None):
    """Predict in chunks, saving each finished chunk, so a killed run resumes where it stopped."""
    chunk = chunk or PREDICT_CHUNK
    key = _fingerprint(rows.ids, rows.texts, mode)
    done = {}
    if progress_file and Path(progress_file).exists():
        saved = json.loads(Path(progress_file).read_text())
        done = saved["chunks"] if saved.get("key") == key else {}
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


def _join_chunks(parts):
    answers = None if parts[0]["answers"] is None else sum((p["answers"] for p in parts), [])
    parsed = None if parts[0]["parsed"] is None else np.concatenate([p["parsed"] for p in parts])
    stats = {}
    for key in ("rows", "truncated_rows", "fallback_rows"):
        if key in parts[0]["stats"]:
            stats[key] = sum(p["stats"][key] for p in parts)
    if "mean_tokens" in parts[0]["stats"]:
        stats["mean_tokens"] = round(sum(p["stats"]["mean_tokens"] * p["stats"]["rows"] for p in parts)
                                     / max(1, stats["rows"]), 1)
    return Prediction(np.concatenate([np.asarray(p["probs"]) for p in parts]),
                      sum((p["decided"] for p in parts), []), answers, parsed, stats)


def predictions_frame(spec, ids, prediction, labels):
    """Per-row predictions: id, label, probability per label, how it was decided, raw answer."""
    frame = pd.DataFrame({"id": ids, "label": [spec.labels[i] for i in labels]})
    for j, label in enumerate(spec.labels):
        frame[f"p_{label}"] = np.round(prediction.probs[:, j], 6)
    frame["decided"] = prediction.decided
    if prediction.answers is not None:
        frame["answer"] = prediction.answers
    return frame


def resolve_threshold(spec, threshold, directory):
    """None / a number / 'oof' (the threshold kit cv tuned on out-of-fold rows of this run)."""
    if threshold in (None, ""):
        return None
    if len(spec.labels) != 2:
        raise KitError("--threshold applies to binary tasks only")
    if str(threshold) == "oof":
        scores = directory / "cv_scores.json"
        if not scores.exists():
            raise KitError(f"--threshold oof: {scores} not found; run `python -m kit cv` with the same "
                           "arguments (and --name) as the training run first")
        return float(json.loads(scores.read_text())["tuned_threshold"])
    try:
        value = float(threshold)
    except ValueError:
        raise KitError(f"--threshold {threshold!r}: give a number in (0, 1) or 'oof'") from None
    if not 0 < value < 1:
        raise KitError(f"--threshold {value}: must be between 0 and 1")
    return value


def predict_split(spec, split="test", run=None, mode="score", threshold=None, out=SUBMISSION, runs=RUNS):
    """`kit predict`: predictions for a split, then a validated submission written atomically."""
    rows, frame = load_rows(spec, split)       # input errors first: they need no trained run
    directory = resolve_run(run, runs)
    cut = resolve_threshold(spec, threshold, directory)
    model = load_model(directory / "model")
    trained = [spec.label_words[label] for label in spec.labels]
    if model.task.words != trained:
        raise KitError(f"run {directory} was trained for labels {model.task.words}, the spec {spec.path} "
                       f"has {trained}; pass --run with a run of this competition")
    start = time.time()
    progress = directory / f".predict-{split}-{mode}.progress.json"
    prediction = predict_resumable(model, rows, mode, progress)
    seconds = time.time() - start
    labels = decide(prediction.probs, prediction.parsed, cut if cut is not None else 0.5,
                    positive=1)
    table = predictions_frame(spec, rows.ids, prediction, labels)
    submission = submit.build(spec, frame, rows.ids, [spec.labels[i] for i in labels], spec.split_path(split))
    submit.validate(spec, submission, rows.ids, split, where=f"submission for {split}")
    pred_path = directory / f"predictions-{split}.csv"
    atomic_write(pred_path, lambda tmp: table.to_csv(tmp, index=False))
    submit.write(submission, out)
    if (directory / "cv_scores.json").exists():
        write_text(Path(out).parent / "cv_scores.json", (directory / "cv_scores.json").read_text())
    progress.unlink(missing_ok=True)
    stats = {"split": split, "rows": len(rows), "mode": mode, "seconds": round(seconds, 1),
             "rows_per_s": round(len(rows) / seconds, 2) if seconds else None,
             "threshold": cut if cut is not None else 0.5,
             "decided": {k: int(v) for k, v in pd.Series(prediction.decided).value_counts().items()},
             **prediction.stats}
    write_json(directory / f"predict-{split}.json", stats)
    return out, pred_path, stats


def score_file(spec, pred_path, truth_path):
    """`kit score`: a predictions or submission file against a labelled CSV."""
    from .data import clean_ids, labelled_rows, normalise_labels, require_columns
    from .metrics import report
    truth_ids, truth = labelled_rows(spec, truth_path)
    frame = read_csv(pred_path)
    id_col = next((c for c in ("id", spec.submission_id, spec.id_column) if c in frame.columns), None)
    label_col = next((c for c in ("label", spec.submission_label, spec.label_column) if c in frame.columns), None)
    if id_col is None or label_col is None:
        raise KitError(f"{pred_path}: needs an id column and a label column "
                       f"({spec.submission_id!r}/{spec.submission_label!r} or id/label); has {list(frame.columns)}")
    require_columns(frame, [id_col, label_col], pred_path, "to score")
    ids = clean_ids(frame, id_col, pred_path)
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
