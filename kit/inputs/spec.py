"""One declarative TOML file per competition: everything competition-specific lives there.

load_spec is strict: an unknown key, a wrong type or an unsafe name is a one-line KitError naming
the file and the key, so a typo never silently falls back to a default."""
import difflib
import functools
import hashlib
import json
import math
import os
import re
import string
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kit.core.errors import KitError
from kit.evaluation.metrics import METRIC_NAMES, MULTI_LABEL_METRICS, NUMBER_METRICS, metric_info
from kit.inputs.shapes import MULTI_SHAPES, default_shape, shape_error

DATA_DIR_ENV = "KIT_DATA_DIR"
DEFAULT_SPEC = "data/competition.toml"

TOP_KEYS = ("name", "train", "splits", "answers", "columns", "task", "submission", "targets", "extra")
EXTRA_KEYS = ("file", "label", "input", "max_rows")
COLUMN_KEYS = ("id", "label", "input", "rationale")
TASK_KEYS = ("instruction", "labels", "label_words", "label_descriptions", "metric", "max_length", "few_shot", "scale")
LABEL_ONLY_KEYS = ("labels", "label_words", "label_descriptions", "few_shot")   # what a number task has none of
FEW_SHOT_MAX = 16
SUBMISSION_KEYS = ("columns", "id_column", "label_column", "sample", "sample_split", "fill", "shape", "class_columns",
                   "separator")
TARGET_KEYS = ("kind", "source", "extractor", "train", "input", "instruction", "separator", "count", "max_count",
               "metric", "max_length")
TARGET_KINDS = ("keywords",)             # a later kind (a summary: "text") fits the same table
EXTRACTORS = ("minilm", "tfidf")
TARGET_METRICS = ("exact_f1", "partial_f1")
MAX_LENGTH_RANGE = (16, 131072)
# The spec name names folders under runs/ and split names name files in a run folder: no
# separators, no leading dot, nothing that could climb out of the folder.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass
class Target:
    """A submission column the kit predicts (beside the label): today a keyword list."""
    column: str
    kind: str = "keywords"
    source: str = None          # the train column holding its answers; None: the extractor alone
    extractor: str = "minilm"   # the unsupervised road; also where the LLM road's empty answers fall back
    train: str = None           # a train CSV of its own (default: the spec's train file)
    input_template: str = ""    # the text the keywords come from (default: [columns] input)
    instruction: str = "Write the keywords of this text."
    separator: str = None       # how the submission joins them; None: as the source column does, else "; "
    count: int = None           # how many an extractor writes; None: the source's median, else 5
    max_count: int = 10         # the most any road writes
    metric: str = "exact_f1"    # the competition's: exact_f1 or partial_f1
    max_length: int = 256


