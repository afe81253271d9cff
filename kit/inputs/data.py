"""Reading competition CSVs safely, and turning rows into instruction data.

Competitions trip on encodings (UTF-8 with a BOM, GBK), ids read as floats, labels written
as 1 / 1.0 / "1", empty text fields and duplicate ids. Everything is read as text and checked
here, once, so the rest of the kit sees clean rows.
"""
import csv
import io
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kit.core.errors import KitError
from kit.core.logs import log
from kit.evaluation.metrics import metric_info
from kit.inputs.spec import render_template, template_fields

_FLOAT_ID = re.compile(r"^(-?\d+)\.0+$")
# Non-ASCII characters a Western (cp1252) text plausibly holds besides letters.
_TYPOGRAPHIC = set("‘’‚“”„–—…•·«»‹›°±×÷§¶©®™€£¥¢¤¿¡´¨¸¯¹²³¼½¾†‡‰ˆ˜¦¬\xa0\xad")
csv.field_size_limit(1 << 30)   # long abstracts; the default 128 KiB limit is per field


@dataclass
class Rows:
    """What every model sees: one input text per row, its id, and (train) its label index."""
    ids: list
    texts: list
    labels: list = None      # label indices into spec.labels (a number task: the numbers; several label
                             # columns: a tuple of 0/1 per row), or None for unlabelled splits
    soft: list = None        # levers (kit/workflows/levers.py): per row a probability vector to learn instead
                             # of the label (a soft pseudo-label), or None
    teacher: list = None     # per row the teacher's probability per label (distillation), or None
    rationales: list = None  # per row the reasoning text the generative head learns after the label, or None

    def __len__(self):
        return len(self.ids)

    def subset(self, index):
        pick = lambda values: None if values is None else [values[i] for i in index]   # noqa: E731
        return Rows(pick(self.ids), pick(self.texts), pick(self.labels), pick(self.soft), pick(self.teacher),
                    pick(self.rationales))


def join_rows(first, second):
    """Rows of both, in order; a per-row field that only one side has is None on the other."""
    def both(a, b):
        if a is None and b is None:
            return None
        return list(a if a is not None else [None] * len(first)) + list(b if b is not None else [None] * len(second))
    return Rows(first.ids + second.ids, first.texts + second.texts, both(first.labels, second.labels),
                both(first.soft, second.soft), both(first.teacher, second.teacher),
                both(first.rationales, second.rationales))


def _is_cjk(ch):
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or ch >= "\U00020000"


def _in_gb2312(ch):
    try:
        ch.encode("gb2312")
        return True
    except UnicodeEncodeError:
        return False


def _odd_chinese(text):
    """Non-ASCII characters of a GB18030 reading that real text rarely holds: ideographs outside
    GB2312's common range (Latin-1 'ü' + 'l' reads as 黮), private-use and unassigned ones."""
    return sum((_is_cjk(ch) and not _in_gb2312(ch)) or unicodedata.category(ch) in ("Co", "Cn", "Cc")
               for ch in text if not ch.isascii())


def _looks_chinese(text):
    """Evidence for GB18030: at most a third of the non-ASCII characters are odd (rare names such
    as 镕 occur; misread Latin-1 is nearly all odd). Latin letters that a GB18030 encoder wrote
    (ø, ş in an English file) come back as themselves and count as plain."""
    return 3 * _odd_chinese(text) <= sum(not ch.isascii() for ch in text)


def _looks_western(text):
    """Evidence for Windows-1252: non-ASCII characters are letters or common punctuation, and
    most such letters touch an ASCII letter (Müller, café); GBK read as cp1252 gives runs of
    accented letters and symbols instead ('北京' -> '±±¾©')."""
    if not all(ch.isascii() or ch.isalpha() or ch in _TYPOGRAPHIC for ch in text):
        return False
    letters = [i for i, ch in enumerate(text) if not ch.isascii() and ch.isalpha()]
    in_words = sum(any(text[j:j + 1].isascii() and text[j:j + 1].isalpha() for j in (i - 1, i + 1))
                   for i in letters)
    return 2 * in_words >= len(letters)


