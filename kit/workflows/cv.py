"""Cross-validation a competitor can trust: exactly the train + predict path, on folds.

Each fold fits a fresh model on the other folds and predicts its held-out rows with the same
code as `kit predict`; nothing is fitted on held-out rows (the TF-IDF vocabulary, the LLM's
adapter and the decision threshold are all learned on training rows or on OOF afterwards).
Rows are tokenised once per run; finished folds are saved, so a re-run resumes.
"""
import json
import shutil
import time

import numpy as np

from kit.core import dist
from kit.core.errors import KitError
from kit.core.files import atomic_write, write_json
from kit.core.hashing import fingerprint
from kit.core.logs import log
from kit.inputs.data import extra_rows, join_rows
from kit.models.registry import make_model
from kit.runs.folder import RUNS, open_run
from kit.tasks.columns import column_of
from kit.workflows.fit import fit_timed, note_unused_rationales, refuse_teacher_with_extra
from kit.workflows.levers import for_cv


def _saved_fold(path, key):
    """A finished fold's result, only when it was made by exactly this CV configuration."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        saved = {}
    if saved.get("key") != key:
        log(f"cv: {path} was made with other settings; fitting that fold again")
        return None
    return saved


def _run_fold(make, rows, encoded, fold, number, mode, run, key, keep_models=False, levers=None, extra=None):
    """Fit on every row outside the fold, predict the fold; saved so a re-run skips it. With
    keep_models the fold's model is kept too (a fold ensemble predicts with them). levers
    (kit/workflows/levers.py) add this fold's pseudo rows and teacher probabilities to its training rows;
    extra ([[extra]] rows and their token ids) joins them, never the held-out rows."""
    path = run.fold_result(number)
    saved = _saved_fold(path, key)
    kept = run.has_fold_model(number)
    if saved is not None and (kept or not keep_models):
        log(f"cv: fold {number + 1} already done, reused ({path})")
        return saved
    train_index = np.flatnonzero(fold != number)
    held_index = np.flatnonzero(fold == number)
    model = make()
    pick = (lambda index: ([encoded[0][i] for i in index], encoded[1])) if encoded else (lambda index: None)
    checkpoint = run.fold_checkpoint(number)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    train_rows, train_encoded, lever_stats = rows.subset(train_index), pick(train_index), {}
    if levers is not None:
        train_rows, train_encoded, lever_stats = levers.training(number, train_rows, train_encoded)
    if extra is not None:
        train_rows, train_encoded = with_extra(train_rows, train_encoded, *extra)
        lever_stats["extra_rows"] = len(extra[0])
    stats = fit_timed(model, train_rows, train_encoded, checkpoint, resume=True,
                      checkpoint_key=fingerprint(key, number))
    stats.update(lever_stats)
    start = time.time()
    prediction = model.predict(rows.subset(held_index), mode, encoded=pick(held_index))
    seconds = time.time() - start
    record = prediction.to_record()
    predict_stats = record.pop("stats")
    # model_id names the kept model, so a reader (kit/workflows/levers.py) can tell it from a model an
    # earlier CV of other folds left in the folder
    result = {"key": key, "fold": number, "index": held_index.tolist(), **record,
              "model_id": model.model_id if keep_models else None,
              "stats": {**stats, "loss_log": model.loss_log, "predict_seconds": round(seconds, 1),
                        "predict_rows_per_s": round(len(held_index) / seconds, 2) if seconds else None,
                        **{f"predict_{k}": v for k, v in predict_stats.items() if k.startswith("frozen_")}}}
    if keep_models:
        staging = run.cv_dir / f".fold-{number}-model.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.save(staging)
        shutil.rmtree(run.fold_model(number), ignore_errors=True)
        staging.rename(run.fold_model(number))
    write_json(path, result)
    checkpoint.unlink(missing_ok=True)
    return result


def cross_validate(spec, model_args, train_args, folds=5, holdout=None, fold_seed=0, mode="score",
                   name=None, overwrite=False, trust_remote_code=False, runs=RUNS, keep_models=False, target=None):
    """Run CV for one configuration of the label (or with target, of that [targets] column);
    returns the scores dict (also saved in the run folder). The folds come from fold_seed alone,
    so configurations that differ in their training seed are scored on the same folds."""
    started = time.time()
    column = column_of(spec, target, "cross-validate")
    if column.one_process and dist.active():
        raise KitError(f"kit cv of {column} runs in one process; start it without torchrun / accelerate launch")
    if keep_models and not column.ensembles:
        raise KitError(f"--keep-models is for the label's cv; {column} has no fold ensembles")
    rows, frame = column.rows("train")
    fold = column.folds(rows, folds, fold_seed, holdout)
    task = column.estimator_task(frame)
    encoder = make_model(task, model_args, train_args, trust_remote_code)
    model_args = encoder.resolve_args()    # `auto` -> this device's values, part of the run's key
    # pseudo rows and teacher probabilities per fold, from the teacher's fold models only
    levers, train_args = for_cv(column, rows, fold, encoder, train_args, runs, trust_remote_code)
    note_unused_rationales(column.spec, encoder)
    extra = extra_rows(column.spec, rows)       # [[extra]]: in every fold's training rows, never held out
    refuse_teacher_with_extra(extra, train_args)
    run = open_run(column.spec, model_args, train_args, name, overwrite, runs)
    key = fingerprint(run.key, fold.tolist(), column.progress_mode(mode))
    def make():
        model = make_model(task, model_args, train_args, trust_remote_code)
        model.data_parallel = False      # under N ranks, each rank fits whole folds of its own
        return model
    # once, for every fold (with few-shot examples each fold's prompt is its own: encoded by the fold)
    encoded = None if task.few_shot else encoder.encode(rows)
    if encoded:
        log(f"cv: {encoded[1]['rows']} rows tokenised once, {encoded[1]['mean_tokens']} tokens per row, "
            f"{encoded[1]['truncated_rows']} truncated to {task.max_length}")
    if extra is not None:
        log(f"cv: {len(extra)} [[extra]] rows join every fold's training rows (never a held-out row)")
        extra = (extra, encoder.encode(extra) if encoded else None)
    numbers = sorted(set(fold.tolist()) - {-1})
    results = []
    # N ranks (torchrun / accelerate launch): folds side by side, fold k on rank k mod N
    for number in numbers[dist.rank()::dist.world_size()]:
        log(f"cv: {column} fold {number + 1} of {len(numbers)} ({run.name})")
        results.append(_run_fold(make, rows, encoded, fold, number, mode, run, key, keep_models, levers, extra))
    results = sorted((r for part in dist.gather(results) for r in part), key=lambda r: r["fold"])
    if not dist.is_main():
        return None
    oof = out_of_fold(encoder.prediction_type, results)
    scores, oof_table = column.summary(rows, fold, results, oof)
    scores.update(timings([r["stats"] for r in results]), fallback_rows=sum(d == "fallback" for d in oof.decided))
    atomic_write(run.oof, lambda tmp: oof_table.to_csv(tmp, index=False))
    scores["wall_seconds"] = round(time.time() - started, 1)
    scores["run_key"], scores["cv_key"] = run.key, key
    scores["config"] = {"name": run.name, "model": model_args.model, "head": model_args.head,
                        "folds": folds, "holdout": holdout, "fold_seed": fold_seed, "seed": train_args.seed,
                        "mode": mode, **({"target": column.target} if column.target else {})}
    write_json(run.cv_scores, scores)
    return scores


def with_extra(rows, encoded, extra, extra_encoded):
    """A fit's training rows followed by the [[extra]] rows (and their token ids when encoded)."""
    rows = join_rows(rows, extra)
    if encoded is None:
        return rows, None
    ids = encoded[0] + extra_encoded[0]
    return rows, (ids, {**encoded[1], "rows": len(ids), "mean_tokens": round(float(np.mean([len(s) for s in ids])), 1)})


