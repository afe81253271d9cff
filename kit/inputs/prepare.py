"""`kit prepare`: the instruction data any trainer reads (Alpaca JSON, chat messages JSONL,
dataset_info.json for LLaMA-Factory), for the label and each [targets] column with answers."""
import json
from pathlib import Path

from kit.core.files import write_json, write_text
from kit.inputs.data import load_rows
from kit.inputs.tasks import RATIONALE_SEPARATOR, keyword_task, target_rows


def prepare(spec, out_dir):
    """Instruction data for any trainer: Alpaca JSON, chat messages JSONL, dataset_info.json;
    one data set for the label and one per [targets] column that has answers to learn from."""
    out_dir = Path(out_dir)
    dataset_info, written = {}, {}
    if spec.has_labels:
        rows, _ = load_rows(spec, "train")
        answers = [answer_text(spec, label) for label in rows.labels]
        if rows.rationales is not None:        # the label first, then why (the seeds' GLM-4 recipe)
            answers = [a + RATIONALE_SEPARATOR + r if r else a for a, r in zip(answers, rows.rationales)]
        written[spec.name] = _instruction_data(out_dir, spec.name, spec.instruction, rows.texts, answers, dataset_info)
    for column, target in spec.targets.items():
        if target.source is None:
            continue
        target_spec = spec.for_target(column)
        rows, frame = target_rows(target_spec, "train")
        separator = keyword_task(target_spec, frame).separator
        kept = [i for i, keywords in enumerate(rows.labels) if keywords]
        written[target_spec.name] = _instruction_data(
            out_dir, target_spec.name, target_spec.instruction, [rows.texts[i] for i in kept],
            [separator.join(rows.labels[i]) for i in kept], dataset_info)
    write_json(out_dir / "dataset_info.json", dataset_info)
    return {"written": written, "dataset_info": str(out_dir / "dataset_info.json")}


def answer_text(spec, label):
    """What a row's answer says: its label word; a number task's number; the names of the label
    columns that are 1 ("none" when no column is)."""
    if spec.several_labels:
        return ", ".join(column for column, flag in zip(spec.label_columns, label) if flag) or "none"
    if spec.shape == "number":
        return f"{label:g}"
    return spec.label_words[spec.labels[label]]


def _instruction_data(out_dir, name, instruction, texts, answers, dataset_info):
    """Write one data set in both forms and add its LLaMA-Factory entries; (rows, files)."""
    alpaca = [{"instruction": instruction, "input": text, "output": answer} for text, answer in zip(texts, answers)]
    messages = [{"messages": [{"role": "system", "content": instruction},
                              {"role": "user", "content": text},
                              {"role": "assistant", "content": answer}]}
                for text, answer in zip(texts, answers)]
    alpaca_file, chat_file = f"{name}_alpaca.json", f"{name}_messages.jsonl"
    write_text(out_dir / alpaca_file, json.dumps(alpaca, ensure_ascii=False, indent=1) + "\n")
    write_text(out_dir / chat_file, "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages))
    dataset_info[name] = {"file_name": alpaca_file,       # LLaMA-Factory's format: point its dataset_dir here
                          "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
    dataset_info[f"{name}_messages"] = {"file_name": chat_file, "formatting": "sharegpt",
                                        "columns": {"messages": "messages"},
                                        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                                 "assistant_tag": "assistant", "system_tag": "system"}}
    return len(texts), [str(out_dir / alpaca_file), str(out_dir / chat_file)]