@dataclass
class Spec:
    path: Path
    name: str
    train: Path
    splits: dict                 # split name -> CSV path
    id_column: str
    label_column: str            # None: the spec predicts only [targets] columns (or several label columns)
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
    targets: dict = field(default_factory=dict)  # predicted submission column -> Target
    target: dict = None        # set on a target's own spec (Spec.for_target): what keys its runs
    few_shot: int = 0          # k labelled examples in the prompt, drawn from each fit's training rows
    shape: str = "label"       # what the submission holds (kit/inputs/shapes.py): label, probability, classes, top_k
    class_columns: dict = field(default_factory=dict)   # shape classes: label -> its submission column
    separator: str = " "       # shape top_k: what joins a row's labels
    scale: list = None         # shape number: [low, high] the numbers lie in (qwk: its integers)
    label_columns: list = field(default_factory=list)   # several label columns, each 0/1 per row (then labels)
    extra: list = field(default_factory=list)  # [[extra]]: more labelled files, joined to every fit's training rows
    rationale_column: str = None   # [columns] rationale: a reasoning text per training row (generate head)

    @property
    def several_labels(self):
        """[columns] label names several 0/1 columns (toxic-comment style): labels are those columns."""
        return bool(self.label_columns)

    @property
    def answer_columns(self):
        """The training file's columns that hold what is learned (none of them may be an input)."""
        return self.label_columns or ([self.label_column] if self.label_column else [])

    @property
    def has_labels(self):
        """False for a spec whose only task is a predicted column (keywords, no label)."""
        return self.label_column is not None or self.several_labels

    def for_target(self, column):
        """The spec a predicted column is learned and scored under: its answers (source column,
        own train file), its input text and instruction. Its own name keeps its runs apart from
        the label's runs (runs/<spec>.<column>-...)."""
        if column not in self.targets:
            raise KitError(f"{self.path}: no [targets.{column}]; targets: {sorted(self.targets) or 'none'}")
        target = self.targets[column]
        return replace(self, name=f"{self.name}.{re.sub(r'[^A-Za-z0-9_-]', '_', column)}"[:64],
                       train=target.train or self.train, label_column=target.source, labels=[], label_words={},
                       instruction=target.instruction, metric=target.metric, input_template=target.input_template,
                       max_length=target.max_length, few_shot=0, extra=[], rationale_column=None,
                       # the label's submission shape is not the column's: a text per row
                       shape="label", class_columns={}, separator=" ", scale=None, label_columns=[],
                       target={k: v for k, v in asdict(target).items() if k != "train"})   # the data key covers it

    @property
    def positive(self):
        """Binary tasks: the label whose probability is thresholded (the second label)."""
        return self.labels[1] if len(self.labels) == 2 else None

    def template_columns(self, template=None):
        # `is None`, not `or`: an empty fill template "" is a constant, not the input template
        return template_fields(self.input_template if template is None else template)

    def split_path(self, split):
        if split == "train":
            return self.train
        if split not in self.splits:
            raise KitError(f"{self.path}: unknown split {split!r}; [splits] has {sorted(self.splits) or 'none'}")
        return self.splits[split]

    def describe(self):
        """What changes what a model learns or how it reads inputs, as plain JSON-able data.

        Splits, answers and submission settings are left out on purpose: adding a testB split
        must not invalidate a trained model. Computed from the fields (not cached at load time)
        so that dataclasses.replace(spec, instruction=...) in a sweep gets its own fingerprint."""
        return {
            "instruction": str(self.instruction),
            "labels": [str(label) for label in self.labels],
            "label_words": {str(k): str(v) for k, v in self.label_words.items()},
            "metric": str(self.metric),
            "max_length": int(self.max_length),
            "input_template": str(self.input_template),
            "id_column": str(self.id_column),
            "label_column": str(self.label_column),
            **({"target": self.target} if self.target else {}),
            **({"few_shot": int(self.few_shot)} if self.few_shot else {}),   # absent: earlier keys stand
            **({"scale": list(self.scale)} if self.scale else {}),
            **({"label_columns": list(self.label_columns)} if self.label_columns else {}),
            **({"extra": [e.describe() for e in self.extra]} if self.extra else {}),
            **({"rationale_column": self.rationale_column} if self.rationale_column else {}),
        }

    def fingerprint(self):
        """16 hex chars of sha256 over describe()."""
        text = json.dumps(self.describe(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# -- templates ----------------------------------------------------------------------------------
# A template is "title:{title},abstract:{abstract}": {name} is a column name taken literally
# (spaces, hyphens and dots allowed), {{ and }} are literal braces. We parse with
# string.Formatter().parse but never call format/format_map: those would read {a.b} as an
# attribute, {a[0]} as an index and {a:d} as a format spec.

@functools.lru_cache(maxsize=256)
def _parse(template, where=""):
    """The template as a tuple of (literal text, column name or None); KitError if malformed."""
    at = f"{where}: " if where else ""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise KitError(f"{at}template {template!r} is malformed ({error}); "
                       "write {{ and }} for literal braces") from None
    pieces = []
    for literal, name, spec, conversion in parts:
        if name is not None and not name.strip():
            raise KitError(f"{at}template {template!r} has an empty field {{}}; name a column like {{text}}")
        if conversion:
            raise KitError(f"{at}template {template!r}: {{{name}!{conversion}}} has a conversion; "
                           f"write {{{name}}}")
        if spec:
            raise KitError(f"{at}template {template!r}: {{{name}:{spec}}} has a format spec; "
                           f"write {{{name}}} (a column name may not contain ':' or '!')")
        pieces.append((literal, name))
    return tuple(pieces)


def template_fields(template, where=""):
    """The column names a template refers to, in order, each once; KitError if malformed.

    where (e.g. "competition.toml [columns] input") starts the error message."""
    names = [name for _, name in _parse(template, where) if name is not None]
    return list(dict.fromkeys(names))


def render_template(template, record):
    """The template with each {name} replaced by str(record[name]); values are not re-expanded."""
    out = []
    for literal, name in _parse(template):
        out.append(literal)
        if name is not None:
            if name not in record:
                raise KitError(f"template {template!r}: no column {name!r} in the row")
            out.append(str(record[name]))
    return "".join(out)


# -- checks -------------------------------------------------------------------------------------
def _check_keys(table, known, where, noun="key"):
    """Unknown keys are errors, with the closest known one as a hint (typos never fall back)."""
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"known {noun}s: {', '.join(known) or 'none'}")
            raise KitError(f"{where}: unknown {noun} {key!r}; {hint}")


def _table(parent, key, where):
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise KitError(f"{where} {key}: must be a table, got {value!r}")
    return value


def _need(table, key, where, kind=str):
    if key not in table:
        raise KitError(f"{where}: missing key {key!r}")
    return _typed(table, key, where, kind)


def _typed(table, key, where, kind=str, default=None):
    """table[key] if present (a non-empty string, or a `kind`), else default."""
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value.strip()):
        noun = {str: "string", list: "list", int: "integer"}.get(kind, kind.__name__)
        raise KitError(f"{where} {key}: must be a non-empty {noun}, got {value!r}")
    return value


