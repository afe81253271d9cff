"""`kit predict`: every predicted column of a split, resumable and validated, written atomically as one
submission; the run's model, its fold ensemble or its merged folds."""
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kit.core import dist
from kit.core.budget import Deadline, minutes
from kit.core.errors import KitError
from kit.core.files import atomic_write, write_json
from kit.core.hashing import fingerprint
from kit.core.logs import log
from kit.inputs import submit
from kit.models.base import Estimator
from kit.models.folds import FoldEnsemble, merge_fold_adapters
from kit.models.registry import load_model
from kit.runs.folder import RUNS, trained_run
from kit.tasks.columns import predicted_columns

SUBMISSION = Path("submissions") / "submit.csv"
PREDICT_CHUNK = int(os.environ.get("KIT_PREDICT_CHUNK", 256))   # rows per resumable unit of prediction
BUDGET_CHUNK = 64            # under a time budget: smaller chunks measure the rate sooner and waste less
FALLBACK_RESERVE, FALLBACK_RESERVE_S = 0.05, 10.0   # of the budget kept for the fallback: 5 %, at least 10 s


def predict_resumable(model, rows, mode, progress_file=None, chunk=None, progress_mode=None):
    """Predict in chunks, saving each finished chunk, so a killed run resumes where it stopped. A
    model that needs the whole split at once (an extractor's TF-IDF weights) runs in one chunk."""
    done, chunk = _predict_chunks(model, rows, mode, progress_file, chunk, progress_mode)
    kind = model.prediction_type
    return kind.join([kind.from_record(done[str(s)]) for s in range(0, len(rows), chunk)])


def _predict_chunks(model, rows, mode, progress_file, chunk, progress_mode, deadline=None, reserve=0.0):
    """({chunk start: record} of the finished chunks, the chunk size). With a deadline, a chunk is
    begun only while the rate measured on this call's chunks says it ends reserve seconds before
    the deadline: the rows left are the caller's (a time budget's fallback)."""
    chunk = max(1, len(rows)) if model.whole_split else chunk or PREDICT_CHUNK
    # the model's id (new at every fit), the rows, the mode and the chunking: progress made
    # under anything else is never reused
    key = fingerprint(model.model_id, rows.ids, rows.texts, progress_mode or mode, chunk)
    done = _read_progress(progress_file, key)
    if done:
        log(f"predict: resuming, {len(done)} finished chunk(s) of {chunk} rows reused")
    started, predicted = time.monotonic(), 0
    for start in range(0, len(rows), chunk):
        if str(start) in done:
            continue
        size = min(chunk, len(rows) - start)
        if deadline is not None and not _ends_in_time(size, predicted, time.monotonic() - started,
                                                      deadline.left() - reserve):
            break
        part = model.predict(rows.subset(range(start, start + size)), mode)
        predicted += size
        done[str(start)] = part.to_record()
        if progress_file:
            try:
                write_json(progress_file, {"key": key, "chunks": done})
            except OSError as error:      # a WriteError: one line, and the prediction goes on
                log(f"warning: {error}; predicting on without resumable progress")
                progress_file = None
    return done, chunk


def _ends_in_time(size, predicted, seconds, left):
    """Whether a chunk of size rows ends within left seconds at the rate of the rows predicted so far
    (the first chunk is begun whenever any time is left: it measures the rate)."""
    if left <= 0:
        return False
    return predicted == 0 or size * seconds / predicted <= left


def _reserve(deadline):
    return max(FALLBACK_RESERVE_S, FALLBACK_RESERVE * deadline.seconds)


def predict_in_time(model, rows, mode, progress_file, progress_mode, deadline, fallback):
    """The main model's chunks while they end in time, then the rows left by fallback (a faster run's
    model, in score mode), each marked per row. Returns (Prediction in the rows' order, figures)."""
    reserve = _reserve(deadline)
    done, chunk = _predict_chunks(model, rows, mode, progress_file, BUDGET_CHUNK, progress_mode, deadline, reserve)
    kind = model.prediction_type
    starts = sorted(int(s) for s in done)
    main = [i for s in starts for i in range(s, min(s + chunk, len(rows)))]
    parts = [kind.from_record(done[str(s)]) for s in starts]
    rest = sorted(set(range(len(rows))) - set(main))
    figures = {"time_budget_s": deadline.seconds, "main_rows": len(main), "fallback_rows": len(rest),
               "fallback_run": fallback.name}
    if rest:
        log(f"predict: the time budget leaves {len(rest)} of {len(rows)} rows to the fallback run {fallback.name} "
            f"({minutes(deadline.left())} left of {minutes(deadline.seconds)})")
        quick = fallback.model.predict(rows.subset(rest), "score")
        parts.append(_marked(quick, parts[0] if parts else None, f"fallback run {fallback.name} (time budget)"))
    joined = kind.join(parts)
    return joined.take(np.argsort(main + rest)), figures