def _is_utf8(line):
    try:
        line.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def decode(raw, path):
    """Bytes -> (text, encoding), chosen by evidence: UTF-8 (BOM or not), else GB18030/GBK when
    the text reads as Chinese, else Windows-1252 when it reads as Western text. A decoding that
    merely does not raise proves nothing: Latin-1 'Müller' is valid GB18030 ('M黮ler')."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if _is_utf8(raw):
        return raw.decode("utf-8"), "utf-8"
    lines = raw.split(b"\n")      # safe: no GB18030 or cp1252 multi-byte sequence holds 0x0A
    bad = next(i for i, line in enumerate(lines) if not _is_utf8(line)) + 1
    # Lines with valid non-ASCII UTF-8 next to lines that are not: a mixed file, unless the line
    # also reads as plain Chinese (a short GBK line can be valid UTF-8: 猫 is C3 A8, UTF-8 è).
    utf8 = [line for line in lines if not line.isascii() and _is_utf8(line)]
    for encoding, plausible in (("gb18030", _looks_chinese), ("cp1252", _looks_western)):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        mixed = [line for line in utf8 if encoding == "cp1252" or _odd_chinese(line.decode(encoding))]
        if plausible(text) and "\x00" not in text and not mixed:
            return text, encoding
    raise KitError(f"{path}: line {bad} is not valid UTF-8, and the file is not cleanly "
                   "GBK/GB18030 or Windows-1252; save it as UTF-8")


def _header(line, names, path):
    names = [name.replace("\ufeff", "").strip() for name in names]
    for column, name in enumerate(names, start=1):
        if not name:
            raise KitError(f"{path}: line {line}: header column {column} has no name")
        if names.index(name) + 1 != column:
            raise KitError(f"{path}: line {line}: column {name!r} appears twice in the header "
                           f"(columns {names.index(name) + 1} and {column})")
    return names


def _records(text, path):
    """Yield (first physical line, fields) per record; every record must parse cleanly.
    strict: a quote left open would otherwise swallow the rest of the file into one field."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    try:
        for fields in reader:
            if len(fields) > 1 or "".join(fields).strip():   # blank lines are not records
                yield line, fields
            line = reader.line_num + 1
    except csv.Error as error:
        if "end of data" in str(error):
            raise KitError(f"{path}: line {line}: a quote opens and never closes") from None
        raise KitError(f"{path}: line {line}: not valid CSV ({error})") from None


def read_csv_with_encoding(path):
    """(frame, encoding): a CSV as strings exactly as written (no NaN, empty cells stay ""),
    every row with exactly the header's fields, unique column names."""
    path = Path(path)
    if path.is_dir():
        raise KitError(f"{path}: is a directory, not a CSV file")
    if not path.is_file():
        raise KitError(f"file not found: {path}")
    text, encoding = decode(path.read_bytes(), path)
    records = _records(text, path)
    header = next(records, None)
    if header is None:
        raise KitError(f"{path}: the file is empty")
    names = _header(*header, path)
    rows = []
    for line, fields in records:
        if len(fields) != len(names):
            raise KitError(f"{path}: line {line} has {len(fields)} fields, the header has {len(names)}")
        rows.append(fields)
    if not rows:
        raise KitError(f"{path}: no rows under the header")
    return pd.DataFrame(rows, columns=names, dtype=str), encoding


def read_csv(path):
    """read_csv_with_encoding's frame; the encoding is kept in frame.attrs["encoding"]."""
    frame, encoding = read_csv_with_encoding(path)
    frame.attrs["encoding"] = encoding
    return frame


def require_columns(frame, columns, path, what):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{path}: missing column {missing[0]!r} ({what}); the file has {list(frame.columns)}")


def id_key(text):
    """What two ids are compared by: '12.0' and '12.00' (a float round trip) equal '12'.
    Ids are still written as given; only comparisons go through the key."""
    text = str(text).strip()
    match = _FLOAT_ID.match(text)
    return match.group(1) if match else text


def clean_ids(frame, column, path):
    """Ids as written (stripped). Empty ids and duplicates by id_key ('3' and '3.0') are errors."""
    ids = frame[column].str.strip().tolist()
    seen = {}
    for row, value in enumerate(ids, start=2):
        if not value:
            raise KitError(f"{path}: empty id in column {column!r} at row {row}")
        first = seen.setdefault(id_key(value), row)
        if first != row:
            raise KitError(f"{path}: duplicate ids in {column!r}: {ids[first - 2]} (row {first}) "
                           f"and {value} (row {row})")
    return ids