def _file_table(table, where, what):
    """[splits] / [answers]: name -> file name string."""
    for name, file in table.items():
        if not isinstance(file, str) or not file.strip():
            raise KitError(f"{where} {name}: must be a file name string like \"{what}.csv\", got {file!r}")
    return table


def _labels(task, where):
    raw = _need(task, "labels", where, list)
    labels = []
    for label in raw:
        # TOML 1.0 is a float, and would come back as the label "1.0" that no CSV row matches
        if isinstance(label, float):
            raise KitError(f"{where} labels: {label!r} is a float; write labels as they appear in the CSV, "
                           f"e.g. \"{label:g}\" or {label:g}")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
            raise KitError(f"{where} labels: {label!r} must be a non-empty string or an integer")
        labels.append(str(label))
    if len(labels) < 2:
        raise KitError(f"{where} labels: need at least two labels, got {labels}")
    if len(set(labels)) != len(labels):
        raise KitError(f"{where} labels: duplicates in {labels}")
    return labels


def _per_label(task, key, labels, where):
    """A [task] table of label -> non-empty string (label_words, label_descriptions)."""
    table = _table(task, key, where)
    unknown = [label for label in table if label not in labels]
    if unknown:
        raise KitError(f"{where} {key}: {unknown} not in labels {labels}")
    for label, text in table.items():
        if not isinstance(text, str) or not text.strip():
            raise KitError(f"{where} {key} {label}: must be a non-empty string, got {text!r}")
    return table


def _label_words(task, labels, where):
    words = _per_label(task, "label_words", labels, where)
    words = {label: words.get(label, label) for label in labels}
    # two labels answered by the same word could never be told apart when parsing the answer
    seen = {}
    for label, word in words.items():
        if word in seen:
            raise KitError(f"{where} label_words: labels {seen[word]!r} and {label!r} both answer {word!r}")
        seen[word] = label
    return words


def _descriptions(task, labels, words, where):
    """[task] label_descriptions (label -> what it means), appended to the instruction as one
    line per label word: the seeds' prompt lever for labels whose words say little ("1"/"0")."""
    descriptions = _per_label(task, "label_descriptions", labels, where)
    return "".join(f"\n{words[label]}: {descriptions[label].strip()}" for label in labels if label in descriptions)


def _metric(task, labels, where):
    metric = task.get("metric", "f1" if len(labels) == 2 else "macro_f1")
    info = metric_info(metric) if isinstance(metric, str) else None
    if info is None:
        raise KitError(f"{where} metric: {metric!r} is not one of {', '.join(METRIC_NAMES)} (K: 1-99)")
    mismatch = info.check_labels(len(labels), where)
    if mismatch:
        raise KitError(mismatch)
    return metric