def second_pass(prediction, rows, certainty, deadline, second):
    """The time the budget has left, spent on the least certain rows first (certainty: per row, how far
    its prediction is from changing what is written): the second run's probabilities averaged with
    the first's, chunk by chunk while the rate measured on this pass says a chunk ends before the
    reserve. Returns (Prediction, figures)."""
    certainty = np.asarray(certainty, float)
    order = np.argsort(certainty, kind="stable")
    if prediction.parsed is not None:  # a generated answer decided its row: the scores would not change it
        order = order[np.asarray(prediction.parsed)[order] < 0]
    if not len(order):
        log("predict: no second pass: a generated answer decided every row")
        return prediction, {"second_pass_run": second.name, "second_pass_rows": 0}
    done, chunk = _predict_chunks(second.model, rows.subset(order), "score", None, BUDGET_CHUNK, None, deadline,
                                  _reserve(deadline))
    starts = sorted(int(s) for s in done)
    chosen = [int(order[i]) for s in starts for i in range(s, min(s + chunk, len(order)))]
    figures = {"second_pass_run": second.name, "second_pass_rows": len(chosen)}
    if not chosen:
        log(f"predict: no time left for a second pass with run {second.name}")
        return prediction, figures
    again = second.model.prediction_type.join([second.model.prediction_type.from_record(done[str(s)]) for s in starts])
    probs = np.array(prediction.probs, float)
    probs[chosen] = (probs[chosen] + np.asarray(again.probs, float)) / 2
    decided = list(prediction.decided)
    for i in chosen:
        decided[i] = f"{decided[i]} + second pass run {second.name} (averaged)"
    log(f"predict: second pass: the {len(chosen)} least certain of {len(rows)} rows re-scored by run {second.name} "
        f"and averaged in ({minutes(deadline.left())} left of {minutes(deadline.seconds)})")
    return replace(prediction, probs=probs, decided=decided), figures


def _marked(prediction, like, how):
    """The fallback's prediction with every row marked how it was decided, and the per-row fields
    the main model's chunks have (generate mode's answers) filled, so the two join."""
    n = len(prediction.decided)
    return replace(prediction, decided=[how] * n,
                   answers=None if like is None or like.answers is None else [""] * n,
                   parsed=None if like is None or like.parsed is None else np.full(n, -1))



def _predict_rows(model, rows, mode, progress_file, progress_mode=None):
    """One process: resumable chunks. N ranks: rank r predicts rows r, r+N, ...; rank 0 gathers
    them back into the original order (the other ranks get None)."""
    if not dist.active():
        return predict_resumable(model, rows, mode, progress_file, progress_mode=progress_mode)
    mine = list(range(dist.rank(), len(rows), dist.world_size()))
    shards = dist.gather((mine, model.predict(rows.subset(mine), mode)))
    if not dist.is_main():
        return None
    joined = model.prediction_type.join([part for _, part in shards])
    return joined.take(np.argsort(np.concatenate([index for index, _ in shards])))


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


def load_predictor(run, models="auto", trust_remote_code=False):
    """The run's full-train model, or its fold ensemble (`kit cv --keep-models`): averaged
    probabilities ("folds") or one adapter of averaged LoRA weights ("merged"). auto: the
    full-train model when there is one, else the fold ensemble. Returns (predictor, the model
    folders that went in)."""
    has_full = run.has_full_model
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


@dataclass
class BudgetRun:
    """A run that helps the label's column under a time budget: the fallback that decides the rows
    the main run has no time for, or the second pass that re-scores the least certain rows."""
    name: str
    model: object


@dataclass
class Budget:
    deadline: Deadline
    fallback: BudgetRun
    second_run: object = None      # the second pass's Run: loaded after the main pass has freed its memory


