"""Submission shapes: what the label's submission columns hold, how they are checked, and how a
submission is read back into probabilities for `kit score`.

label        the label, in its CSV form (f1, macro_f1, accuracy)
probability  P(the positive label), the second of two labels (auc, logloss)
classes      a column per label holding its probability, rows summing to 1 (logloss, auc)
top_k        the k most probable labels, best first, joined by a separator (map@k)
number       a number per row, inside the spec's scale when it has one (rmse, mae); qwk: an
             integer of the scale
column_probabilities   several label columns: each column's probability (mean_auc)
column_flags           several label columns: each column 0 or 1 (micro_f1, macro_f1)
"""
import numpy as np

from kit.core.errors import KitError
from kit.evaluation.metrics import metric_info, ranked

SHAPES = ("label", "probability", "classes", "top_k", "number")
MULTI_SHAPES = ("column_probabilities", "column_flags")     # a spec with several label columns
SUM_TOLERANCE = 1e-3      # how far a per-class row may sum from 1 (written ones: within 1e-5)
DIGITS = 6                # probabilities are written rounded to this many decimals
FITS = {"label": "labels", "probability": "probabilities", "classes": "probabilities", "top_k": "ranking", "number": "numbers",
        "column_probabilities": "probabilities", "column_flags": "labels"}


def default_shape(metric, labels, several=False):
    """The shape a competition scored by this metric asks for (several: of several label columns)."""
    needs = metric_info(metric).needs
    if several:
        return "column_probabilities" if needs == "probabilities" else "column_flags"
    if needs == "probabilities":
        return "probability" if len(labels) == 2 else "classes"
    return {"labels": "label", "ranking": "top_k", "numbers": "number"}[needs]


def shape_error(shape, metric, labels, several=False):
    """A one-line reason this shape does not fit the metric or the labels (None: it fits)."""
    known = MULTI_SHAPES if several else SHAPES
    if shape not in known:
        return (f"{shape!r} is not one of {', '.join(known)}"
                + (" (the shapes of several label columns)" if several else ""))
    needs = metric_info(metric).needs
    if FITS[shape] != needs:
        return (f"{shape!r} does not fit metric {metric!r}, which scores {needs}; "
                f"use shape = {default_shape(metric, labels, several)!r}")
    if shape == "probability" and len(labels) != 2:
        return f"'probability' writes P(positive) of two labels, the task has {len(labels)}; use 'classes'"
    return None


def label_columns(spec):
    """The submission columns the label fills."""
    return list(spec.class_columns.values()) if spec.class_columns else [spec.submission_label]


def top_k(spec):
    return metric_info(spec.metric).k


def values(spec, probs, labels):
    """{submission column: its values} from the probabilities (rows x labels) and the decided
    label indices."""
    probs = np.asarray(probs, float)
    if spec.shape == "label":
        return {spec.submission_label: [spec.labels[i] for i in labels]}
    if spec.shape == "probability":
        return {spec.submission_label: np.round(probs[:, 1], DIGITS).tolist()}
    if spec.shape == "classes":
        normalised = probs / probs.sum(1, keepdims=True)
        return {column: np.round(normalised[:, j], DIGITS).tolist()
                for j, column in enumerate(spec.class_columns.values())}
    lists = [spec.separator.join(spec.labels[j] for j in row) for row in ranked(probs, top_k(spec))]
    return {spec.submission_label: lists}


def _numbers(submission, column, where):
    """A column of probabilities as floats: finite and in [0, 1], else the first bad row."""
    raw = submission[column]
    numbers = np.array([_float(v) for v in raw])
    bad = ~np.isfinite(numbers) | (numbers < 0) | (numbers > 1)
    if bad.any():
        row = int(bad.argmax())
        raise KitError(f"{where}: row {row + 2}: {column} {raw.iloc[row]!r} is not a probability in [0, 1]")
    return numbers


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _lists(spec, submission, where):
    """Each row's top-k list as label indices: k distinct known labels."""
    column, k, index = spec.submission_label, top_k(spec), {label: i for i, label in enumerate(spec.labels)}
    out = []
    for row, value in enumerate(submission[column].astype(str)):
        items = value.split(spec.separator)
        if len(items) != k or len(set(items)) != k or not all(item in index for item in items):
            raise KitError(f"{where}: row {row + 2}: {column} {value!r} is not {k} distinct labels of {spec.labels} "
                           f"joined by {spec.separator!r}")
        out.append([index[item] for item in items])
    return np.array(out, int).reshape(len(out), k)