def _shape(submission, metric, labels, label_column, where, several=False):
    """(shape, class columns, separator) of [submission]: what the label's columns hold."""
    if label_column is None and not several:
        extra = [key for key in ("shape", "class_columns", "separator") if key in submission]
        if extra:
            raise KitError(f"{where} {extra[0]}: the spec has no [columns] label to write")
        return "label", {}, " "
    shape = submission.get("shape", default_shape(metric, labels, several))
    error = (shape_error(shape, metric, labels, several) if isinstance(shape, str)
             else f"must be a string, got {shape!r}")
    if error:
        raise KitError(f"{where} shape: {error}")
    per_label = ("classes", *MULTI_SHAPES)        # the shapes that write a column per label
    if "class_columns" in submission and shape not in per_label:
        raise KitError(f"{where} class_columns: only shapes {', '.join(map(repr, per_label))} use it (the shape is "
                       f"{shape!r})")
    if "separator" in submission and shape != "top_k":
        raise KitError(f"{where} separator: only shape = 'top_k' uses it (the shape is {shape!r})")
    classes = _per_label(submission, "class_columns", labels, where)
    missing = [label for label in labels if label not in classes]
    if classes and missing and shape == "classes":     # several label columns keep their names unless renamed
        raise KitError(f"{where} class_columns: no column for label(s) {missing}")
    separator = submission.get("separator", " ")
    if not isinstance(separator, str) or not separator or "\n" in separator or "\r" in separator:
        raise KitError(f"{where} separator: must be a non-empty string on one line, got {separator!r}")
    clash = [label for label in labels if separator in label]
    if shape == "top_k" and clash:
        raise KitError(f"{where} separator: {separator!r} occurs in label {clash[0]!r}; a list could not be read back")
    return shape, ({label: classes.get(label, label) for label in labels} if shape in per_label else {}), separator


def _few_shot(task, where):
    """[task] few_shot = k: k labelled training rows shown in the prompt (the seeds' lever)."""
    value = task.get("few_shot", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= FEW_SHOT_MAX:
        raise KitError(f"{where} few_shot: must be an integer between 0 and {FEW_SHOT_MAX}, got {value!r}")
    return value


def _max_length(task, where):
    value = task.get("max_length", 256)
    low, high = MAX_LENGTH_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise KitError(f"{where} max_length: must be an integer between {low} and {high}, got {value!r}")
    return value


def _input_template(columns, where):
    template = _need(columns, "input", where)
    if not template_fields(template, f"{where} input"):
        # "{{text}}" is the literal text {text}: suggest the single-brace form
        doubled = re.search(r"\{\{([^{}]+)\}\}", template)
        fix = f"write {{{doubled.group(1)}}}" if doubled else "name a column like {text}"
        raise KitError(f"{where} input: template {template!r} names no column; {fix}")
    return template


def _safe_name(name, message):
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise KitError(message)
    return name


def _submission(submission, id_column, label_column, splits, base, targets, classes, where, several=False):
    """(columns, id column, label column, fill, sample path, sample split) of [submission]. Every
    column is the id, the label (or with shape "classes" one per label), a [submission.fill]
    template or a predicted [targets] column."""
    outputs = list(classes.values()) or [label_column]
    columns = submission.get("columns", [id_column, *outputs] if label_column or several else [id_column, *targets])
    if not isinstance(columns, list) or not columns:
        raise KitError(f"{where} columns: must be a non-empty list of column names, got {columns!r}")
    for column in columns:
        if not isinstance(column, str) or not column.strip():
            raise KitError(f"{where} columns: {column!r} must be a non-empty string")
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise KitError(f"{where} columns: duplicates {duplicates}")
    sub_id = _typed(submission, "id_column", where, default=id_column)
    sub_label = _typed(submission, "label_column", where, default=None if classes else label_column)
    if sub_label is not None and classes:
        raise KitError(f"{where} label_column: this shape writes a column per label (class_columns), not one")
    if sub_label is not None and label_column is None:
        raise KitError(f"{where} label_column: the spec has no [columns] label to predict it from")
    for label, column in classes.items():
        if column not in columns:
            raise KitError(f"{where} class_columns: the column of label {label!r}, {column!r}, is not in columns "
                           f"{columns}" + ("" if "class_columns" in submission else
                                           "; name each label's column in class_columns = {label = \"column\"}"))
    for column, role in ((sub_id, "id_column"), (sub_label, "label_column")):
        if column is not None and column not in columns:
            raise KitError(f"{where} {role} {column!r} is not in columns {columns}")
    if sub_id == sub_label:
        raise KitError(f"{where}: id_column and label_column are both {sub_id!r}")
    taken = (sub_id, sub_label, *classes.values())
    if len(set(taken)) < len(taken):
        raise KitError(f"{where} class_columns: a column is named twice, or is the id column")
    for column in targets:
        if column not in columns or column in taken:
            raise KitError(f"{where}: [targets.{column}] must name one of the other submission columns "
                           f"{[c for c in columns if c not in taken]}")
    fill = _table(submission, "fill", where)
    fill_where = f"{where.removesuffix(']')}.fill]"
    fillable = [c for c in columns if c not in taken]
    both = [c for c in fill if c in targets]
    if both:
        raise KitError(f"{fill_where} {both[0]}: the column is predicted by [targets.{both[0]}]; fill it or predict it, "
                       "not both")
    _check_keys(fill, fillable, fill_where, noun="column")
    for column, template in fill.items():
        if not isinstance(template, str):
            raise KitError(f"{fill_where} {column}: must be a string (a constant or a template like "
                           f"\"{{title}}\"), got {template!r}")
        template_fields(template, f"{fill_where} {column}")   # constants are fine here
    for column in columns:
        if column not in taken and column not in fill and column not in targets:
            raise KitError(f"{where} column {column!r}: nothing fills it; add it to [submission.fill] (a constant "
                           f"or a template like \"{{title}}\") or predict it with [targets.{column}]")
    sample = submission.get("sample", "")
    if not isinstance(sample, str):
        raise KitError(f"{where} sample: must be a file name string, got {sample!r}")
    sample_split = _typed(submission, "sample_split", where, default="test")
    if sample and sample_split not in splits:
        raise KitError(f"{where} sample_split: {sample_split!r} is not a split; [splits] has "
                       f"{sorted(splits) or 'none'} (set sample_split to the split the sample lists)")
    return columns, sub_id, sub_label, dict(fill), base / sample if sample else None, sample_split


def _count(table, key, where, default):
    value = table.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100):
        raise KitError(f"{where} {key}: must be an integer between 1 and 100, got {value!r}")
    return value