def predict_split(spec, split="test", run=None, mode="score", threshold=None, out=SUBMISSION, runs=RUNS,
                  allow_spec_change=False, trust_remote_code=False, models="auto", target_runs=None,
                  time_budget=None, fallback=None, second_pass=None):
    """`kit predict`: every predicted column of the spec (the label, then each [targets] column)
    for a split, then a validated submission written atomically. run names the label's run,
    target_runs {column: run} the others'. With time_budget (seconds, from now) the label's rows
    the run has no time for are decided by the fallback run, and the time left after every row is
    predicted goes to the second_pass run on the least certain rows. Returns (submission path,
    [ColumnResult]); None on ranks other than 0."""
    deadline = Deadline(time_budget) if time_budget else None
    columns = predicted_columns(spec)
    rows = columns_rows(columns, split)        # input errors first: they need no trained run
    submit.check_destination(out, spec, runs)  # and a submission that could not be written, or would replace an input
    names = {column.column: (target_runs or {}).get(column.target) if column.target else run for column in columns}
    # every missing or mismatched run is an error before any prediction work
    found = [(column, find_run(column, names[column.column], allow_spec_change, runs)) for column in columns]
    for column, column_run in found:
        _check_run_outputs(column_run, split, column.progress_mode(mode))
    budget = _budget(columns[0], found[0][1], deadline, fallback, second_pass, allow_spec_change, runs,
                     trust_remote_code)
    results = []
    for column, column_run in found:
        result = predict_column(column, column_run, split, rows[column][0], mode, threshold, models,
                                trust_remote_code, budget if column is columns[0] else None)
        if result is None:       # another rank: rank 0 gathered its rows and writes
            return None
        results.append(result)
    first, frame = rows[columns[0]]
    submission = build_submission(spec, frame, first.ids, split, results)
    submit.write(submission, out)
    for result in results:
        result.record(split)
    label_run = next((r.run for r in results if r.column.target is None and r.run), None)
    submit.write_scores_beside(out, label_run.cv_scores if label_run and label_run.cv_scores.exists() else None)
    return out, results


@dataclass
class ColumnResult:
    """One predicted column of a split: its run (None: a model with nothing to learn), the
    submission's values, the per-row table and stats its run keeps, and its progress file."""
    column: object
    run: object
    values: list
    table: object
    stats: dict
    promised: list = None      # per row whether a value is owed (None: every row)
    progress: object = None
    keep: bool = True          # False: a read-only run folder (a teammate's share) takes no files

    def record(self, split):
        """Keep the per-row predictions and stats in the run folder (after the submission is
        written: a run folder that cannot take them is a warning, the submission stands)."""
        if self.run is None or not self.keep:
            return
        try:
            atomic_write(self.run.predictions(split), lambda tmp: self.table.to_csv(tmp, index=False))
            write_json(self.run.predict_stats(split), self.stats)
            if self.progress is not None:
                self.progress.unlink(missing_ok=True)
        except OSError as error:
            log(f"warning: {error}; the submission is written, the run folder keeps no predictions of {split}")

    @property
    def predictions_file(self):
        return self.run.predictions(self.stats["split"]) if self.run else None


def find_run(column, name, allow_spec_change=False, runs=RUNS):
    """The run that predicts a column: name (--run / --target-run), else its latest trained run;
    None for a column whose model has nothing to learn (an extractor without answers)."""
    if column.one_process and dist.active():
        raise KitError(f"{column} is written in one process; run kit predict without torchrun")
    try:
        return trained_run(column.spec, name, allow_spec_change, runs)
    except KitError as error:
        if name is None and column.untrained_model() is not None:
            return None
        raise column.run_error(error, name, runs) from None


def columns_rows(columns, split):
    """{column: (its Rows, the split's frame)}, each CSV read once for all the columns that use it."""
    out, frames = {}, {}
    for column in columns:
        path = str(column.spec.split_path(split))
        out[column] = column.rows(split, frames.get(path))
        frames[path] = out[column][1]
    return out


