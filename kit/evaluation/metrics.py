"""Scores as plain functions over label indices and probabilities (scikit-learn underneath), and
the registry of what each metric is: its direction, what it scores, the labels it fits."""
import re
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as sk

CLIP = 1e-15            # log loss clips probabilities to [CLIP, 1 - CLIP], as Kaggle's metric does


@dataclass(frozen=True)
class Metric:
    """What a competition's metric scores. needs: "labels" (one decided label per row: a threshold
    can be tuned for it), "probabilities" (a probability per label: no threshold), "ranking" (the
    labels best first, k of them), "numbers" (a number per row: rmse, mae; qwk rounds them to the
    scale's integers at cut points tuned on OOF rows, cut_points=True)."""
    name: str
    higher_is_better: bool
    needs: str
    binary_only: bool = False
    k: int = None
    cut_points: bool = False
    rows_of: str = "one"       # "one": one label (or number) per row; "several": several label columns;
                               # "either": both (macro_f1: over the labels, or over the columns)

    def better(self, a, b):
        """Whether score a beats score b."""
        return a > b if self.higher_is_better else a < b

    def sort_key(self, score):
        """Sorting by this key puts the best score first."""
        return -score if self.higher_is_better else score

    def check_labels(self, count, where):
        """A one-line reason this metric does not fit count labels (None: it fits)."""
        if self.binary_only and count != 2:
            return f"{where} metric: {self.name!r} needs two labels; use macro_f1 or logloss for {count}"
        if self.k is not None and not 1 <= self.k <= count:
            return f"{where} metric: {self.name!r} ranks {self.k} labels, the task has {count}"
        if self.rows_of == "several":
            return (f"{where} metric: {self.name!r} scores several label columns; one label per row takes "
                    "f1, macro_f1, accuracy, auc, logloss or map@K")
        return None

    def check_columns(self, where):
        """A one-line reason this metric does not score several label columns (None: it does)."""
        if self.rows_of == "one":
            return (f"{where} metric: {self.name!r} scores one label per row; several label columns take "
                    f"{', '.join(MULTI_LABEL_METRICS)}")
        return None


REGISTRY = {
    "f1": Metric("f1", True, "labels", binary_only=True),
    "macro_f1": Metric("macro_f1", True, "labels", rows_of="either"),
    "accuracy": Metric("accuracy", True, "labels"),
    "auc": Metric("auc", True, "probabilities"),
    "logloss": Metric("logloss", False, "probabilities"),
    "rmse": Metric("rmse", False, "numbers"),
    "mae": Metric("mae", False, "numbers"),
    "qwk": Metric("qwk", True, "numbers", cut_points=True),
    "mean_auc": Metric("mean_auc", True, "probabilities", rows_of="several"),
    "micro_f1": Metric("micro_f1", True, "labels", rows_of="several"),
}
METRIC_NAMES = (*REGISTRY, "map@K")
NUMBER_METRICS = tuple(name for name, metric in REGISTRY.items() if metric.needs == "numbers")
MULTI_LABEL_METRICS = tuple(name for name, metric in REGISTRY.items() if metric.rows_of != "one")
MAP_AT = re.compile(r"map@([1-9][0-9]?)")


def metric_info(name):
    """The Metric of a name ("map@3" carries its k); None for a name the kit does not know."""
    if name in REGISTRY:
        return REGISTRY[name]
    match = MAP_AT.fullmatch(str(name))
    return Metric(name, True, "ranking", k=int(match.group(1))) if match else None


def log_loss(truth, probs):
    """Mean negative log probability of the true label, each row clipped to [CLIP, 1 - CLIP] and
    renormalised to sum to 1 (Kaggle's multi-class log loss; binary is its two-column case)."""
    p = np.clip(np.asarray(probs, float), CLIP, 1 - CLIP)
    p = p / p.sum(1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(p)), np.asarray(truth)])))


def ranked(probs, k):
    """The k most probable label indices per row, best first (ties: the earlier label)."""
    return np.argsort(-np.asarray(probs, float), axis=1, kind="stable")[:, :k]