def _target(column, table, base, input_template, max_length, where):
    """One [targets.<column>] table. Predicting a column needs something to predict it from:
    a train column with its answers (source) or an unsupervised extractor, said explicitly."""
    if not isinstance(table, dict):
        raise KitError(f"{where}: must be a table like [targets.{column}] with source = \"{column}\"")
    _check_keys(table, TARGET_KEYS, where)
    kind = table.get("kind", "keywords")
    if kind not in TARGET_KINDS:
        raise KitError(f"{where} kind: {kind!r} is not one of {', '.join(TARGET_KINDS)}")
    source = _typed(table, "source", where)
    extractor = _typed(table, "extractor", where)
    if source is None and extractor is None:
        raise KitError(f"{where}: nothing to predict {column!r} from; give source = \"<the train column with its "
                       f"answers>\" or extractor = \"minilm\" / \"tfidf\" (unsupervised)")
    if extractor is not None and extractor not in EXTRACTORS:
        raise KitError(f"{where} extractor: {extractor!r} is not one of {', '.join(EXTRACTORS)}")
    train = _typed(table, "train", where)
    if train is not None and source is None:
        raise KitError(f"{where} train: a train file of its own needs a source column to learn from")
    template = table.get("input", input_template)
    if not isinstance(template, str) or not template_fields(template, f"{where} input"):
        raise KitError(f"{where} input: template {template!r} names no column; name one like {{abstract}}")
    metric = table.get("metric", "exact_f1")
    if metric not in TARGET_METRICS:
        raise KitError(f"{where} metric: {metric!r} is not one of {', '.join(TARGET_METRICS)}")
    separator = table.get("separator")
    if separator is not None and (not isinstance(separator, str) or not separator.strip()
                                  or any(c in separator for c in "\r\n")):
        raise KitError(f"{where} separator: must be a non-empty one-line string like \"; \", got {separator!r}")
    max_count = _count(table, "max_count", where, 10)
    count = _count(table, "count", where, None)
    if count is not None and count > max_count:
        raise KitError(f"{where} count: {count} is over max_count {max_count}")
    return Target(column=column, kind=kind, source=source, extractor=extractor or "minilm",
                  train=str(base / train) if train else None, input_template=template,
                  instruction=_typed(table, "instruction", where, default=Target.instruction).strip(),
                  separator=separator, count=count, max_count=max_count, metric=metric,
                  max_length=_max_length(table, where) if "max_length" in table else max_length)


def _targets(raw, base, input_template, max_length, path):
    targets = _table(raw, "targets", f"{path}")
    return {column: _target(column, table, base, input_template, max_length, f"{path} [targets.{column}]")
            for column, table in targets.items()}


