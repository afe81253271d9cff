"""`kit check`: validate a spec, its files and optionally a submission, before any upload."""
from . import submit
from .data import load_rows, read_csv


def check_all(spec, submission_path=None, split="test"):
    """Read every file the spec names the way train/predict will; returns lines to print."""
    lines = [f"spec {spec.path}: ok ({spec.name}; labels {spec.labels}; metric {spec.metric})"]
    rows, _ = load_rows(spec, "train")
    counts = {label: rows.labels.count(i) for i, label in enumerate(spec.labels)}
    lines.append(f"train {spec.train}: {len(rows)} rows, labels {counts}")
    split_ids = {}
    for name in spec.splits:
        split_rows, _ = load_rows(spec, name)
        split_ids[name] = split_rows.ids
        lines.append(f"split {name} {spec.splits[name]}: {len(split_rows)} rows")
    if spec.sample is not None:
        if spec.sample_split not in split_ids:
            lines.append(f"sample {spec.sample}: not checked, sample_split {spec.sample_split!r} is not a split")
        else:
            submit.check_sample(spec, split_ids[spec.sample_split])
            lines.append(f"sample {spec.sample}: same columns as the spec, same ids as {spec.sample_split}")
    if submission_path:
        ids = split_ids.get(split) or load_rows(spec, split)[0].ids
        frame = read_csv(submission_path)
        frame[spec.submission_id] = frame[spec.submission_id].str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)
        submit.validate(spec, frame, ids, split, where=str(submission_path))
        lines.append(f"submission {submission_path}: valid for split {split} ({len(frame)} rows)")
    return lines
