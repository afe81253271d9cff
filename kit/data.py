"""Reading competition CSVs safely, and turning rows into instruction data.

Competitions trip on encodings (UTF-8 with a BOM, GBK), ids read as floats, labels written
as 1 / 1.0 / "1", empty text fields and duplicate ids. Everything is read as text and checked
here, once, so the rest of the kit sees clean rows.
"""
import io
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import KitError
from .spec import template_fields

ENCODINGS = ("utf-8", "gb18030")   # gb18030 is a superset of GBK and GB2312
_FLOAT_ID = re.compile(r"^-?\d+\.0+$")


@dataclass
class Rows:
    """What every model sees: one input text per row, its id, and (train) its label index."""
    ids: list
    texts: list
    labels: list = None      # label indices into spec.labels, or None for unlabelled splits

    def __len__(self):
        return len(self.ids)

    def subset(self, index):
        return Rows([self.ids[i] for i in index], [self.texts[i] for i in index],
                    None if self.labels is None else [self.labels[i] for i in index])


def log(message):
    print(message, file=sys.stderr, flush=True)


def decode(raw, path):
    """Bytes -> text: UTF-8 (with or without a BOM) or GB18030/GBK, whose files sometimes carry
    a UTF-8 BOM too when an editor added one."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for encoding in ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise KitError(f"{path}: not UTF-8 or GBK/GB18030 text")


def read_csv(path):
    """A CSV as strings exactly as written: no NaN, no float ids; UTF-8 (BOM or not) or GBK."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"file not found: {path}")
    text = decode(path.read_bytes(), path)
    if not text.strip():
        raise KitError(f"{path}: the file is empty")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        raise KitError(f"{path}: not a valid CSV: {str(error).strip()}") from None
    frame.columns = [str(c).replace("\ufeff", "").strip() for c in frame.columns]
    if frame.empty:
        raise KitError(f"{path}: no rows under the header")
    return frame


def require_columns(frame, columns, path, what):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{path}: missing column {missing[0]!r} ({what}); the file has {list(frame.columns)}")


def clean_ids(frame, column, path):
    """Ids as text; '12.0'-style ids (a float round trip) become '12'. Duplicates are an error."""
    ids = frame[column].str.strip()
    if (ids == "").any():
        row = int((ids == "").to_numpy().argmax()) + 2
        raise KitError(f"{path}: empty id in column {column!r} at row {row}")
    if ids.str.match(_FLOAT_ID).all():
        ids = ids.str.replace(r"\.0+$", "", regex=True)
        log(f"{path}: ids in {column!r} looked like floats (e.g. '1.0'); read them as integers")
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        raise KitError(f"{path}: duplicate ids in {column!r}: {', '.join(duplicated[:5])}"
                       + (" ..." if len(duplicated) > 5 else ""))
    return ids.tolist()


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


def render_inputs(frame, template, path):
    """Fill the spec's input template from each row; report rows whose fields are all empty."""
    fields = template_fields(template)
    require_columns(frame, fields, path, "used by the input template")
    records = frame[fields].to_dict("records")
    texts = [template.format_map(record) for record in records]
    empty = sum(all(not str(record[f]).strip() for f in fields) for record in records)
    return texts, empty


def load_rows(spec, split="train"):
    """The split's CSV as Rows (labels only for train) plus the frame for submission filling."""
    path = spec.split_path(split)
    frame = read_csv(path)
    require_columns(frame, [spec.id_column], path, "the spec's [columns] id")
    ids = clean_ids(frame, spec.id_column, path)
    texts, empty = render_inputs(frame, spec.input_template, path)
    if empty:
        log(f"{path}: {empty} row(s) have empty input fields; "
            + ("they still get a prediction" if split != "train" else "they are kept for training"))
    labels = None
    if split == "train":
        require_columns(frame, [spec.label_column], path, "the spec's [columns] label")
        labels = normalise_labels(frame[spec.label_column].tolist(), spec.labels, path, spec.label_column)
    return Rows(ids, texts, labels), frame


def labelled_rows(spec, path):
    """Any CSV with the spec's id and label columns (e.g. a labelled copy of a test split)."""
    frame = read_csv(path)
    require_columns(frame, [spec.id_column, spec.label_column], path, "needed to score")
    ids = clean_ids(frame, spec.id_column, path)
    labels = normalise_labels(frame[spec.label_column].tolist(), spec.labels, path, spec.label_column)
    return ids, labels


def atomic_write(path, write):
    """Call write(tmp_path), then rename into place: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")
    atomic_write(path, write)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def prepare(spec, out_dir):
    """Instruction data for any trainer: Alpaca JSON, chat messages JSONL, dataset_info.json."""
    rows, _ = load_rows(spec, "train")
    out_dir = Path(out_dir)
    answers = [spec.label_words[spec.labels[i]] for i in rows.labels]
    alpaca = [{"instruction": spec.instruction, "input": text, "output": answer}
              for text, answer in zip(rows.texts, answers)]
    messages = [{"messages": [{"role": "system", "content": spec.instruction},
                              {"role": "user", "content": text},
                              {"role": "assistant", "content": answer}]}
                for text, answer in zip(rows.texts, answers)]
    alpaca_file, chat_file = f"{spec.name}_alpaca.json", f"{spec.name}_messages.jsonl"
    write_text(out_dir / alpaca_file, json.dumps(alpaca, ensure_ascii=False, indent=1) + "\n")
    write_text(out_dir / chat_file, "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages))
    dataset_info = {  # LLaMA-Factory's format: point its dataset_dir at out_dir
        spec.name: {"file_name": alpaca_file,
                    "columns": {"prompt": "instruction", "query": "input", "response": "output"}},
        f"{spec.name}_messages": {"file_name": chat_file, "formatting": "sharegpt",
                                  "columns": {"messages": "messages"},
                                  "tags": {"role_tag": "role", "content_tag": "content",
                                           "user_tag": "user", "assistant_tag": "assistant",
                                           "system_tag": "system"}},
    }
    write_json(out_dir / "dataset_info.json", dataset_info)
    return {"rows": len(rows), "alpaca": str(out_dir / alpaca_file), "messages": str(out_dir / chat_file),
            "dataset_info": str(out_dir / "dataset_info.json")}