def _label_task(task, label_column, where, label_columns=()):
    """(labels, label words, metric, instruction, scale) of [task]; none of them without a label
    column; a metric over numbers (rmse, mae, qwk) makes it a number task: no labels, a scale."""
    if label_columns:
        return _several_labels_task(task, label_columns, where)
    if label_column is None:
        extra = [key for key in ("labels", "label_words", "label_descriptions", "metric", "instruction", "few_shot",
                                 "scale") if key in task]
        if extra:
            raise KitError(f"{where} {extra[0]}: the spec has no [columns] label for it to describe")
        return [], {}, None, "", None
    info = metric_info(task["metric"]) if isinstance(task.get("metric"), str) else None
    if info is not None and info.needs == "numbers":
        return _number_task(task, info, where)
    if "scale" in task:
        raise KitError(f"{where} scale: only a metric over numbers ({', '.join(NUMBER_METRICS)}) uses a scale")
    labels = _labels(task, where)
    words = _label_words(task, labels, where)
    metric = _metric(task, labels, where)
    instruction = task.get("instruction", "")
    if not isinstance(instruction, str):
        raise KitError(f"{where} instruction: must be a string, got {instruction!r}")
    instruction = instruction.strip() or f"Classify the text. Answer with one of: {', '.join(words.values())}."
    instruction += _descriptions(task, labels, words, where)
    return labels, words, metric, instruction, None


def _several_labels_task(task, columns, where):
    """Several 0/1 label columns: the labels are the columns; a head gives each its own probability."""
    extra = [key for key in (*LABEL_ONLY_KEYS, "scale") if key in task]
    if extra:
        raise KitError(f"{where} {extra[0]}: [columns] label names several 0/1 columns, which are the labels; "
                       f"drop {extra[0]}")
    metric = task.get("metric", "mean_auc")
    info = metric_info(metric) if isinstance(metric, str) else None
    if info is None:
        raise KitError(f"{where} metric: {metric!r} is not one of {', '.join(MULTI_LABEL_METRICS)} (several label "
                       "columns)")
    mismatch = info.check_columns(where)
    if mismatch:
        raise KitError(mismatch)
    instruction = task.get("instruction", "")
    if not isinstance(instruction, str):
        raise KitError(f"{where} instruction: must be a string, got {instruction!r}")
    instruction = instruction.strip() or f"Which of these apply to the text: {', '.join(columns)}?"
    return list(columns), {c: c for c in columns}, metric, instruction, None


@dataclass(frozen=True)
class Extra:
    """One [[extra]] table: another labelled file of the same task under its own column names. Its
    rows join every fit's training rows and never a validation fold, the OOF score or a tuned
    threshold."""
    file: str                 # as the spec writes it (relative to the spec)
    path: Path
    label: str                # its label column
    input: str                # its input template
    max_rows: int = None      # the first max_rows rows only

    def describe(self):
        return {"file": self.file, "label": self.label, "input": self.input, "max_rows": self.max_rows}