def _budget(column, run, deadline, fallback, second_pass, allow_spec_change, runs, trust_remote_code):
    """The Budget of the label's column (run: its run) under a time budget: the fallback loaded and the
    second pass's run found before any prediction, so that their errors come first (the second model
    is loaded after the main pass); None without a budget."""
    if deadline is None:
        for option, given in (("--fallback", fallback), ("--second-pass", second_pass)):
            if given is not None:
                raise KitError(f"{option} works within a --time-budget; give --time-budget too")
        return None
    if fallback is None:
        raise KitError("--time-budget needs --fallback RUN: a fast run of this spec (e.g. `kit train --model tfidf "
                       "--name fast`) decides the rows the main run has no time for")
    if dist.active():
        raise KitError("--time-budget runs in one process; start kit predict without torchrun")
    if column.target is not None:
        raise KitError(f"--time-budget falls back on the label's rows; {column} is not the label")
    fallback_run = find_run(column, fallback, allow_spec_change, runs)
    second_run = find_run(column, second_pass, allow_spec_change, runs) if second_pass else None
    if second_run is not None and run is not None and second_run.directory == run.directory:
        raise KitError(f"--second-pass {second_pass} is the run being predicted; name another run of this spec "
                       "(a second model), whose probabilities are averaged in")
    return Budget(deadline, BudgetRun(fallback_run.name, load_predictor(fallback_run, "auto", trust_remote_code)[0]),
                  second_run)


def predict_column(column, run, split, rows, mode="score", threshold=None, models="auto", trust_remote_code=False,
                   budget=None):
    """A column's predictions for a split's rows (ColumnResult); None on ranks other than 0."""
    cut = column.threshold(threshold, run.cv_scores, run.key) if run else None
    if run is None:
        model, used = column.untrained_model(), []
    else:
        model, used = load_predictor(run, models if column.ensembles else "auto", trust_remote_code)
    ensemble = (f", {len(used)} fold models" + (" merged into one adapter" if models == "merged" else " averaged")
                if used and used[0] != str(run.model_dir) else "")
    log(f"predict: {column} of {split} ({len(rows)} rows) with "
        + (f"run {run.directory}{ensemble}" if run else f"the {model.args.model} extractor (nothing to train)"))
    progress_mode = column.progress_mode(mode)
    keep = run is not None and _run_writable(run, split)
    progress = run.predict_progress(split, progress_mode) if keep else None
    start, model_id = time.time(), model.model_id
    if budget is None:
        prediction, figures = _predict_rows(model, rows, mode, progress, progress_mode), {}
    else:
        prediction, figures = predict_in_time(model, rows, mode, progress, progress_mode, budget.deadline,
                                              budget.fallback)
        if budget.second_run is not None:
            model = None         # the main model's memory is freed before the second one loads
            second = BudgetRun(budget.second_run.name, load_predictor(budget.second_run, "auto", trust_remote_code)[0])
            prediction, more = second_pass(prediction, rows, column.certainty(prediction, cut), budget.deadline, second)
            figures.update(more)
    seconds = time.time() - start
    if prediction is None:
        return None
    table, values, extra = column.written(split, rows, prediction, cut)
    stats = {"split": split, "run": str(run.directory) if run else None, "rows": len(rows), "mode": mode,
             "seconds": round(seconds, 1), "rows_per_s": round(len(rows) / seconds, 2) if seconds else None,
             "model_id": model_id, "models": used,
             "decided": {k: int(v) for k, v in pd.Series(prediction.decided).value_counts().items()},
             **extra, **prediction.stats, **figures}
    return ColumnResult(column, run, values, table, stats, column.promised(rows), progress, keep)


def _check_run_outputs(run, split, progress_mode):
    """Before any prediction work: a folder where the run keeps this prediction's files is one line."""
    if run is None:
        return
    for path in (run.predictions(split), run.predict_stats(split), run.predict_progress(split, progress_mode)):
        if path.is_dir():
            raise KitError(f"{path}: is a folder, where run {run.name} keeps its {path.name}; move it away")


def _run_writable(run, split):
    """Whether the run folder takes this prediction's files (progress, predictions, stats). A
    teammate's read-only share does not: it predicts all the same, with one warning."""
    if os.access(run.directory, os.W_OK | os.X_OK):
        return True
    log(f"warning: run folder {run.directory} is read-only: predicting {split} without resumable progress, "
        f"and without keeping its predictions-{split}.csv there")
    return False


def build_submission(spec, frame, ids, split, results, where=None):
    """The submission of a split from its columns' results, validated (not yet written)."""
    values = {column: v for r in results for column, v in r.values.items()}
    promised = {r.column.column: r.promised for r in results if r.promised is not None}
    submission = submit.build(spec, frame, ids, values, spec.split_path(split))
    submit.validate(spec, submission, ids, split, where=where or f"submission for {split}",
                    promised=promised)
    return submission
