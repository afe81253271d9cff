"""Scores as plain functions over label indices and probabilities (scikit-learn underneath)."""
import numpy as np
from sklearn import metrics as sk


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
    if name == "f1":
        return float(sk.f1_score(truth, predicted, zero_division=0))
    if name == "macro_f1":
        return float(sk.f1_score(truth, predicted, average="macro", zero_division=0))
    if name == "accuracy":
        return float(sk.accuracy_score(truth, predicted))
    if name == "auc":
        return float(sk.roc_auc_score(truth, probs[:, 1])) if len(set(truth)) == 2 else float("nan")
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
