"""Building, validating and writing submission files: exactly the spec's columns, one row per
split id in the split's order, labels in their CSV form, nothing half-written."""
import json
import os
from pathlib import Path

import pandas as pd

from kit.core.errors import KitError
from kit.core.files import atomic_write, write_text
from kit.core.logs import log
from kit.inputs import shapes
from kit.inputs.data import clean_ids, id_key, read_csv, require_columns
from kit.inputs.spec import render_template


def build(spec, frame, ids, predicted, where="the split CSV"):
    """frame: the split's CSV (for fill templates); ids per row; predicted: {submission column:
    its values per row}, for the label's columns (shapes.values) and each [targets] column."""
    columns = {}
    for column in spec.submission_columns:
        if column == spec.submission_id:
            columns[column] = sample_forms(spec, ids)
        elif column in spec.targets or column in shapes.label_columns(spec):
            if column not in predicted:
                source = f"[targets.{column}]" if column in spec.targets else "the label"
                raise KitError(f"submission column {column!r}: no predictions for it ({source})")
            columns[column] = predicted[column]
        else:
            template = spec.fill[column]
            fields = spec.template_columns(template)
            require_columns(frame, fields, where, f"used by [submission.fill] {column}")
            columns[column] = [render_template(template, r) for r in frame[fields].to_dict("records")] \
                if fields else [template] * len(ids)
    return pd.DataFrame(columns, columns=spec.submission_columns)


def sample_forms(spec, ids):
    """ids written as the sample submission writes them ('1.0' or '1') when the sample lists
    exactly this split's ids; otherwise as the split writes them."""
    if spec.sample is None:
        return list(ids)
    sample = read_csv(spec.sample)
    require_columns(sample, [spec.submission_id], spec.sample, "the submission id column")
    forms = {id_key(i): i for i in clean_ids(sample, spec.submission_id, spec.sample)}
    keys = [id_key(i) for i in ids]
    return [forms[k] for k in keys] if set(keys) == set(forms) else list(ids)


def _compare_ids(ids, expected, where, lacks=("missing", "unknown")):
    """Raise unless ids equal the split's ids by id_key, in the same order."""
    keys, wanted = [id_key(i) for i in ids], [id_key(i) for i in expected]
    if keys == wanted:
        return
    missing = [i for i, k in zip(expected, wanted) if k not in set(keys)][:3]
    extra = [i for i, k in zip(ids, keys) if k not in set(wanted)][:3]
    if missing or extra:
        raise KitError(f"{where}: ids differ from the split's" + (f"; {lacks[0]} {missing}" if missing else "")
                       + (f"; {lacks[1]} {extra}" if extra else ""))
    row = next(n for n, (a, b) in enumerate(zip(keys, wanted)) if a != b)
    raise KitError(f"{where}: ids differ from the split's: same ids, other order "
                   f"(row {row + 2} is {ids[row]!r}, the split's row {row + 2} is {expected[row]!r})")


def validate(spec, submission, split_ids, split, where="submission", promised=None):
    """Raise KitError unless the submission is uploadable for this split (and its sample).
    promised: {[targets] column: per row, whether a value is owed (rows whose text is not empty)}."""
    if list(submission.columns) != spec.submission_columns:
        raise KitError(f"{where}: columns {list(submission.columns)} != spec {spec.submission_columns}")
    if len(submission) != len(split_ids):
        raise KitError(f"{where}: {len(submission)} rows, the split has {len(split_ids)}")
    _compare_ids(submission[spec.submission_id].astype(str).tolist(), list(split_ids), where)
    if submission.isna().any().any():
        column = submission.columns[submission.isna().any()].tolist()[0]
        raise KitError(f"{where}: empty values in column {column!r}")
    if spec.has_labels:
        shapes.check(spec, submission, where)
    for column in spec.targets:
        _check_predicted(submission[column].astype(str).tolist(), (promised or {}).get(column), column, where)
    if spec.sample is not None and split == spec.sample_split:
        check_sample(spec, split_ids)