def out_of_fold(prediction_type, results):
    """The folds' predictions as one, in row order (the held-out rows only)."""
    joined = prediction_type.join([prediction_type.from_record(r) for r in results])
    positions = np.concatenate([np.asarray(r["index"], dtype=int) for r in results])
    return joined.take(np.argsort(positions))


def timings(stats):
    """What the folds spent: training and prediction time and rates, frozen-state reuse."""
    out = {}
    for part in ("train", "predict"):
        out[f"{part}_seconds"] = round(sum(s[f"{part}_seconds"] for s in stats), 1)
        out[f"{part}_rows_per_s"] = round(float(np.mean([s[f"{part}_rows_per_s"] or 0 for s in stats])), 2)
    frozen = frozen_totals(stats)
    if frozen:
        out["frozen"] = frozen
    return out


def frozen_totals(stats):
    """What the folds' frozen lower-block passes reused from the state cache and computed
    (kit/engine/states.py), training and prediction together; {} when no fold used the cache."""
    totals = {"rows_computed": 0, "rows_reused": 0, "seconds": 0.0}
    for s in stats:
        for prefix in ("", "predict_"):
            totals["rows_computed"] += s.get(f"{prefix}frozen_rows_computed") or 0
            totals["rows_reused"] += s.get(f"{prefix}frozen_rows_reused") or 0
            totals["seconds"] += s.get(f"{prefix}frozen_seconds") or 0
    totals["seconds"] = round(totals["seconds"], 1)
    return totals if totals["rows_computed"] or totals["rows_reused"] else {}
