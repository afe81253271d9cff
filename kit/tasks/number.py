"""The number task: one number per row (a score, a grade), read from the label column.

Folds are stratified by the value's quantile bin; the OOF score is the spec's metric (rmse, mae,
or qwk after rounding at cut points tuned on the OOF rows only); the per-row file holds id and the
predicted number. Fold ensembles and blends average the numbers; the pseudo-label and teacher
levers learn label probabilities, which a number task does not have."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from kit.core.errors import KitError
from kit.evaluation.folds import assign_folds
from kit.evaluation.metrics import apply_cut_points, metric_info, number_value, tune_cut_points
from kit.inputs.data import load_rows, read_numbers
from kit.inputs.shapes import DIGITS
from kit.inputs.tasks import NumberTask
from kit.tasks.label import OOF_PREDICTED, per_fold_scores

VALUE_BINS = 10           # quantile bins the folds are stratified over


def value_bins(values, folds):
    """Each value's quantile bin, with as many bins as keep every bin at two rows per fold or more."""
    values = np.asarray(values, float)
    bins = max(1, min(VALUE_BINS, len(values) // (2 * max(folds, 2))))
    ranks = values.argsort(kind="stable").argsort(kind="stable")
    return (ranks * bins // len(values)).astype(int)


class NumberColumn:
    """The spec's [columns] label read as numbers, written into the submission's label column."""
    target = None
    ensembles = True          # fold ensembles and blends average its numbers
    takes_levers = False      # pseudo-labels and teachers are label probabilities
    zero_shot = False         # a number is read from a trained regression head
    one_process = False
    thresholded = False

    def __init__(self, spec):
        self.spec = spec
        self.column = spec.submission_label or spec.label_column
        self.metric = metric_info(spec.metric)

    def __str__(self):
        return "the label (a number)"

    def progress_mode(self, mode):
        return "number"            # a regression head has one way to predict

    def rows(self, split, frame=None):
        return load_rows(self.spec, split, frame)

    def estimator_task(self, train_frame=None):
        return NumberTask.from_spec(self.spec)

    def untrained_model(self):
        return None

    def folds(self, rows, folds, seed, holdout):
        return assign_folds(value_bins(rows.labels, folds), folds, seed, holdout)

    # -- cross-validation ----------------------------------------------------------------------
    def summary(self, rows, fold, results, oof):
        held = np.flatnonzero(fold >= 0)
        truth = np.asarray(rows.labels, float)
        predicted = self.clipped(oof.probs[:, 0])
        scores = self.scores(truth[held], predicted)
        if self.metric.cut_points:
            cuts, tuned = tune_cut_points(truth[held], predicted, *self.spec.scale)
            scores["cut_points"], scores["tuned_score"] = cuts, round(tuned, 4)
        at = {row: i for i, row in enumerate(held)}
        per_fold = [self.value(truth[r["index"]], predicted[[at[row] for row in r["index"]]]) for r in results]
        scores.update(per_fold_scores(per_fold))
        scores["higher_is_better"] = self.metric.higher_is_better
        return scores, self.oof_table([rows.ids[i] for i in held], truth[held], oof.probs, fold[held],
                                      decided=oof.decided)

    # -- what blends read and write (kit/workflows/blend.py) -------------------------------------
    output_columns = [OOF_PREDICTED]     # the per-row files' columns of the model's outputs
    truth_columns = ["true"]

    def truth(self, frame, path):
        """oof.csv's "true" column as what the metric scores."""
        return np.asarray(read_numbers(frame["true"].tolist(), None, path, "true"), float)

    def blend_decision(self, truth, blended, evaluation):
        """qwk: cut points tuned on the blended OOF rows; otherwise the numbers are written as they are."""
        if not self.metric.cut_points:
            return None
        return tune_cut_points(truth, self.clipped(blended[:, 0]), *self.spec.scale)[0]

    def oof_table(self, ids, truth, outputs, fold, cut_points=None, decided=None):
        """oof.csv: id, true, pred (the number, clipped to the scale), how it was decided, fold."""
        return pd.DataFrame({"id": ids, "true": truth, OOF_PREDICTED: np.round(self.clipped(outputs[:, 0]), DIGITS),
                             "decided": decided if decided is not None else ["blend"] * len(ids), "fold": fold})

    def value(self, truth, predicted):
        """The metric of predicted numbers (qwk: rounded half up to the scale's integers)."""
        return number_value(self.spec.metric, truth, predicted, self.spec.scale)

    def scores(self, truth, predicted):
        """Every numbers metric of these rows (the spec's first), for CV, kit score and the report."""
        out = {"metric": self.spec.metric, "rows": int(len(truth)), self.spec.metric: self.value(truth, predicted)}
        for name in ("rmse", "mae"):
            out.setdefault(name, number_value(name, truth, predicted))
        return out

    def clipped(self, values):
        values = np.asarray(values, float)
        return np.clip(values, *self.spec.scale) if self.spec.scale else values

    def format_scores(self, scores):
        metric = self.spec.metric
        tuned = (f", {scores['tuned_score']:.4f} at OOF-tuned cut points {scores['cut_points']}"
                 if "cut_points" in scores else "")
        return "\n".join([
            f"{scores['config']['name']}: {metric} {scores[metric]:.4f} (OOF){tuned}; per fold "
            f"{scores['fold_mean']:.4f} ± {scores['fold_std']:.4f}",
            format_number_report(scores),
            f"wall {scores['wall_seconds']} s: train {scores['train_seconds']} s ({scores['train_rows_per_s']} rows/s), "
            f"predict {scores['predict_seconds']} s ({scores['predict_rows_per_s']} rows/s)"])

    def table(self, all_scores):
        metric = self.spec.metric
        arrow = "" if self.metric.higher_is_better else " (lower is better)"
        lines = [f"| config | {metric}{arrow} | tuned | fold mean ± std | train+predict s |", "|" + " --- |" * 5]
        for s in all_scores:
            tuned = f"{s['tuned_score']:.4f}" if "tuned_score" in s else "-"
            lines.append(f"| {s['config']['name']} | {s[metric]:.4f} | {tuned} | {s['fold_mean']:.4f} ± "
                         f"{s['fold_std']:.4f} | {s['train_seconds'] + s['predict_seconds']:.0f} |")
        return "\n".join(lines)

    def verdict(self, all_scores, baseline):
        metric, lines = self.spec.metric, []
        for s in all_scores:
            if s is not baseline:
                wins = self.metric.better(s[metric], baseline[metric])
                lines.append(f"{s['config']['name']} {'BEATS' if wins else 'LOSES TO'} the TF-IDF baseline: "
                             f"{s[metric]:.4f} vs {baseline[metric]:.4f} ({s[metric] - baseline[metric]:+.4f} {metric})"
                             + ("" if wins else "; under this budget, upload the baseline or train longer"))
        return "\n".join(lines)

    # -- prediction ----------------------------------------------------------------------------
    def threshold(self, value, cv_scores, run_key):
        """qwk: the cut points kit cv tuned on this run's OOF rows (the half-way points without
        a CV); no threshold otherwise."""
        if value not in (None, ""):
            raise KitError(f"--threshold: the submission holds numbers ({self.spec.metric}), which no threshold "
                           "decides" + ("; qwk's cut points come from kit cv" if self.metric.cut_points else ""))
        if not self.metric.cut_points:
            return None
        if Path(cv_scores).exists():
            scores = json.loads(Path(cv_scores).read_text())
            if scores.get("run_key") == run_key and "cut_points" in scores:
                return scores["cut_points"]
        return [float(c) for c in np.arange(*self.spec.scale) + 0.5]

    def run_error(self, error, name, runs):
        return error

    def prediction_line(self, stats, path):
        cuts = f"; rounded at cut points {stats['cut_points']}" if stats.get("cut_points") else ""
        return (f"predicted {stats['rows']} rows of {stats['split']} in {stats['seconds']} s ({stats['rows_per_s']} "
                f"rows/s, {stats.get('mean_tokens', '-')} tokens per row, {stats.get('truncated_rows', 0)} truncated); "
                f"the submission holds a number per row{cuts}\nper-row predictions: {path}")

    def written(self, split, rows, prediction, cut_points=None):
        """(the per-row predictions table, {submission column: its numbers}, stats to record)."""
        predicted = self.clipped(prediction.probs[:, 0])
        if self.metric.cut_points:
            written = apply_cut_points(predicted, cut_points, self.spec.scale[0]).astype(int).tolist()
        else:
            written = np.round(predicted, DIGITS).tolist()
        table = pd.DataFrame({"id": rows.ids, OOF_PREDICTED: np.round(predicted, DIGITS), "written": written,
                              "decided": prediction.decided})
        return table, {self.column: written}, {"shape": "number", "cut_points": cut_points}

    def promised(self, rows):
        return None

    def certainty(self, prediction, cut_points=None):
        """Per row, how far its number is from the nearest cut point (qwk: from being written as
        another score). rmse and mae have no such point: every row alike, in order."""
        if not cut_points:
            return np.zeros(len(prediction.decided))
        values = self.clipped(prediction.probs[:, 0])
        return np.abs(values[:, None] - np.asarray(cut_points, float)[None, :]).min(1)


def format_number_report(result):
    names = [result["metric"], *(n for n in ("rmse", "mae") if n != result["metric"])]
    return "   ".join(f"{name}: {result[name]:.4f}" for name in names) + f"   rows: {result['rows']}"