def _same_number(value, label):
    try:
        a, b = float(value), float(label)
    except ValueError:
        return False
    return math.isfinite(a) and a == b


def normalise_labels(values, labels, path, column):
    """Raw label cells -> indices into labels; 1, 1.0 and "1" are the same label."""
    lookup = {label: i for i, label in enumerate(labels)}
    out = []
    for row, value in enumerate(values, start=2):
        text = value.strip()
        index = lookup.get(text)
        if index is None:
            index = next((i for i, label in enumerate(labels) if _same_number(text, label)), None)
        if index is None:
            raise KitError(f"{path}: row {row}: label {value!r} in column {column!r} "
                           f"is not one of {labels}")
        out.append(index)
    return out


def input_key(spec):
    """The spec key a spec's input template comes from, for messages: '<spec> [columns] input'."""
    table = f"[targets.{spec.target['column']}]" if spec.target else "[columns]"
    return f"{spec.path} {table} input"


def render_inputs(frame, template, path, key=None, answers=()):
    """Fill the spec's input template from each row; report rows whose fields are all empty.

    key (input_key(spec)) marks a training file, where the template must give some row a text
    (TF-IDF would fail on an empty vocabulary, a model would learn nothing) and no column it names
    may be a copy of an answer column (the label, each of several label columns, a target's source)."""
    fields = template_fields(template)
    require_columns(frame, fields, path, "used by the input template")
    for answer in answers if key is not None else ():
        if answer not in frame.columns:
            continue
        values = frame[answer].str.strip()
        for column in fields:
            if column != answer and frame[column].str.strip().equals(values):
                raise KitError(f"{key}: column {column!r} is identical to the answer column {answer!r} in {path}; "
                               "the input must not contain the answer")
    records = frame[fields].to_dict("records")
    texts = [render_template(template, record) for record in records]
    empty = sum(all(not str(record[f]).strip() for f in fields) for record in records)
    if key is not None and empty == len(records):
        raise KitError(f"{key}: template {template!r} is empty in every row of {path} (columns {fields}); "
                       "name a column that holds the text")
    return texts, empty


def load_rows(spec, split="train", frame=None):
    """The split's CSV (read here unless frame is given) as Rows (labels only for train) plus
    the frame for submission filling."""
    path = spec.split_path(split)
    frame = read_csv(path) if frame is None else frame
    require_columns(frame, [spec.id_column], path, "the spec's [columns] id")
    ids = clean_ids(frame, spec.id_column, path)
    train = split == "train"
    texts, empty = render_inputs(frame, spec.input_template, path, key=input_key(spec) if train else None,
                                 answers=spec.answer_columns if train else ())
    if empty:
        log(f"{path}: {empty} row(s) have empty input fields; "
            + ("they still get a prediction" if split != "train" else "they are kept for training"))
    labels = None
    if split == "train" and spec.has_labels:
        require_columns(frame, spec.answer_columns, path, "the spec's [columns] label")
        labels = read_labels(spec, frame, path)
        require_two_labels(labels, spec, path)
    rationales = read_rationales(spec, frame, path) if train and spec.rationale_column else None
    return Rows(ids, texts, labels, rationales=rationales), frame


def read_rationales(spec, frame, path):
    """[columns] rationale of the training file: a text per row ("" where a row has none)."""
    column = spec.rationale_column
    require_columns(frame, [column], path, "the spec's [columns] rationale")
    texts = [str(value).strip() for value in frame[column]]
    if not any(texts):
        raise KitError(f"{path}: the rationale column {column!r} is empty in every row; fill it or drop "
                       "[columns] rationale")
    return texts