def _extra(raw, base, label_column, input_template, where):
    """The [[extra]] tables: each a file, its label column (default: the spec's), its input
    template (default: the spec's) and an optional row cap."""
    tables = raw.get("extra", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise KitError(f"{where} extra: write each extra file as an [[extra]] table")
    if tables and label_column is None:
        raise KitError(f"{where} [[extra]]: extra rows need the spec's one [columns] label to learn (a spec of "
                       "several label columns or of [targets] only takes none)")
    out = []
    for number, table in enumerate(tables, 1):
        at = f"{where} [[extra]] {number}"
        _check_keys(table, EXTRA_KEYS, at)
        file = _need(table, "file", at)
        label = _typed(table, "label", at, default=label_column)
        template = _typed(table, "input", at, default=input_template)
        template_fields(template, f"{at} input")
        if label in template_fields(template):
            raise KitError(f"{at} input: template {template!r} names its label column {label!r}; the input must "
                           "not contain the answer")
        cap = table.get("max_rows")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise KitError(f"{at} max_rows: must be a whole number of at least 1, got {cap!r}")
        if (base / file).is_dir():
            raise KitError(f"{at} file: {file!r} is a directory; name a CSV file")
        out.append(Extra(file, base / file, label, template, cap))
    return out


def _rationale(columns, label_column, id_column, template, where):
    """[columns] rationale: the training file's column of reasoning texts the generative head learns
    after the label (label first; prediction still decides by the label alone)."""
    column = _typed(columns, "rationale", where)
    if column is None:
        return None
    if label_column is None:
        raise KitError(f"{where} rationale: a rationale follows the label; the spec has no single [columns] label")
    if column in (label_column, id_column):
        raise KitError(f"{where} rationale: {column!r} is the {'label' if column == label_column else 'id'} column")
    if column in template_fields(template):
        raise KitError(f"{where} input: template {template!r} names the rationale column {column!r}; the input "
                       "must not contain the reasoning behind its answer")
    return column


def _label_columns(raw, id_column, where):
    """[columns] label as (one column, []) or, given a list, (None, several 0/1 columns)."""
    if not isinstance(raw, list):
        return _typed({"label": raw} if raw is not None else {}, "label", where), []
    if len(raw) < 2 or not all(isinstance(c, str) and c.strip() for c in raw) or len(set(raw)) != len(raw):
        raise KitError(f"{where} label: several label columns are a list of at least two distinct column names, "
                       f"got {raw!r}")
    if id_column in raw:
        raise KitError(f"{where} id and label both name column {id_column!r}")
    return None, list(raw)


def _number_task(task, info, where):
    """A number per row, read from the label column (a score, a grade): no labels; qwk needs the
    integer scale its cut points round to."""
    extra = [key for key in LABEL_ONLY_KEYS if key in task]
    if extra:
        raise KitError(f"{where} {extra[0]}: metric {info.name!r} reads the label column as numbers, which have no "
                       f"{extra[0]}; drop it (or use a label metric)")
    scale = _scale(task.get("scale"), info, where)
    instruction = task.get("instruction", "")
    if not isinstance(instruction, str):
        raise KitError(f"{where} instruction: must be a string, got {instruction!r}")
    between = f" from {scale[0]:g} to {scale[1]:g}" if scale else ""
    return [], {}, info.name, instruction.strip() or f"Rate the text with a number{between}.", scale


def _scale(raw, info, where):
    """[low, high] of a number task, or None (any finite number)."""
    if raw is None:
        if info.cut_points:
            raise KitError(f"{where} scale: metric {info.name!r} scores integers on a scale; give scale = [low, high]")
        return None
    if (not isinstance(raw, list) or len(raw) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                              and math.isfinite(v) for v in raw) or raw[0] >= raw[1]):
        raise KitError(f"{where} scale: give [low, high], two finite numbers with low < high, got {raw!r}")
    if info.cut_points and not all(float(v).is_integer() for v in raw):
        raise KitError(f"{where} scale: metric {info.name!r} scores integers; low and high must be integers, got {raw!r}")
    return [float(v) for v in raw]


