"""Building, validating and writing submission files: exactly the spec's columns, one row per
split id in the split's order, labels in their CSV form, nothing half-written."""
import pandas as pd

from .data import atomic_write, clean_ids, read_csv, require_columns
from .errors import KitError


def build(spec, frame, ids, labels, where="the split CSV"):
    """frame: the split's CSV (for fill templates); ids and predicted label strings per row."""
    columns = {}
    for column in spec.submission_columns:
        if column == spec.submission_id:
            columns[column] = ids
        elif column == spec.submission_label:
            columns[column] = labels
        else:
            template = spec.fill[column]
            fields = spec.template_columns(template)
            require_columns(frame, fields, where, f"used by [submission.fill] {column}")
            columns[column] = [template.format_map(r) for r in frame[fields].to_dict("records")] \
                if fields else [template] * len(ids)
    return pd.DataFrame(columns, columns=spec.submission_columns)


def validate(spec, submission, split_ids, split, where="submission"):
    """Raise KitError unless the submission is uploadable for this split (and its sample)."""
    if list(submission.columns) != spec.submission_columns:
        raise KitError(f"{where}: columns {list(submission.columns)} != spec {spec.submission_columns}")
    if len(submission) != len(split_ids):
        raise KitError(f"{where}: {len(submission)} rows, the split has {len(split_ids)}")
    ids = submission[spec.submission_id].astype(str).tolist()
    if ids != list(split_ids):
        missing = sorted(set(split_ids) - set(ids))[:3]
        extra = sorted(set(ids) - set(split_ids))[:3]
        raise KitError(f"{where}: ids differ from the split's" + (f"; missing {missing}" if missing else "")
                       + (f"; unknown {extra}" if extra else "") + ("; same ids, other order" if not (missing or extra) else ""))
    if submission.isna().any().any():
        column = submission.columns[submission.isna().any()].tolist()[0]
        raise KitError(f"{where}: empty values in column {column!r}")
    bad = ~submission[spec.submission_label].astype(str).isin(spec.labels)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise KitError(f"{where}: row {row + 2}: label {submission[spec.submission_label].iloc[row]!r} "
                       f"is not one of {spec.labels}")
    if spec.sample is not None and split == spec.sample_split:
        check_sample(spec, split_ids)


def check_sample(spec, split_ids):
    sample = read_csv(spec.sample)
    if list(sample.columns) != spec.submission_columns:
        raise KitError(f"{spec.sample}: columns {list(sample.columns)} differ from the spec's "
                       f"[submission] columns {spec.submission_columns}")
    require_columns(sample, [spec.submission_id], spec.sample, "the submission id column")
    sample_ids = clean_ids(sample, spec.submission_id, spec.sample)
    if set(sample_ids) != set(split_ids):
        missing = sorted(set(sample_ids) - set(split_ids))[:3]
        extra = sorted(set(split_ids) - set(sample_ids))[:3]
        raise KitError(f"{spec.sample}: ids differ from the split's"
                       + (f"; the split lacks {missing}" if missing else "")
                       + (f"; the sample lacks {extra}" if extra else ""))


def write(submission, path):
    atomic_write(path, lambda tmp: submission.to_csv(tmp, index=False, encoding="utf-8"))