def extra_rows(spec, training):
    """Every [[extra]] file's rows as one Rows (ids "extra<n>:<row>", never an id of the training
    file), each read under its own label column and input template; None without [[extra]].
    A row whose input is a training row's input is dropped: joined to every fold's training rows,
    it would put a held-out row's text into its own fold's fit (public extra data is often a copy
    of the competition's source)."""
    joined = None
    for number, extra in enumerate(spec.extra, 1):
        frame = read_csv(extra.path)
        if extra.max_rows is not None:
            frame = frame.head(extra.max_rows)
        key = f"{spec.path} [[extra]] {number} input"
        require_columns(frame, [extra.label], extra.path, f"the label column of [[extra]] {number}")
        texts, _ = render_inputs(frame, extra.input, extra.path, key=key, answers=[extra.label])
        labels = read_labels(spec, frame, extra.path, extra.label)
        rows = Rows([f"extra{number}:{row}" for row in range(2, len(frame) + 2)], texts, labels)
        joined = rows if joined is None else join_rows(joined, rows)
    return None if joined is None else _unseen(joined, training)


def _unseen(extra, training):
    """The extra rows whose input no training row has (None when none is left), the rest logged."""
    seen = set(training.texts)
    dropped = [i for i, text in enumerate(extra.texts) if text in seen]
    if dropped:
        log(f"extra: {len(dropped)} of {len(extra)} [[extra]] rows dropped (the first: {extra.ids[dropped[0]]}): "
            "their input is a training row's input, and a held-out row's copy would be trained on in its own fold")
    keep = sorted(set(range(len(extra))) - set(dropped))
    return extra.subset(keep) if keep else None


def read_labels(spec, frame, path, column=None):
    """The label column's cells (column: another file's label column) as what is learned and
    scored: label indices; for a number task (shape number) the numbers themselves; for several
    label columns a tuple of 0/1 per row."""
    if spec.several_labels:
        return read_flags(frame, spec.label_columns, path)
    column = column or spec.label_column
    values = frame[column].tolist()
    if spec.shape == "number":
        return read_numbers(values, spec.scale, path, column, integers=metric_info(spec.metric).cut_points)
    return normalise_labels(values, spec.labels, path, column)


def read_flags(frame, columns, path):
    """Several label columns' cells -> a tuple of 0/1 per row ("1", "1.0", "0" and "0.0" read as such)."""
    flags = {}
    for column in columns:
        flags[column] = []
        for row, value in enumerate(frame[column].tolist(), start=2):
            text = str(value).strip()
            flag = 1 if _same_number(text, "1") else 0 if _same_number(text, "0") else None
            if flag is None:
                raise KitError(f"{path}: row {row}: label column {column!r} holds {value!r}, not 0 or 1")
            flags[column].append(flag)
    return list(zip(*(flags[c] for c in columns)))


def read_numbers(values, scale, path, column, integers=False):
    """Raw cells -> floats: each finite, with a scale inside it, and integers where the metric
    scores integers (qwk), else the first bad row."""
    out = []
    for row, value in enumerate(values, start=2):
        try:
            number = float(str(value).strip())
        except ValueError:
            number = float("nan")
        if not math.isfinite(number):
            raise KitError(f"{path}: row {row}: {column} {value!r} is not a finite number")
        if scale and not scale[0] <= number <= scale[1]:
            raise KitError(f"{path}: row {row}: {column} {value!r} is outside the spec's scale "
                           f"[{scale[0]:g}, {scale[1]:g}]")
        if integers and not number.is_integer():
            raise KitError(f"{path}: row {row}: {column} {value!r} is not an integer, and qwk scores integers")
        out.append(number)
    return out


def require_two_labels(labels, spec, path):
    """A classifier cannot be fitted on one class (scikit-learn fails deep inside)."""
    if spec.several_labels:
        return                    # a column that is all 0 or all 1 is learned as a constant
    if len(set(labels)) < 2:
        one = labels[0] if spec.shape == "number" else spec.labels[labels[0]]
        raise KitError(f"{path}: column {spec.label_column!r} has only one {'value' if spec.shape == 'number' else 'label'} "
                       f"({one!r}) in {len(labels)} rows; training needs at least two")


def labelled_rows(spec, path):
    """Any CSV with the spec's id and label columns (e.g. a labelled copy of a test split)."""
    frame = read_csv(path)
    require_columns(frame, [spec.id_column, *spec.answer_columns], path, "needed to score")
    ids = clean_ids(frame, spec.id_column, path)
    return ids, read_labels(spec, frame, path)