def _check_predicted(values, promised, column, where):
    """A predicted text column: one line per value (a newline would break row-by-row readers
    even when quoted), and a value wherever the row's text promised one."""
    for row, value in enumerate(values):
        if "\n" in value or "\r" in value:
            raise KitError(f"{where}: row {row + 2}: {column} holds a line break: {value[:60]!r}")
        if promised is not None and promised[row] and not value.strip():
            raise KitError(f"{where}: row {row + 2}: {column} is empty although the row has text to take it from")


def check_sample(spec, split_ids):
    sample = read_csv(spec.sample)
    if list(sample.columns) != spec.submission_columns:
        raise KitError(f"{spec.sample}: columns {list(sample.columns)} differ from the spec's "
                       f"[submission] columns {spec.submission_columns}")
    require_columns(sample, [spec.submission_id], spec.sample, "the submission id column")
    sample_ids = clean_ids(sample, spec.submission_id, spec.sample)
    _compare_ids(sample_ids, list(split_ids), spec.sample, lacks=("the sample lacks", "the split lacks"))


def write(submission, path):
    atomic_write(path, lambda tmp: submission.to_csv(tmp, index=False, encoding="utf-8"))


def spec_inputs(spec):
    """(what, path) for every file a command of this spec reads: the spec file, the train CSV,
    each split, each split's answers, the sample submission and each [targets] column's train CSV."""
    found = [("the spec file", spec.path), ("the train CSV", spec.train),
             *((f"split {name!r}", path) for name, path in spec.splits.items()),
             *((f"the answers of {name!r}", path) for name, path in spec.answers.items()),
             ("the sample submission", spec.sample),
             *((f"[targets.{column}] train CSV", target.train) for column, target in spec.targets.items())]
    return [(what, Path(path)) for what, path in found if path is not None]


def _same_file(a, b):
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)     # a hard link
    except OSError:
        return False


def check_destination(path, spec=None, runs=None):
    """Fail before any prediction work when the submission could not be written there, would
    overwrite an input of the command (a file the spec reads), or lies in a run folder under
    runs (the kit's files there, the run's cv_scores.json beside it, would be replaced)."""
    text, path = str(path), Path(path)
    if text.endswith(os.sep) or path.is_dir():
        raise KitError(f"--out {text}: is a directory; give a file name such as {path / 'submit.csv'}")
    for what, source in spec_inputs(spec) if spec is not None else []:
        if _same_file(path, source):
            raise KitError(f"--out {text}: is {what} ({source}), an input of this command; give another file name")
    if runs is not None:
        runs, resolved = Path(runs).resolve(), path.resolve()
        if runs in resolved.parents and resolved.parent != runs:
            folder = runs / resolved.relative_to(runs).parts[0]
            raise KitError(f"--out {text}: lies in the run folder {folder}; write the submission outside run folders")
    parent = path.parent
    while not parent.exists():           # the nearest folder that exists must allow creating the rest
        parent = parent.parent
    if not parent.is_dir():
        raise KitError(f"--out {text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path.parent, os.W_OK)):
        raise KitError(f"--out {text}: cannot write in {parent} (permission denied)")


def _kit_scores(path):
    """Whether a file is a cv_scores.json the kit wrote (a run's or a blend's: it names its run key)."""
    try:
        return path.is_file() and "run_key" in json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def write_scores_beside(out, cv_scores):
    """The CV scores of the run that made the submission go beside it; with none, an older run's
    scores must not stay there looking as if they belonged to this submission. A cv_scores.json
    the kit did not write (no run_key in it) is left alone."""
    beside = Path(out).parent / "cv_scores.json"
    if beside.exists() and not _kit_scores(beside):
        log(f"warning: {beside} was not written by the kit; left as it is (the run's CV scores are not copied beside "
            "the submission)")
        return
    if cv_scores is not None:
        write_text(beside, Path(cv_scores).read_text())
    else:
        beside.unlink(missing_ok=True)
