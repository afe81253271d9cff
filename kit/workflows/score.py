"""`kit score`: a predictions or submission file against labelled rows, the label's metric and each keyword
column's F1."""
import numpy as np

from kit.core.errors import KitError
from kit.evaluation.keywords import keyword_scores, split_keywords
from kit.evaluation.metrics import format_report, report
from kit.inputs.data import clean_ids, id_key, labelled_rows, normalise_labels, read_csv
from kit.inputs.shapes import column_outputs, label_columns, read_back, written_numbers
from kit.tasks.label import predicted_column
from kit.tasks.number import NumberColumn, format_number_report
from kit.tasks.several import SeveralLabelsColumn, format_columns_report


def score_file(spec, pred_path, truth_path):
    """`kit score`: a predictions file (id, label, p_<label>...) or a submission in the spec's
    shape, against a labelled CSV."""
    truth_ids, truth = labelled_rows(spec, truth_path)
    truth_ids = [id_key(i) for i in truth_ids]            # '12.0' and '12' are the same id
    frame = read_csv(pred_path)
    if spec.shape == "number":
        return _score_numbers(spec, frame, pred_path, truth_ids, truth, truth_path)
    if spec.several_labels:
        return _score_columns(spec, frame, pred_path, truth_ids, truth, truth_path)
    prob_cols = [f"p_{label}" for label in spec.labels]
    id_col = next((c for c in ("id", spec.submission_id, spec.id_column) if c in frame.columns), None)
    label = predicted_column(frame)
    predictions = label in frame.columns and all(c in frame.columns for c in prob_cols)   # the kit's per-row file
    if id_col is None or not (predictions or all(c in frame.columns for c in label_columns(spec))):
        raise KitError(f"{pred_path}: needs an id column and a label column ({spec.submission_id!r} and "
                       f"{', '.join(map(repr, label_columns(spec)))} as the submission writes them, or a predictions "
                       f"file's id, label and p_<label> columns); has {list(frame.columns)}")
    if predictions or spec.shape == "label":              # labels, read as everywhere ("1.0" is "1")
        label = label if predictions else spec.submission_label
        decided = np.array(normalise_labels(frame[label].tolist(), spec.labels, pred_path, label))
        probs = frame[prob_cols].astype(float).to_numpy() if predictions else np.eye(len(spec.labels))[decided]
    else:                                                 # a submission holding probabilities or a ranking
        probs, decided = read_back(spec, frame, str(pred_path))
    order = _in_truth_order(frame, id_col, pred_path, truth_ids, truth_path)
    return report(truth, probs[order], spec.labels, spec.metric, parsed=decided[order])


def _in_truth_order(frame, id_col, pred_path, truth_ids, truth_path):
    """The row of each labelled id in the predictions file, refused unless both hold the same ids."""
    ids = [id_key(i) for i in clean_ids(frame, id_col, pred_path)]
    at = {i: n for n, i in enumerate(ids)}
    missing = [i for i in truth_ids if i not in at]
    extra = sorted(set(ids) - set(truth_ids))
    if missing or extra:
        raise KitError(f"{pred_path}: ids do not match {truth_path}: "
                       f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})")
    return [at[i] for i in truth_ids]


def _score_numbers(spec, frame, pred_path, truth_ids, truth, truth_path):
    """A number task's submission (its label column) or predictions file (its written numbers)."""
    column = "written" if "written" in frame.columns else spec.submission_label
    id_col = next((c for c in ("id", spec.submission_id, spec.id_column) if c in frame.columns), None)
    if id_col is None or column not in frame.columns:
        raise KitError(f"{pred_path}: needs an id column and the numbers ({spec.submission_id!r} and "
                       f"{spec.submission_label!r} as the submission writes them); has {list(frame.columns)}")
    numbers = written_numbers(spec, frame.rename(columns={column: spec.submission_label}), str(pred_path))
    order = _in_truth_order(frame, id_col, pred_path, truth_ids, truth_path)
    return NumberColumn(spec).scores(np.asarray(truth, float), numbers[order])


def _score_columns(spec, frame, pred_path, truth_ids, truth, truth_path):
    """Several label columns: a submission's columns, or a predictions file's (p_<column> for
    probabilities, <column> for flags)."""
    written = list(spec.class_columns.values())
    own = [f"p_{c}" for c in spec.class_columns] if spec.shape == "column_probabilities" else list(spec.class_columns)
    source = next((names for names in (written, own) if all(c in frame.columns for c in names)), None)
    id_col = next((c for c in ("id", spec.submission_id, spec.id_column) if c in frame.columns), None)
    if id_col is None or source is None:
        raise KitError(f"{pred_path}: needs an id column and a column per label ({spec.submission_id!r} and "
                       f"{', '.join(map(repr, written))} as the submission writes them); has {list(frame.columns)}")
    outputs = column_outputs(spec, frame.rename(columns=dict(zip(source, written))), str(pred_path))
    order = _in_truth_order(frame, id_col, pred_path, truth_ids, truth_path)
    return SeveralLabelsColumn(spec).scores(np.asarray(truth, int), outputs[order])


def format_score(spec, result):
    """kit score's table of a score_file result."""
    if spec.several_labels:
        return format_columns_report(result)
    return format_number_report(result) if spec.shape == "number" else format_report(result, spec.labels)


def score_target_columns(spec, frame, pred_path, truth_path):
    """`kit score`: {column: keyword scores} for each [targets] column that the predictions
    file has and whose source column the labelled file has, matched by id."""
    truth = read_csv(truth_path)
    out = {}
    for column, target in spec.targets.items():
        if column not in frame.columns or target.source is None or target.source not in truth.columns:
            continue
        id_column = next(c for c in ("id", spec.submission_id, spec.id_column) if c in frame.columns)
        predicted = dict(zip((id_key(i) for i in clean_ids(frame, id_column, pred_path)), frame[column]))
        truth_ids = [id_key(i) for i in clean_ids(truth, spec.id_column, truth_path)]
        missing = [i for i in truth_ids if i not in predicted]
        if missing:
            raise KitError(f"{pred_path}: {len(missing)} id(s) of {truth_path} have no {column} (e.g. {missing[:3]})")
        out[column] = keyword_scores([split_keywords(predicted[i]) for i in truth_ids],
                                     [split_keywords(v) for v in truth[target.source]])
    return out
