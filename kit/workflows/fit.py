"""The stages as functions: train a run folder, predict a split into a validated submission.

A run folder (runs/<name>/) holds everything needed to reproduce it: the spec as read, the
arguments, the trained model, the training metrics, and (after `kit cv`) the OOF scores.
"""
import shutil
import time

import numpy as np
from safetensors import SafetensorError

from kit.core import dist
from kit.core.errors import KitError, WriteError
from kit.core.files import write_json, writing
from kit.core.logs import log
from kit.engine.loop import total_steps
from kit.inputs.data import extra_rows, join_rows
from kit.models.registry import make_model
from kit.runs.folder import RUNS, open_run
from kit.tasks.columns import column_of
from kit.workflows import levers

TIMED = 0.1     # seconds: a duration (or a rate over one) shorter than this is noise, not a figure (TF-IDF)


def took(seconds):
    """A training time as the summaries print it."""
    return f"{seconds} s" if seconds >= TIMED else f"under {TIMED} s"


def fit_timed(model, rows, encoded=None, checkpoint=None, resume=False, checkpoint_key=None):
    """Fit and return the training figures every report shows."""
    start = time.time()
    model.fit(rows, checkpoint=checkpoint, resume=resume, encoded=encoded, checkpoint_key=checkpoint_key)
    seconds = time.time() - start
    losses, targs = model.loss_log, model.train_args
    seen = len(losses) * targs.batch_size * targs.grad_accum if losses else len(rows)
    stats = {"train_seconds": round(seconds, 1), "train_rows": len(rows), "steps": len(losses),
             "train_rows_per_s": round(seen / seconds, 2) if seconds and seen else None,
             "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None}
    stats.update(model.train_stats)
    if targs.deadline is not None and losses and len(losses) < total_steps(len(rows), targs):
        stats["stopped_by_time_budget"] = {"steps": len(losses), "planned": total_steps(len(rows), targs)}
    return stats


def train_run(spec, model_args, train_args, name=None, resume=False, overwrite=False,
              trust_remote_code=False, runs=RUNS, target=None):
    """`kit train`: fit on the whole train split and save the run's model (the label's, or with
    target the model of a predicted [targets] column)."""
    column = column_of(spec, target, "train")
    spec = column.spec
    rows, frame = column.rows("train")
    model = make_model(column.estimator_task(frame), model_args, train_args, trust_remote_code)
    model_args = model.resolve_args()      # `auto` -> this device's values, part of the run's key
    # pseudo rows and teacher probabilities; their fingerprints join the run's key
    rows, train_args, lever_stats = levers.for_train(column, rows, model, train_args, runs)
    extra = extra_rows(spec, rows)          # [[extra]]: more labelled rows of the same task
    refuse_teacher_with_extra(extra, train_args)
    if extra is not None:
        log(f"train: {len(extra)} [[extra]] rows join the {len(rows)} training rows")
        rows, lever_stats = join_rows(rows, extra), {**lever_stats, "extra_rows": len(extra)}
    model.train_args = train_args
    note_unused_rationales(spec, model)
    run = open_run(spec, model_args, train_args, name, overwrite, runs)
    if dist.is_main():
        run.clear_predict_progress()
    ranks = f" on {dist.world_size()} ranks ({dist.backend()})" if dist.active() else ""
    log(f"train: {len(rows)} rows, model {model_args.model}, head {model_args.head}, run {run.directory}{ranks}")
    stats = fit_timed(model, rows, checkpoint=run.checkpoint, resume=resume, checkpoint_key=run.key)
    stats.update(lever_stats, world_size=dist.world_size())
    if not dist.is_main():           # rank 0 writes the model; the others are done
        return run.directory, stats
    _save_model(model, run)
    write_json(run.train_metrics, {**stats, "model_id": model.model_id, "loss_log": model.loss_log})
    with writing(run.checkpoint):
        run.checkpoint.unlink(missing_ok=True)
    timed = stats["train_seconds"] >= TIMED
    rate = f" ({stats['train_rows_per_s']} rows/s)" if stats["train_rows_per_s"] and timed else ""
    loss = f", final loss {stats['final_loss']}" if stats["final_loss"] is not None else ""
    log(f"train: done in {took(stats['train_seconds'])}{rate}{loss}; saved {run.model_dir}")
    return run.directory, stats


def note_unused_rationales(spec, model):
    """Say once that a model without a generative head learns the label alone."""
    if spec.rationale_column and not model.uses_rationales:
        log(f"note: [columns] rationale {spec.rationale_column!r} is learned by the generative head only "
            f"(--head generate); {model.args.model} with head {model.args.head} learns the label alone")


def refuse_teacher_with_extra(extra, train_args):
    """A teacher's probabilities are its OOF rows of the training file: the [[extra]] rows have none."""
    if extra is not None and train_args.teacher:
        raise KitError("--teacher: the teacher's probabilities cover the training file's rows, not the [[extra]] "
                       "rows; distil without [[extra]], or train on the extra rows without a teacher")


def _save_model(model, run):
    """The model goes to model.tmp, then replaces model/: a full disk or a read-only folder is one
    line naming the model folder, and leaves neither model.tmp nor a half model behind."""
    staging = run.directory / "model.tmp"
    try:
        with writing(run.model_dir):
            shutil.rmtree(staging, ignore_errors=True)
            try:
                model.save(staging)
            except SafetensorError as error:       # safetensors reports a full disk as its own error
                raise WriteError(run.model_dir, OSError(None, str(error).splitlines()[0])) from None
            shutil.rmtree(run.model_dir, ignore_errors=True)
            staging.rename(run.model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