def check(spec, submission, where):
    """Raise KitError unless the label's columns hold what the shape writes."""
    if spec.shape == "label":
        column = spec.submission_label
        bad = ~submission[column].astype(str).isin(spec.labels)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise KitError(f"{where}: row {row + 2}: label {submission[column].iloc[row]!r} is not one of {spec.labels}")
    elif spec.shape == "probability":
        _numbers(submission, spec.submission_label, where)
    elif spec.shape == "classes":
        _class_probs(spec, submission, where)
    elif spec.shape == "number":
        written_numbers(spec, submission, where)
    elif spec.shape in MULTI_SHAPES:
        column_outputs(spec, submission, where)
    else:
        _lists(spec, submission, where)


def column_outputs(spec, submission, where):
    """Several label columns' values (rows x columns): probabilities in [0, 1], or flags 0 / 1."""
    if spec.shape == "column_probabilities":
        return np.stack([_numbers(submission, c, where) for c in spec.class_columns.values()], 1)
    out = []
    for column in spec.class_columns.values():
        raw = submission[column]
        numbers = np.array([_float(v) for v in raw])
        bad = ~np.isin(numbers, (0.0, 1.0))
        if bad.any():
            row = int(bad.argmax())
            raise KitError(f"{where}: row {row + 2}: {column} {raw.iloc[row]!r} is not 0 or 1")
        out.append(numbers)
    return np.stack(out, 1)


def written_numbers(spec, submission, where):
    """A submission's numbers: finite, inside the scale, integers under qwk; else the first bad row."""
    column = spec.submission_label
    raw = submission[column]
    numbers = np.array([_float(v) for v in raw])
    bad = ~np.isfinite(numbers)
    if spec.scale:
        bad |= (numbers < spec.scale[0]) | (numbers > spec.scale[1])
    integers = metric_info(spec.metric).cut_points
    if integers:
        bad |= ~np.isclose(numbers, np.round(numbers))
    if bad.any():
        row = int(bad.argmax())
        what = "an integer" if integers else "a finite number"
        inside = f" in [{spec.scale[0]:g}, {spec.scale[1]:g}]" if spec.scale else ""
        raise KitError(f"{where}: row {row + 2}: {column} {raw.iloc[row]!r} is not {what}{inside}")
    return numbers


def _class_probs(spec, submission, where):
    probs = np.stack([_numbers(submission, c, where) for c in spec.class_columns.values()], 1)
    off = np.abs(probs.sum(1) - 1) > SUM_TOLERANCE
    if off.any():
        row = int(off.argmax())
        raise KitError(f"{where}: row {row + 2}: the per-class columns sum to {probs[row].sum():.6g}, "
                       f"not 1 (within {SUM_TOLERANCE:g})")
    return probs


def read_back(spec, submission, where):
    """(probs rows x labels, decided label index per row) of a submission in a shape that holds
    more than a label: what `kit score` scores (a label submission is read as labels are read
    everywhere, inputs/data.py::normalise_labels). Each reader validates what it reads; a top-k
    list gives descending scores in its order (all that map@k looks at)."""
    n = len(spec.labels)
    if spec.shape == "probability":
        positive = _numbers(submission, spec.submission_label, where)
        probs = np.stack([1 - positive, positive], 1)
    elif spec.shape == "classes":
        probs = _class_probs(spec, submission, where)
    else:
        lists = _lists(spec, submission, where)
        probs = np.zeros((len(lists), n))
        k = lists.shape[1]
        np.put_along_axis(probs, lists, (k - np.arange(k)) / (k * (k + 1) / 2), axis=1)
        return probs, lists[:, 0]
    return probs, probs.argmax(1)
