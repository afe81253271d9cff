"""Several label columns per row (toxic-comment style): each column 0 or 1, learned and predicted as
its own probability.

Folds are stratified by each row's rarest positive column (so a rare column reaches every fold); the
OOF score is the spec's metric: mean column AUC, or micro / macro F1 of each column decided at 0.5 and
at thresholds tuned per column on the OOF rows; the per-row file holds id, a probability per column
and (for a flags submission) each column's decision. Fold ensembles and blends average the
probabilities; pseudo-labels and teachers are single-label probabilities, refused here."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from kit.core.errors import KitError
from kit.evaluation.folds import assign_folds, merge_small_strata
from kit.evaluation.metrics import column_aucs, metric_info, metric_value, multi_label_value, tune_column_thresholds
from kit.inputs.data import load_rows, read_flags
from kit.inputs.shapes import DIGITS
from kit.inputs.tasks import SeveralLabelsTask
from kit.tasks.label import per_fold_scores

MULTI_METRICS = ("mean_auc", "micro_f1", "macro_f1")


def rarest_positive(flags):
    """Per row, the index of its rarest positive column (the column count for a row with none)."""
    flags = np.asarray(flags, int)
    positives = np.where(flags == 1, flags.sum(0), np.iinfo(np.int64).max)   # a column the row lacks: never rarest
    return np.where(flags.any(1), positives.argmin(1), flags.shape[1])


class SeveralLabelsColumn:
    """The spec's several [columns] label columns, written into their submission columns."""
    target = None
    ensembles = True          # fold ensembles and blends average each column's probability
    takes_levers = False      # pseudo-labels and teachers are single-label probabilities
    zero_shot = False         # each column's probability comes from a trained head
    one_process = False

    def __init__(self, spec):
        self.spec = spec
        self.columns = list(spec.label_columns)
        self.column = self.columns[0]               # where `kit predict` names the label's output
        self.metric = metric_info(spec.metric)

    @property
    def thresholded(self):
        """A flags submission: each column decided at a threshold (0.5, or tuned on OOF rows)."""
        return self.spec.shape == "column_flags"

    def __str__(self):
        return f"the label columns ({', '.join(self.columns)})"

    def progress_mode(self, mode):
        return "columns"

    def rows(self, split, frame=None):
        return load_rows(self.spec, split, frame)

    def estimator_task(self, train_frame=None):
        return SeveralLabelsTask.from_spec(self.spec)

    def untrained_model(self):
        return None

    def folds(self, rows, folds, seed, holdout):
        strata = merge_small_strata(rarest_positive(rows.labels), 2 if holdout else folds)
        return assign_folds(strata, folds, seed, holdout)

    # -- cross-validation ----------------------------------------------------------------------
    def summary(self, rows, fold, results, oof):
        held = np.flatnonzero(fold >= 0)
        truth = np.asarray(rows.labels, int)[held]
        scores = self.scores(truth, oof.probs)
        if self.thresholded:
            thresholds = tune_column_thresholds(truth, oof.probs)
            scores["tuned_thresholds"] = thresholds
            scores["tuned_score"] = round(multi_label_value(self.spec.metric, truth, oof.probs, thresholds), 4)
        at = {row: i for i, row in enumerate(held)}
        per_fold = [multi_label_value(self.spec.metric, np.asarray(rows.labels, int)[r["index"]],
                                      oof.probs[[at[row] for row in r["index"]]]) for r in results]
        scores.update(per_fold_scores(per_fold))
        scores["higher_is_better"] = True
        table = self.oof_table([rows.ids[i] for i in held], truth, oof.probs, fold[held])
        return scores, table

    def scores(self, truth, probs, thresholds=0.5):
        """Every several-columns metric of these rows (the spec's first) and each column's AUC and F1."""
        truth, probs = np.asarray(truth, int), np.asarray(probs, float)
        out = {"metric": self.spec.metric, "rows": int(len(truth)),
               **{name: multi_label_value(name, truth, probs, thresholds) for name in MULTI_METRICS}}
        decided = (probs >= np.asarray(thresholds, float)).astype(int)
        out["per_column"] = {
            column: {"auc": None if np.isnan(auc) else round(auc, 4), "positives": int(truth[:, j].sum()),
                     "f1": round(metric_value("f1", truth[:, j], decided[:, j]), 4)}
            for j, (column, auc) in enumerate(zip(self.columns, column_aucs(truth, probs)))}
        return out

    def format_scores(self, scores):
        metric = self.spec.metric
        tuned = (f", {scores['tuned_score']:.4f} at OOF-tuned thresholds {scores['tuned_thresholds']}"
                 if "tuned_thresholds" in scores else "")
        return "\n".join([
            f"{scores['config']['name']}: {metric} {scores[metric]:.4f} (OOF{', threshold 0.5' if tuned else ''})"
            f"{tuned}; per fold {scores['fold_mean']:.4f} ± {scores['fold_std']:.4f}",
            format_columns_report(scores),
            f"wall {scores['wall_seconds']} s: train {scores['train_seconds']} s ({scores['train_rows_per_s']} rows/s), "
            f"predict {scores['predict_seconds']} s ({scores['predict_rows_per_s']} rows/s)"])

    def table(self, all_scores):
        metric = self.spec.metric
        lines = [f"| config | {metric} | tuned | fold mean ± std | train+predict s |", "|" + " --- |" * 5]
        for s in all_scores:
            tuned = f"{s['tuned_score']:.4f}" if "tuned_score" in s else "-"
            lines.append(f"| {s['config']['name']} | {s[metric]:.4f} | {tuned} | {s['fold_mean']:.4f} ± "
                         f"{s['fold_std']:.4f} | {s['train_seconds'] + s['predict_seconds']:.0f} |")
        return "\n".join(lines)

    def verdict(self, all_scores, baseline):
        metric, lines = self.spec.metric, []
        for s in all_scores:
            if s is not baseline:
                wins = s[metric] > baseline[metric]
                lines.append(f"{s['config']['name']} {'BEATS' if wins else 'LOSES TO'} the TF-IDF baseline: "
                             f"{s[metric]:.4f} vs {baseline[metric]:.4f} ({s[metric] - baseline[metric]:+.4f} {metric})"
                             + ("" if wins else "; under this budget, upload the baseline or train longer"))
        return "\n".join(lines)

    # -- what blends read and write (kit/workflows/blend.py) -------------------------------------
    @property
    def output_columns(self):
        return [f"p_{column}" for column in self.columns]

    @property
    def truth_columns(self):
        return [f"true_{column}" for column in self.columns]

    def truth(self, frame, path):
        """oof.csv's true_<column> columns as 0/1 per row and column."""
        missing = [c for c in self.truth_columns if c not in frame.columns]
        if missing:
            raise KitError(f"{path}: missing column(s) {missing}; run `python -m kit cv` again with its settings")
        return np.asarray(read_flags(frame, self.truth_columns, path), int)

    def blend_decision(self, truth, blended, evaluation):
        """A flags submission: each column's threshold tuned on the blended OOF rows."""
        return tune_column_thresholds(truth, blended) if self.thresholded else None

    def oof_table(self, ids, truth, outputs, fold, thresholds=None):
        """oof.csv: id, each column's truth and probability, fold."""
        table = pd.DataFrame({"id": ids})
        for j, column in enumerate(self.columns):
            table[f"true_{column}"] = np.asarray(truth)[:, j]
            table[f"p_{column}"] = np.round(outputs[:, j], DIGITS)
        table["fold"] = fold
        return table

    # -- prediction ----------------------------------------------------------------------------
    def threshold(self, value, cv_scores, run_key):
        """None (0.5 for each column), a number for every column, or 'oof': the per-column
        thresholds kit cv tuned on this run's OOF rows."""
        if value in (None, ""):
            return None
        if not self.thresholded:
            raise KitError(f"--threshold: the submission holds each column's probability ({self.spec.metric}), "
                           "which no threshold decides")
        if str(value) == "oof":
            scores = json.loads(Path(cv_scores).read_text()) if Path(cv_scores).exists() else {}
            if scores.get("run_key") != run_key or "tuned_thresholds" not in scores:
                raise KitError(f"--threshold oof: {cv_scores} holds no thresholds tuned by this run's settings; "
                               "run `python -m kit cv` with them first")
            return scores["tuned_thresholds"]
        try:
            number = float(value)
        except ValueError:
            raise KitError(f"--threshold {value!r}: give a number in (0, 1) or 'oof'") from None
        if not 0 < number < 1:
            raise KitError(f"--threshold {number}: must be between 0 and 1")
        return [number] * len(self.columns)

    def run_error(self, error, name, runs):
        return error

    def prediction_line(self, stats, path):
        what = (f"each column 0 or 1 at thresholds {stats['thresholds']}" if self.thresholded
                else "each column's probability")
        return (f"predicted {stats['rows']} rows of {stats['split']} in {stats['seconds']} s ({stats['rows_per_s']} "
                f"rows/s, {stats.get('mean_tokens', '-')} tokens per row, {stats.get('truncated_rows', 0)} truncated); "
                f"the submission holds {what}\nper-row predictions: {path}")

    def written(self, split, rows, prediction, thresholds=None):
        """(the per-row predictions table, {submission column: its values}, stats to record)."""
        thresholds = thresholds or [0.5] * len(self.columns)
        probs = np.asarray(prediction.probs, float)
        table = pd.DataFrame({"id": rows.ids})
        values = {}
        for j, (column, written) in enumerate(self.spec.class_columns.items()):
            table[f"p_{column}"] = np.round(probs[:, j], DIGITS)
            if self.thresholded:
                table[column] = (probs[:, j] >= thresholds[j]).astype(int)
                values[written] = table[column].tolist()
            else:
                values[written] = table[f"p_{column}"].tolist()
        table["decided"] = prediction.decided
        return table, values, {"shape": self.spec.shape, **({"thresholds": thresholds} if self.thresholded else {})}

    def promised(self, rows):
        return None

    def certainty(self, prediction, thresholds=None):
        """Per row, how far its closest column is from its threshold (0.5 for probabilities)."""
        cuts = np.asarray(thresholds or [0.5] * len(self.columns), float)
        return np.abs(np.asarray(prediction.probs, float) - cuts[None, :]).min(1)


def format_columns_report(result):
    names = [result["metric"], *(n for n in MULTI_METRICS if n != result["metric"])]
    width = max(len(c) for c in [*result["per_column"], "column"]) + 2
    lines = ["   ".join(f"{name}: {result[name]:.4f}" for name in names) + f"   rows: {result['rows']}",
             f"{'column':<{width}}positives     auc  f1 at 0.5"]
    for column, row in result["per_column"].items():
        auc = "-" if row["auc"] is None else f"{row['auc']:.4f}"
        lines.append(f"{column:<{width}}{row['positives']:9d}  {auc:>6}  {row['f1']:.4f}")
    return "\n".join(lines)
