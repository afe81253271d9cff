"""One declarative TOML file per competition: everything competition-specific lives there."""
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KitError

METRICS = ("f1", "macro_f1", "accuracy", "auc")
DEFAULT_SPEC = "data/competition.toml"


@dataclass
class Spec:
    path: Path
    name: str
    train: Path
    splits: dict                 # split name -> CSV path
    id_column: str
    label_column: str
    input_template: str          # "title:{title},abstract:{abstract}"
    instruction: str
    labels: list                 # label values in their CSV form, e.g. ["0", "1"]
    label_words: dict            # label -> what the model answers (default: the label itself)
    metric: str
    max_length: int
    submission_columns: list
    submission_label: str        # which submission column holds the prediction
    submission_id: str
    fill: dict = field(default_factory=dict)   # other submission column -> template over the split's columns
    sample: Path = None
    sample_split: str = "test"                 # the split whose ids the sample lists
    answers: dict = field(default_factory=dict)  # split -> labelled CSV, for `kit score --split`
    raw: dict = field(default_factory=dict)    # the TOML as read, saved with every run

    @property
    def positive(self):
        """Binary tasks: the label whose probability is thresholded (the second label)."""
        return self.labels[1] if len(self.labels) == 2 else None

    def template_columns(self, template=None):
        return template_fields(template or self.input_template)

    def split_path(self, split):
        if split == "train":
            return self.train
        if split not in self.splits:
            raise KitError(f"{self.path}: unknown split {split!r}; [splits] has {sorted(self.splits) or 'none'}")
        return self.splits[split]


def template_fields(template):
    """The column names a template like "title:{title}" refers to."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _need(table, key, where, kind=str):
    if key not in table:
        raise KitError(f"{where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise KitError(f"{where}: {key!r} must be a non-empty {kind.__name__}, got {value!r}")
    return value


def _check_template(template, where):
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template)]
    except ValueError as error:
        raise KitError(f"{where}: bad template {template!r}: {error}") from None
    if any(name == "" or (name and not name.isidentifier()) for name in fields):
        raise KitError(f"{where}: template {template!r} needs named columns like {{title}}")


def load_spec(path=DEFAULT_SPEC):
    path = Path(path)
    if not path.is_file():
        raise KitError(f"spec file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise KitError(f"{path}: not valid TOML: {error}") from None
    base = path.parent
    columns = raw.get("columns", {})
    task = raw.get("task", {})
    submission = raw.get("submission", {})
    labels = [str(label) for label in _need(task, "labels", f"{path} [task]", list)]
    if len(labels) < 2:
        raise KitError(f"{path} [task] labels: need at least two labels, got {labels}")
    if len(set(labels)) != len(labels):
        raise KitError(f"{path} [task] labels: duplicates in {labels}")
    words = {str(k): str(v) for k, v in task.get("label_words", {}).items()}
    unknown = set(words) - set(labels)
    if unknown:
        raise KitError(f"{path} [task] label_words: {sorted(unknown)} not in labels {labels}")
    words = {label: words.get(label, label) for label in labels}
    metric = task.get("metric", "f1" if len(labels) == 2 else "macro_f1")
    if metric not in METRICS:
        raise KitError(f"{path} [task] metric: {metric!r} is not one of {', '.join(METRICS)}")
    if metric in ("f1", "auc") and len(labels) != 2:
        raise KitError(f"{path} [task] metric: {metric!r} needs two labels; use macro_f1 for {len(labels)}")
    id_column = _need(columns, "id", f"{path} [columns]")
    label_column = _need(columns, "label", f"{path} [columns]")
    template = _need(columns, "input", f"{path} [columns]")
    _check_template(template, f"{path} [columns] input")
    sub_columns = submission.get("columns", [id_column, label_column])
    if not isinstance(sub_columns, list) or not sub_columns:
        raise KitError(f"{path} [submission] columns: must be a non-empty list of column names")
    sub_id = submission.get("id_column", id_column)
    sub_label = submission.get("label_column", label_column)
    fill = {str(k): str(v) for k, v in submission.get("fill", {}).items()}
    for column, value in fill.items():
        _check_template(value, f"{path} [submission.fill] {column}")
    for column in sub_columns:
        if column not in (sub_id, sub_label) and column not in fill:
            raise KitError(f"{path} [submission] column {column!r}: nothing fills it; "
                           f"add it to [submission.fill] (a constant or a template like \"{{title}}\")")
    for column, role in ((sub_id, "id_column"), (sub_label, "label_column")):
        if column not in sub_columns:
            raise KitError(f"{path} [submission] {role} {column!r} is not in columns {sub_columns}")
    splits = raw.get("splits", {})
    if not isinstance(splits, dict):
        raise KitError(f"{path} [splits]: must be a table of name = \"file.csv\"")
    return Spec(
        path=path, name=str(raw.get("name", path.stem)),
        train=base / _need(raw, "train", str(path)),
        splits={str(name): base / str(file) for name, file in splits.items()},
        id_column=id_column, label_column=label_column, input_template=template,
        instruction=str(task.get("instruction", "")).strip()
        or f"Classify the text. Answer with one of: {', '.join(words.values())}.",
        labels=labels, label_words=words, metric=metric,
        max_length=int(task.get("max_length", 256)),
        submission_columns=[str(c) for c in sub_columns], submission_label=sub_label,
        submission_id=sub_id, fill=fill,
        sample=base / submission["sample"] if submission.get("sample") else None,
        sample_split=str(submission.get("sample_split", "test")),
        answers={str(name): base / str(file) for name, file in raw.get("answers", {}).items()},
        raw=raw,
    )