def read_toml(path):
    """A TOML file (a spec, a sweep) as a dict; UTF-8, with or without a byte-order mark (Windows
    editors write one, and tomllib reads it as an invalid statement at line 1)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise KitError(f"{path}: not valid TOML: {error}") from None


def _not_a_directory(base, files, where):
    """A file key (train, a split, an answer file, the sample) that names a directory: said as
    such, not as a file that is missing when it is read."""
    for key, file in files.items():
        if file and (base / file).is_dir():
            raise KitError(f"{where} {key}: {file!r} is a directory; name a CSV file")


def _answer_free(template, key, answers, where):
    """The input a model reads must not hold the answer it learns: a template naming the label
    column (or a [targets] column's source) would score perfectly in CV and fail on the test split."""
    for column, what in answers:
        if column is not None and column in template_fields(template):
            raise KitError(f"{where} {key}: template {template!r} names {what} {column!r}; "
                           "the input must not contain the answer")


class DataFolder:
    """Where a spec's data files are read from under KIT_DATA_DIR (folders separated by os.pathsep):
    each file by its own name ("../data/train.csv" -> <folder>/train.csv), from the first folder that
    has it. A competition notebook mounts the data read-only under its input folder, flat, wherever
    the host puts it (and a bundle's own files in another); the spec stays as written."""

    def __init__(self, folders):
        self.folders = [Path(folder) for folder in folders]

    def __truediv__(self, file):
        found = [folder / Path(file).name for folder in self.folders if (folder / Path(file).name).exists()]
        return found[0] if found else self.folders[0] / Path(file).name


def data_base(path):
    """The folder a spec's file keys are relative to: the spec's own, or KIT_DATA_DIR (DataFolder)."""
    folders = [f for f in os.environ.get(DATA_DIR_ENV, "").split(os.pathsep) if f]
    if not folders:
        return Path(path).parent
    for folder in folders:
        if not Path(folder).is_dir():
            raise KitError(f"{DATA_DIR_ENV}: {folder!r} is not a folder (it names where the spec's data files are)")
    return DataFolder(folders)


def load_spec(path=DEFAULT_SPEC):
    path = Path(path)
    if not path.is_file():
        raise KitError(f"spec file not found: {path}")
    raw = read_toml(path)
    base = data_base(path)
    _check_keys(raw, TOP_KEYS, f"{path}")
    columns, task, submission = (_table(raw, key, f"{path}") for key in ("columns", "task", "submission"))
    splits, answers = (_table(raw, key, f"{path}") for key in ("splits", "answers"))
    _check_keys(columns, COLUMN_KEYS, f"{path} [columns]")
    _check_keys(task, TASK_KEYS, f"{path} [task]")
    _check_keys(submission, SUBMISSION_KEYS, f"{path} [submission]")

    name = raw.get("name", path.stem)
    origin = "" if "name" in raw else " (from the file name; set name = ...)"
    _safe_name(name, f"{path}: name {name!r}{origin} must be letters, digits, '.', '_' or '-' "
                     f"(it names folders under runs/)")
    train = _need(raw, "train", f"{path}")
    _file_table(splits, f"{path} [splits]", "test")
    if "train" in splits:
        raise KitError(f"{path} [splits] train: the name 'train' is reserved for the top-level train file; "
                       f"call the split something else")
    for split in splits:
        _safe_name(split, f"{path} [splits]: split name {split!r} must be letters, digits, '.', '_' or '-' "
                          f"(it names files in the run folder)")
    _file_table(answers, f"{path} [answers]", "test_labels")
    _check_keys(answers, list(splits), f"{path} [answers]", noun="split")

    where = f"{path} [columns]"
    id_column = _need(columns, "id", where)
    template = _input_template(columns, where)
    max_length = _max_length(task, f"{path} [task]")
    targets = _targets(raw, base, template, max_length, path)
    label_column, label_columns = _label_columns(columns.get("label"), id_column, where)
    several = bool(label_columns)
    if label_column is None and not several and not targets:
        raise KitError(f"{where}: missing key 'label' (or predict a column of [targets] instead)")
    if label_column == id_column:
        raise KitError(f"{where} id and label are the same column {id_column!r}")
    labels, words, metric, instruction, scale = _label_task(task, label_column, f"{path} [task]", label_columns)
    shape, classes, separator = _shape(submission, metric, labels, label_column, f"{path} [submission]", several)
    sub_columns, sub_id, sub_label, fill, sample, sample_split = _submission(
        submission, id_column, label_column, splits, base, targets, classes, f"{path} [submission]", several)
    learned = [(c, "the label column") for c in label_columns or [label_column]]
    _answer_free(template, "input", learned, where)
    for column, target in targets.items():
        key = "input" if "input" in raw["targets"][column] else "input (the [columns] input)"
        _answer_free(target.input_template, key, [*learned,
                                                  (target.source, "its source column")],
                     f"{path} [targets.{column}]")
    _not_a_directory(base, {"train": train}, f"{path}")
    _not_a_directory(base, splits, f"{path} [splits]")
    _not_a_directory(base, answers, f"{path} [answers]")
    _not_a_directory(base, {"sample": submission.get("sample")}, f"{path} [submission]")
    for column, table in raw.get("targets", {}).items():
        _not_a_directory(base, {"train": table.get("train")}, f"{path} [targets.{column}]")
    return Spec(
        path=path, name=name, train=base / train,
        splits={name: base / file for name, file in splits.items()},
        id_column=id_column, label_column=label_column, input_template=template, targets=targets,
        instruction=instruction, labels=labels, label_words=words, metric=metric,
        max_length=max_length, submission_columns=sub_columns, submission_label=sub_label,
        submission_id=sub_id, fill=fill, sample=sample, sample_split=sample_split,
        answers={split: base / file for split, file in answers.items()},
        raw=raw, few_shot=_few_shot(task, f"{path} [task]") if label_column else 0,
        shape=shape, class_columns=classes, separator=separator, scale=scale, label_columns=label_columns,
        extra=_extra(raw, base, label_column, template, f"{path}"),
        rationale_column=_rationale(columns, label_column, id_column, template, where),
    )
