"""The label task: one of the spec's labels per row, from a probability per label.

Folds are stratified by label; the OOF score is the spec's metric (and for two labels a threshold
tuned on the OOF rows); the per-row file holds id, label, a probability per label, how each row
was decided and the raw answer of a generative head."""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from kit.core.errors import KitError
from kit.evaluation.folds import assign_folds
from kit.evaluation.metrics import decide, format_report, metric_info, metric_value, report, tune_threshold
from kit.inputs import shapes
from kit.inputs.data import load_rows
from kit.inputs.tasks import Task
from kit.models.base import Prediction

# what `kit predict` says the submission holds, by shape
SHOWN = {"label": "labels", "probability": "P({positive}) per row", "classes": "a probability per label",
         "top_k": "the top labels per row, best first"}
OOF_PREDICTED = "pred"       # oof.csv's column of the predicted label (beside "true")


def predicted_column(frame):
    """The predicted label's column of an OOF or predictions file: "pred" in oof.csv (older ones
    said "label", as the per-split predictions files do)."""
    return OOF_PREDICTED if OOF_PREDICTED in frame.columns else "label"


class LabelColumn:
    """The spec's [columns] label, written into the submission's label column."""
    target = None                 # not a [targets] column
    ensembles = True              # a probability per label and row: fold ensembles and blends average them
    takes_levers = True           # and pseudo-labels and teachers are made of them
    zero_shot = True              # an instruct LLM can answer its label words untrained
    one_process = False           # CV folds and prediction rows can be shared out to ranks

    def __init__(self, spec):
        self.spec = spec
        self.column = spec.submission_label or spec.label_column
        self.metric = metric_info(spec.metric)

    @property
    def thresholded(self):
        """Two labels and a metric over decided labels: a threshold on P(positive) decides them,
        and kit cv tunes it. A probability, per-class or top-k submission takes none."""
        return len(self.spec.labels) == 2 and self.metric.needs == "labels"

    def __str__(self):
        return "the label"

    def progress_mode(self, mode):
        """What keys this column's predict progress and CV folds besides the model (the mode)."""
        return mode

    def rows(self, split, frame=None):
        """(Rows, the split's frame); frame: the split's CSV when the caller has read it already."""
        return load_rows(self.spec, split, frame)

    def estimator_task(self, train_frame=None):
        return Task.from_spec(self.spec)

    def untrained_model(self):
        return None               # a label always needs a trained run

    def folds(self, rows, folds, seed, holdout):
        return assign_folds(rows.labels, folds, seed, holdout)

    # -- cross-validation ----------------------------------------------------------------------
    def summary(self, rows, fold, results, oof):
        """(scores, the OOF table) from oof, the prediction of every held-out row in row order."""
        spec, held = self.spec, np.flatnonzero(fold >= 0)
        truth, binary = np.asarray(rows.labels), len(spec.labels) == 2
        parsed = oof.parsed if oof.parsed is not None else np.full(len(held), -1)
        scores = report(truth[held], oof.probs, spec.labels, spec.metric, parsed)
        at = {row: i for i, row in enumerate(held)}
        per_fold = []
        for result in results:
            index = [at[row] for row in result["index"]]
            predicted = decide(oof.probs[index], parsed[index], 0.5 if binary else None)
            per_fold.append(metric_value(spec.metric, truth[result["index"]], predicted, oof.probs[index]))
        scores.update(per_fold_scores(per_fold))
        scores["higher_is_better"] = self.metric.higher_is_better
        if self.thresholded:
            threshold, tuned = tune_threshold(truth[held], oof.probs[:, 1], spec.metric)
            scores["tuned_threshold"], scores["tuned_score"] = round(threshold, 4), round(tuned, 4)
        labels = decide(oof.probs, parsed, 0.5 if binary else None)
        if oof.answers is not None and not any(oof.answers):
            oof.answers = None
        # oof.csv: "true" is the answer, "pred" the prediction (read back as "label" in older files)
        table = self.table_of([rows.ids[i] for i in held], oof, labels).rename(columns={"label": OOF_PREDICTED})
        table.insert(1, "true", [spec.labels[i] for i in truth[held]])
        table["fold"] = fold[held]
        return scores, table

    # -- what blends read and write (kit/workflows/blend.py) -------------------------------------
    @property
    def output_columns(self):
        """The per-row files' columns of the model's outputs: a probability per label."""
        return [f"p_{label}" for label in self.spec.labels]

    truth_columns = ["true"]

    def truth(self, frame, path):
        """oof.csv's "true" column as label indices."""
        values = frame["true"].tolist()
        lookup = {label: i for i, label in enumerate(self.spec.labels)}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise KitError(f"{path}: true label(s) {unknown[:3]} are not in the spec's labels {self.spec.labels}")
        return np.array([lookup[t] for t in values])

    def blend_decision(self, truth, blended, evaluation):
        """Two labels and a label metric: the threshold tuned on the blended OOF rows; else argmax."""
        return evaluation["threshold"]

    def oof_table(self, ids, truth, outputs, fold, threshold=None):
        """oof.csv of blended outputs: id, true, pred (decided at threshold), a probability per label, fold."""
        table = self.table_of(ids, Prediction(outputs, ["blend"] * len(ids)), decide(outputs, None, threshold))
        table = table.rename(columns={"label": OOF_PREDICTED})
        table.insert(1, "true", [self.spec.labels[i] for i in truth])
        table["fold"] = fold
        return table

    def format_scores(self, scores):
        metric = self.spec.metric
        how = "OOF, threshold 0.5" if self.thresholded else "OOF"
        lines = [f"{scores['config']['name']}: {metric} {scores[metric]:.4f} ({how})"
                 + (f", {scores['tuned_score']:.4f} at tuned threshold {scores['tuned_threshold']}"
                    if "tuned_threshold" in scores else "")
                 + f"; per fold {scores['fold_mean']:.4f} ± {scores['fold_std']:.4f}",
                 format_report(scores, self.spec.labels)]
        if scores.get("fallback_rows"):
            lines.append(f"{scores['fallback_rows']} row(s) fell back from generation to label scoring")
        lines.append(f"wall {scores['wall_seconds']} s: train {scores['train_seconds']} s "
                     f"({scores['train_rows_per_s']} rows/s), predict {scores['predict_seconds']} s "
                     f"({scores['predict_rows_per_s']} rows/s)")
        if scores.get("frozen"):
            frozen = scores["frozen"]
            lines.append(f"frozen lower blocks: {frozen['rows_computed']} row states computed, {frozen['rows_reused']} "
                         f"reused from the state cache ({frozen['seconds']} s in the frozen pass)")
        return "\n".join(lines)

    def table(self, all_scores):
        """One row per configuration: the comparison a competitor decides on."""
        metric = self.spec.metric
        arrow = "" if self.metric.higher_is_better else " (lower is better)"
        header = f"| config | {metric}{arrow} | tuned | fold mean ± std | train+predict s | train rows/s | predict rows/s |"
        lines = [header, "|" + " --- |" * 7]
        for s in all_scores:
            tuned = f"{s['tuned_score']:.4f}" if "tuned_score" in s else "-"
            lines.append(f"| {s['config']['name']} | {s[metric]:.4f} | {tuned} | {s['fold_mean']:.4f} ± "
                         f"{s['fold_std']:.4f} | {s['train_seconds'] + s['predict_seconds']:.0f} | "
                         f"{s['train_rows_per_s']} | {s['predict_rows_per_s']} |")
        return "\n".join(lines)

    def verdict(self, all_scores, baseline):
        """Say plainly when the LLM road loses to the classical baseline under this budget."""
        metric = self.spec.metric
        lines = []
        for s in all_scores:
            if s is baseline:
                continue
            gap = s[metric] - baseline[metric]
            wins = self.metric.better(s[metric], baseline[metric])
            lines.append(f"{s['config']['name']} {'BEATS' if wins else 'LOSES TO'} the TF-IDF baseline: {s[metric]:.4f} vs "
                         f"{baseline[metric]:.4f} ({gap:+.4f} {metric})"
                         + ("" if wins else "; under this budget, upload the baseline or train longer"))
        return "\n".join(lines)

    # -- prediction ----------------------------------------------------------------------------
    def threshold(self, value, cv_scores, run_key):
        """None / a number / 'oof' (the threshold kit cv tuned on out-of-fold rows of this run,
        read from its cv_scores file, which must have been made under run_key)."""
        if value in (None, ""):
            return None
        if len(self.spec.labels) != 2:
            raise KitError("--threshold applies to binary tasks only")
        if not self.thresholded:
            raise KitError(f"--threshold: the submission holds {self.spec.shape} values for metric "
                           f"{self.spec.metric}, which no threshold decides")
        if str(value) == "oof":
            if not Path(cv_scores).exists():
                raise KitError(f"--threshold oof: {cv_scores} not found; run `python -m kit cv` with the same "
                               "settings as the training run first (it writes into the same run folder)")
            scores = json.loads(Path(cv_scores).read_text())
            if scores.get("run_key") != run_key or "tuned_threshold" not in scores:
                raise KitError(f"--threshold oof: {cv_scores} was not made by this run's settings; "
                               "run `python -m kit cv` again with them")
            return float(scores["tuned_threshold"])
        try:
            number = float(value)
        except ValueError:
            raise KitError(f"--threshold {value!r}: give a number in (0, 1) or 'oof'") from None
        if not 0 < number < 1:
            raise KitError(f"--threshold {number}: must be between 0 and 1")
        return number

    def run_error(self, error, name, runs):
        return error              # the run finder's own message names the spec and the command

    def prediction_line(self, stats, path):
        """What `kit predict` says about this column."""
        decided = ", ".join(f"{k}: {v}" for k, v in stats["decided"].items())
        return (f"predicted {stats['rows']} rows of {stats['split']} in {stats['seconds']} s ({stats['rows_per_s']} "
                f"rows/s, {stats.get('mean_tokens', '-')} tokens per row, {stats.get('truncated_rows', 0)} truncated); "
                f"decided by {decided}; {stats.get('fallback_rows', 0)} fell back"
                + (f"; the submission holds {SHOWN[stats['shape']].format(positive=self.spec.positive)}" if "shape" in stats else "")
                + f"\nper-row predictions: {path}")

    def written(self, split, rows, prediction, threshold=None):
        """(the per-row predictions table, {submission column: its values}, stats to record)."""
        cut = threshold if threshold is not None else 0.5
        labels = decide(prediction.probs, prediction.parsed, cut, positive=1)
        stats = {"threshold": cut} if self.thresholded else {"shape": self.spec.shape}
        return (self.table_of(rows.ids, prediction, labels), shapes.values(self.spec, prediction.probs, labels), stats)

    def promised(self, rows):
        return None               # every row has a label

    def certainty(self, prediction, threshold=None):
        """Per row, how far its prediction is from another label (a time budget's second pass
        re-scores the smallest first): the distance to the threshold, else the top two's margin."""
        probs = np.asarray(prediction.probs, float)
        if self.thresholded:
            return np.abs(probs[:, 1] - (threshold if threshold is not None else 0.5))
        top = np.sort(probs, axis=1)
        return top[:, -1] - top[:, -2]

    def table_of(self, ids, prediction, labels):
        """Per-row predictions: id, label, probability per label, how it was decided, raw answer."""
        frame = pd.DataFrame({"id": ids, "label": [self.spec.labels[i] for i in labels]})
        for j, label in enumerate(self.spec.labels):
            frame[f"p_{label}"] = np.round(prediction.probs[:, j], 6)
        frame["decided"] = prediction.decided
        if prediction.answers is not None:
            frame["answer"] = prediction.answers
        return frame


def per_fold_scores(per_fold):
    return {"per_fold": [round(v, 4) for v in per_fold], "fold_mean": round(float(np.mean(per_fold)), 4),
            "fold_std": round(float(np.std(per_fold)), 4)}
