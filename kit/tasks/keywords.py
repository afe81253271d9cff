"""The keyword task: a [targets] column whose value is a list of keywords per row.

It is learned and scored under its own spec view (Spec.for_target: its answers, input text and
instruction), with run folders keyed by what decides the model (runs/<spec>.<column>-...). Folds
are shuffled (there is no label to stratify on); scores are keyword precision, recall and F1 per
row, averaged: exact after normalisation, and partial (token overlap) beside it."""
from pathlib import Path

import numpy as np
import pandas as pd

from kit.core.errors import KitError
from kit.core.logs import log
from kit.evaluation.folds import assign_folds
from kit.evaluation.keywords import keyword_scores, paper_scores
from kit.inputs.data import Rows
from kit.inputs.tasks import keyword_task, target_rows
from kit.models.keywords import KeywordExtractor
from kit.tasks.label import per_fold_scores


class KeywordColumn:
    """A [targets] column of keyword lists, written joined by the competition's separator."""
    ensembles = False             # keyword lists: nothing for fold ensembles or blends to average
    takes_levers = False          # nor probabilities for pseudo-labels and teachers
    zero_shot = False             # keyword roads are compared with kit cv --target
    one_process = True            # the extractors weigh phrases over the whole split: no shares

    def __init__(self, spec, column):
        self.spec = spec.for_target(column)
        self.column = self.target = column
        self.task = None

    def __str__(self):
        return f"[targets.{self.column}]"

    def progress_mode(self, mode):
        return "keywords"         # how the keyword roads write does not depend on --mode

    def rows(self, split, frame=None):
        return target_rows(self.spec, split, frame)

    def estimator_task(self, train_frame=None):
        if self.task is None:     # the separator may come from the training answers: read them once
            self.task = keyword_task(self.spec, train_frame)
        return self.task

    def untrained_model(self):
        """With no source column there is nothing to learn: the extractor itself predicts."""
        if self.spec.label_column is not None:
            return None
        return KeywordExtractor(self.estimator_task()).fit(Rows([], [], None))   # no train file to read

    def folds(self, rows, folds, seed, holdout):
        if rows.labels is None:
            raise KitError(f"[targets.{self.column}] has no source column: nothing to score keywords against")
        return assign_folds(np.zeros(len(rows), dtype=int), folds, seed, holdout)

    # -- cross-validation ----------------------------------------------------------------------
    def summary(self, rows, fold, results, oof):
        held = np.flatnonzero(fold >= 0)
        gold = [rows.labels[i] for i in held]
        scores = keyword_scores(oof.keywords, gold)
        metric = self.spec.metric
        at = {row: i for i, row in enumerate(held)}
        per_fold = []
        for result in results:
            index = [at[row] for row in result["index"]]
            per_fold.append(keyword_scores([oof.keywords[i] for i in index], [gold[i] for i in index])[metric])
        scores.update(metric=metric, **per_fold_scores(per_fold))
        separator = self.estimator_task().separator
        pairs = [paper_scores(p, g) for p, g in zip(oof.keywords, gold)]
        table = pd.DataFrame({"id": [rows.ids[i] for i in held], "true": [separator.join(g) for g in gold],
                              "predicted": [separator.join(p) for p in oof.keywords],
                              "exact_f1": [round(p[0], 4) for p in pairs], "partial_f1": [round(p[1], 4) for p in pairs],
                              "decided": oof.decided, "fold": fold[held]})
        if oof.answers is not None and any(oof.answers):
            table["answer"] = oof.answers
        return scores, table

    def format_scores(self, scores):
        metric = scores["metric"]
        lines = [f"{scores['config']['name']}: {metric} {scores[metric]:.4f} (held-out rows: {scores['rows']}); "
                 f"per fold {scores['fold_mean']:.4f} ± {scores['fold_std']:.4f}",
                 f"exact P/R/F1 {scores['exact_precision']:.4f} / {scores['exact_recall']:.4f} / "
                 f"{scores['exact_f1']:.4f}; partial P/R/F1 {scores['partial_precision']:.4f} / "
                 f"{scores['partial_recall']:.4f} / {scores['partial_f1']:.4f}; {scores['mean_predicted']} keywords "
                 f"per row (gold {scores['mean_gold']})"]
        if scores.get("fallback_rows"):
            lines.append(f"{scores['fallback_rows']} row(s) fell back from generation to the extractor")
        lines.append(f"wall {scores['wall_seconds']} s: train {scores['train_seconds']} s, "
                     f"predict {scores['predict_seconds']} s ({scores['predict_rows_per_s']} rows/s)")
        return "\n".join(lines)

    def table(self, all_scores):
        """One row per road: the comparison a competitor decides on."""
        lines = ["| config | exact F1 | partial F1 | exact P | exact R | keywords/row | fallback | train s | predict s |",
                 "|" + " --- |" * 9]
        for s in all_scores:
            lines.append(f"| {s['config']['name']} | {s['exact_f1']:.4f} | {s['partial_f1']:.4f} | "
                         f"{s['exact_precision']:.4f} | {s['exact_recall']:.4f} | {s['mean_predicted']} | "
                         f"{s['fallback_rows']} | {s['train_seconds']:.0f} | {s['predict_seconds']:.0f} |")
        return "\n".join(lines)

    def verdict(self, all_scores, baseline):
        return ""                 # the table says it: the extractors are roads, not a baseline to beat

    # -- prediction ----------------------------------------------------------------------------
    def threshold(self, value, cv_scores, run_key):
        return None               # --threshold is the label's

    def run_error(self, error, name, runs):
        if name is None and str(error).startswith("no trained run"):
            return KitError(f"{self}: no trained run for it in {runs}/; train it with "
                            f"`python -m kit train --spec {self.spec.path} --target {self.column}`")
        return KitError(f"{self}: {error}")

    def prediction_line(self, stats, path):
        """What `kit predict` says about this column."""
        decided = ", ".join(f"{k}: {v}" for k, v in stats["decided"].items())
        scored = stats.get("scores")
        return (f"{self.column}: {stats['rows']} rows in {stats['seconds']} s; decided by {decided}; "
                f"{stats['empty_rows']} empty" + (f"; exact F1 {scored['exact_f1']:.4f}, partial F1 "
                                                  f"{scored['partial_f1']:.4f} against the split's {self.column}"
                                                  + (" (its training rows)" if scored.get("on_training_rows") else "")
                                                  if scored else ""))

    def written(self, split, rows, prediction, threshold=None):
        """(the per-row predictions table, {its submission column: the value per row}, stats to record)."""
        separator = self.estimator_task().separator
        values = [separator.join(keywords) for keywords in prediction.keywords]
        table = pd.DataFrame({"id": rows.ids, self.column: values, "decided": prediction.decided})
        if prediction.answers is not None:
            table["answer"] = prediction.answers
        stats = {"column": self.column, "empty_rows": sum(not v for v in values)}
        if rows.labels is not None:       # a split with its answers (a labelled test copy): score it too
            stats["scores"] = keyword_scores(prediction.keywords, rows.labels)
            if Path(self.spec.split_path(split)).resolve() == Path(self.spec.train).resolve():
                stats["scores"]["on_training_rows"] = True
                log(f"predict: warning: split {split} is the file {self.column} was trained on; its keyword "
                    "scores are not held-out scores (use kit cv --target)")
        return table, {self.column: values}, stats

    def promised(self, rows):
        """Per row whether a value is owed: every row that has text."""
        return [bool(text.strip()) for text in rows.texts]
