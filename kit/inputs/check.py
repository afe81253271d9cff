"""`kit check`: validate a spec, its files and optionally a submission, before any upload."""
from kit.inputs import submit
from kit.inputs.data import extra_rows, load_rows, read_csv
from kit.inputs.tasks import keyword_task, target_rows


def check_all(spec, submission_path=None, split="test"):
    """Read every file the spec names the way train/predict will; returns lines to print."""
    task = f"{_what_is_learned(spec)}; metric {spec.metric}; submission {spec.shape}" if spec.has_labels else "no label"
    predicted = f"; predicted columns {', '.join(spec.targets)}" if spec.targets else ""
    lines = [f"spec {spec.path}: ok ({spec.name}; {task}{predicted})"]
    rows, frame = load_rows(spec, "train")
    encoding = frame.attrs["encoding"]
    counts = _label_counts(spec, rows.labels) if spec.has_labels else ""
    lines.append(f"train {spec.train}: {len(rows)} rows ({encoding}){counts}")
    extra = extra_rows(spec, rows)
    if extra is not None:
        lines.append(f"extra: {len(extra)} rows from {len(spec.extra)} [[extra]] file(s)"
                     f"{_label_counts(spec, extra.labels)}; they join every fit's training rows, never a held-out row")
    if rows.rationales is not None:
        lines.append(f"rationale {spec.rationale_column!r}: {sum(1 for r in rows.rationales if r)} of {len(rows)} "
                     "training rows have one (learned by the generative head after the label)")
    lines += _check_targets(spec)
    split_ids = {}
    for name in spec.splits:
        split_rows, split_frame = load_rows(spec, name)
        for column in spec.targets:         # the text each predicted column comes from
            target_rows(spec.for_target(column), name, split_frame)
        split_ids[name] = split_rows.ids
        split_encoding = split_frame.attrs["encoding"]
        lines.append(f"split {name} {spec.splits[name]}: {len(split_rows)} rows ({split_encoding})")
        if split_encoding != encoding:   # often a sign the files come from different exports
            lines.append(f"warning: train is {encoding} but split {name} is {split_encoding}; "
                         "check that both read correctly")
    if spec.sample is not None:
        if spec.sample_split not in split_ids:
            lines.append(f"sample {spec.sample}: not checked, sample_split {spec.sample_split!r} is not a split")
        else:
            submit.check_sample(spec, split_ids[spec.sample_split])
            lines.append(f"sample {spec.sample}: same columns as the spec, same ids and order as {spec.sample_split}")
    if submission_path:
        ids = split_ids.get(split) or load_rows(spec, split)[0].ids
        frame = read_csv(submission_path)   # ids are compared by id_key: '3.0' matches '3'
        submit.validate(spec, frame, ids, split, where=str(submission_path))
        lines.append(f"submission {submission_path}: valid for split {split} ({len(frame)} rows)")
    return lines


def _what_is_learned(spec):
    if spec.several_labels:
        return f"label columns {spec.labels}, each 0 or 1"
    if spec.shape != "number":
        return f"labels {spec.labels}"
    return "a number per row" + (f" on the scale [{spec.scale[0]:g}, {spec.scale[1]:g}]" if spec.scale else "")


def _label_counts(spec, labels):
    if spec.several_labels:
        positives = {column: sum(flags[j] for flags in labels) for j, column in enumerate(spec.labels)}
        return f", rows with a 1 per column {positives}"
    if spec.shape != "number":
        return f", labels { {label: labels.count(i) for i, label in enumerate(spec.labels)} }"
    return (f", {spec.label_column} from {min(labels):g} to {max(labels):g} (mean {sum(labels) / len(labels):.3g}, "
            f"{len(set(labels))} distinct values)")


def _check_targets(spec):
    """Each predicted column: where its answers come from and how they are written."""
    lines = []
    for column, target in spec.targets.items():
        target_spec = spec.for_target(column)
        rows, frame = target_rows(target_spec, "train")
        if rows.labels is None:
            lines.append(f"target {column}: the {target.extractor} extractor (no answers to learn from)")
            continue
        counts = [len(k) for k in rows.labels if k]
        task = keyword_task(target_spec, frame)
        lines.append(f"target {column}: answers in column {target.source!r} of {target_spec.train}: {len(counts)} of "
                     f"{len(rows)} rows have keywords, {sum(counts) / max(1, len(counts)):.1f} per row, "
                     f"written with separator {task.separator!r}")
    return lines