def map_at_k(truth, top):
    """Mean average precision at k with one true label per row: 1/rank of the true label among
    the k listed (best first), 0 when it is not listed."""
    truth, top = np.asarray(truth), np.asarray(top)
    hits = top == truth[:, None]
    rank = hits.argmax(1) + 1
    return float(np.mean(np.where(hits.any(1), 1.0 / rank, 0.0)))


def _auc(truth, probs):
    if len(set(truth)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(sk.roc_auc_score(truth, probs[:, 1]))
    if len(set(truth)) < probs.shape[1]:
        return float("nan")        # one-vs-rest needs every label among the rows
    p = probs / probs.sum(1, keepdims=True)
    return float(sk.roc_auc_score(truth, p, multi_class="ovr", labels=list(range(probs.shape[1]))))


def number_value(name, truth, values, scale=None):
    """A numbers metric of predicted values (qwk: of the scale's integers they round to, half up)."""
    truth, values = np.asarray(truth, float), np.asarray(values, float)
    if name == "rmse":
        return float(np.sqrt(np.mean((truth - values) ** 2)))
    if name == "mae":
        return float(np.mean(np.abs(truth - values)))
    if name == "qwk":
        return quadratic_kappa(truth, round_half_up(values, scale), scale)
    raise ValueError(f"unknown numbers metric {name!r}")


def round_half_up(values, scale=None):
    """The integers a submission writes: 2.5 -> 3 (np.rint would give 2), clipped to the scale."""
    rounded = np.floor(np.asarray(values, float) + 0.5)
    return np.clip(rounded, *scale) if scale else rounded


def quadratic_kappa(truth, values, scale=None):
    """Cohen's kappa with quadratic weights on integer scores, the weights over every integer of
    the scale (a score nobody gave still counts in the distances); 1.0 when both are one constant."""
    truth, values = round_half_up(truth).astype(int), round_half_up(values).astype(int)
    labels = list(range(int(scale[0]), int(scale[1]) + 1)) if scale else None
    if len(set(truth.tolist()) | set(values.tolist())) < 2:
        return 1.0
    return float(sk.cohen_kappa_score(truth, values, weights="quadratic", labels=labels))


def apply_cut_points(values, cuts, low):
    """Integers from values: low below the first cut, low + 1 below the second, and so on."""
    return low + np.searchsorted(np.asarray(cuts, float), np.asarray(values, float), side="right")


def tune_cut_points(truth, values, low, high, rounds=3):
    """Cut points between the scale's integers that maximise QWK on these rows (OOF, never the
    test): start at the half-way points, then move one cut at a time to the best of a grid of
    candidates between its neighbours, a few rounds over all cuts (the "optimised rounder" of
    essay-scoring competitions). Returns (cuts, their QWK)."""
    scale = (low, high)
    cuts = np.arange(low, high) + 0.5
    best = quadratic_kappa(truth, apply_cut_points(values, cuts, low), scale)
    for _ in range(rounds):
        for i in range(len(cuts)):
            lower = cuts[i - 1] if i else min(float(np.min(values)), cuts[i] - 1)
            upper = cuts[i + 1] if i + 1 < len(cuts) else max(float(np.max(values)), cuts[i] + 1)
            for candidate in np.linspace(lower, upper, 41)[1:-1]:
                trial = cuts.copy()
                trial[i] = candidate
                score = quadratic_kappa(truth, apply_cut_points(values, trial, low), scale)
                if score > best + 1e-12:
                    best, cuts = score, trial
    return [round(float(c), 4) for c in cuts], best


def multi_label_value(name, truth, probs, thresholds=0.5):
    """A metric over several 0/1 label columns (rows x columns): mean_auc averages each column's
    AUC (columns whose rows are all 0 or all 1 have none and are left out, as in the toxic-comment
    competitions); micro_f1 and macro_f1 decide each column at its threshold."""
    truth, probs = np.asarray(truth, int), np.asarray(probs, float)
    if name == "mean_auc":
        aucs = column_aucs(truth, probs)
        scored = [a for a in aucs if not np.isnan(a)]
        return float(np.mean(scored)) if scored else float("nan")
    decided = (probs >= np.asarray(thresholds, float)).astype(int)
    average = {"micro_f1": "micro", "macro_f1": "macro"}[name]
    return float(sk.f1_score(truth, decided, average=average, zero_division=0))


def column_aucs(truth, probs):
    """Each label column's AUC (NaN where its rows are all one value)."""
    return [float(sk.roc_auc_score(truth[:, j], probs[:, j])) if len(set(truth[:, j].tolist())) == 2
            else float("nan") for j in range(truth.shape[1])]


def tune_column_thresholds(truth, probs):
    """Per label column, the threshold of best F1 on these rows (OOF, never the test)."""
    truth = np.asarray(truth, int)
    return [round(tune_threshold(truth[:, j], probs[:, j], "f1")[0], 4) for j in range(truth.shape[1])]


def decide(probs, parsed=None, threshold=None, positive=1):
    """Label index per row: a parsed generated answer wins; otherwise the probabilities decide
    (binary: P(positive) >= threshold; else the most probable label)."""
    if threshold is not None and probs.shape[1] == 2:
        labels = np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    else:
        labels = probs.argmax(1)
    if parsed is not None:
        labels = np.where(np.asarray(parsed) >= 0, parsed, labels)
    return labels


def metric_value(name, truth, predicted, probs=None):
    """The metric of rows: predicted label indices for label metrics, probs (rows x labels) for
    the others."""
    truth = np.asarray(truth)
    info = metric_info(name)
    if info is not None and info.needs == "ranking":
        return map_at_k(truth, ranked(probs, info.k))
    if name == "logloss":
        return log_loss(truth, probs)
    if name == "f1":
        return float(sk.f1_score(truth, predicted, zero_division=0))
    if name == "macro_f1":
        return float(sk.f1_score(truth, predicted, average="macro", zero_division=0))
    if name == "accuracy":
        return float(sk.accuracy_score(truth, predicted))
    if name == "auc":
        return _auc(truth, np.asarray(probs, float))
    raise ValueError(f"unknown metric {name!r}")


def tune_threshold(truth, positive_probs, metric="f1"):
    """The decision threshold that maximises the metric on these rows (OOF, never the test)."""
    candidates = np.unique(np.round(positive_probs, 4))
    if len(candidates) > 400:
        candidates = np.quantile(positive_probs, np.linspace(0.0025, 0.9975, 400))
    best = (metric_value(metric, truth, (positive_probs >= 0.5).astype(int)), 0.5)
    for t in candidates:
        score = metric_value(metric, truth, (positive_probs >= t).astype(int))
        if score > best[0] + 1e-12:
            best = (score, float(t))
    return best[1], best[0]


def report(truth, probs, label_names, metric, parsed=None, threshold=0.5):
    """Everything a competitor looks at: the metric, accuracy, per-class P/R/F1, confusion."""
    truth = np.asarray(truth)
    binary = len(label_names) == 2
    predicted = decide(probs, parsed, threshold if binary else None)
    out = {"metric": metric, "rows": int(len(truth)),
           metric: metric_value(metric, truth, predicted, probs),
           "accuracy": metric_value("accuracy", truth, predicted),
           "macro_f1": metric_value("macro_f1", truth, predicted)}
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        truth, predicted, labels=range(len(label_names)), zero_division=0)
    out["per_class"] = {name: {"precision": round(float(p), 4), "recall": round(float(r), 4),
                               "f1": round(float(f), 4), "support": int(s)}
                        for name, p, r, f, s in zip(label_names, precision, recall, f1, support)}
    out["confusion"] = sk.confusion_matrix(truth, predicted, labels=range(len(label_names))).tolist()
    if binary:
        out["auc"] = metric_value("auc", truth, predicted, probs)
        out["threshold"] = threshold
    return out


def format_report(result, label_names):
    """A readable table of a report() result."""
    metric = result["metric"]
    lines = [f"{metric}: {result[metric]:.4f}   accuracy: {result['accuracy']:.4f}"
             + (f"   AUC: {result['auc']:.4f}" if "auc" in result else "") + f"   rows: {result['rows']}"]
    width = max(len(str(n)) for n in label_names) + 2
    lines.append(f"{'label':<{width}} precision  recall     f1  support")
    for name, row in result["per_class"].items():
        lines.append(f"{name:<{width}} {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:6.4f} {row['support']:8d}")
    lines.append("confusion (rows: true, columns: predicted): " + " ".join(map(str, label_names)))
    for name, row in zip(label_names, result["confusion"]):
        lines.append(f"  {name:<{width}}" + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)
