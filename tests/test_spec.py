"""The spec is strict: unknown keys, wrong types and unsafe names are one-line KitErrors naming the
file and the key. Templates read column names literally. The fingerprint covers what a model learns."""
import copy
import json
from dataclasses import replace

import pytest
from conftest import ROOT, write_spec, write_toy_competition

from kit.core.errors import KitError
from kit.inputs.spec import load_spec, render_template, template_fields

BASE = {
    "name": "toy", "train": "train.csv",
    "splits": {"test": "test.csv"},
    "columns": {"id": "id", "label": "label", "input": "{text}"},
    "task": {"instruction": "Animals? Answer 1 or 0.", "labels": ["0", "1"], "max_length": 64},
    "submission": {"columns": ["id", "label"]},
}


def _toml(table, prefix=""):
    """A tiny TOML writer for these tests: JSON scalars and lists are valid TOML values."""
    plain = [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    lines = ([f"[{prefix}]"] if prefix else []) + plain
    for key, value in table.items():
        if isinstance(value, dict):
            lines.append(_toml(value, f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)))
    return "\n".join(lines) + "\n"


def spec_file(tmp_path, edit=None):
    """competition.toml from BASE after edit(spec_dict); the CSVs exist but are not read."""
    write_toy_competition(tmp_path)
    data = copy.deepcopy(BASE)
    if edit:
        edit(data)
    path = tmp_path / "competition.toml"
    path.write_text(_toml(data))
    return path


def load(tmp_path, edit=None):
    return load_spec(spec_file(tmp_path, edit))


def error(tmp_path, edit, *needles):
    with pytest.raises(KitError) as info:
        load(tmp_path, edit)
    message = str(info.value)
    assert "\n" not in message and "competition.toml" in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_base_spec_loads(tmp_path):
    spec = load(tmp_path)
    assert spec.name == "toy" and spec.labels == ["0", "1"] and spec.max_length == 64


def test_shipped_specs_load():
    for path in ["data/competition.toml", "specs/disaster.toml", "specs/medical.toml", "specs/paper.toml"]:
        load_spec(ROOT / path)


# -- unknown keys ---------------------------------------------------------------------------------
def test_unknown_top_level_key(tmp_path):
    message = error(tmp_path, lambda d: d.update(trian="train.csv"), "unknown key 'trian'")
    assert message.endswith("competition.toml: unknown key 'trian'; did you mean 'train'?")


def test_unknown_task_key_suggests(tmp_path):
    message = error(tmp_path, lambda d: d["task"].update(lables=["0", "1"]))
    assert message.endswith("competition.toml [task]: unknown key 'lables'; did you mean 'labels'?")


def test_unknown_key_without_close_match_lists_known(tmp_path):
    error(tmp_path, lambda d: d["columns"].update(zzz="x"),
          "[columns]: unknown key 'zzz'; known keys: id, label, input")


def test_unknown_submission_key(tmp_path):
    error(tmp_path, lambda d: d["submission"].update(sample_splt="test"),
          "[submission]: unknown key 'sample_splt'; did you mean 'sample_split'?")


def test_unknown_fill_column(tmp_path):
    def edit(d):
        d["submission"] = {"columns": ["id", "Keywords", "label"], "fill": {"Keywords": "", "Keyword": ""}}
    error(tmp_path, edit, "[submission.fill]: unknown column 'Keyword'; did you mean 'Keywords'?")


def test_split_value_must_be_a_string(tmp_path):
    error(tmp_path, lambda d: d["splits"].update(testB=3), "[splits] testB: must be a file name string")


def test_answers_must_name_a_split(tmp_path):
    error(tmp_path, lambda d: d.update(answers={"tset": "labels.csv"}),
          "[answers]: unknown split 'tset'; did you mean 'test'?")


def test_answers_cannot_name_train(tmp_path):
    error(tmp_path, lambda d: d.update(answers={"train": "labels.csv"}), "[answers]: unknown split 'train'")


def test_split_named_train_is_reserved(tmp_path):
    error(tmp_path, lambda d: d["splits"].update(train="other.csv"), "[splits] train:", "reserved")


def test_unsafe_split_name(tmp_path):
    error(tmp_path, lambda d: d["splits"].update({"../x": "x.csv"}), "[splits]: split name '../x'")


def test_section_must_be_a_table(tmp_path):
    error(tmp_path, lambda d: d.update(splits="test.csv"), "splits: must be a table")


# -- types ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 65, "a b"])
def test_unsafe_name(tmp_path, name):
    message = error(tmp_path, lambda d: d.update(name=name))
    assert message.endswith(f"competition.toml: name {name!r} must be letters, digits, '.', '_' or '-' "
                            "(it names folders under runs/)"), message


def test_name_must_be_a_string(tmp_path):
    error(tmp_path, lambda d: d.update(name=3), "name 3 must be letters")


def test_train_must_be_a_string(tmp_path):
    error(tmp_path, lambda d: d.update(train=["a.csv"]), "competition.toml train: must be a non-empty string")


def test_integer_labels_become_strings(tmp_path):
    def edit(d):
        d["task"]["labels"] = [0, 1]
    assert load(tmp_path, edit).labels == ["0", "1"]


def test_float_labels_are_refused(tmp_path):
    def edit(d):
        d["task"]["labels"] = [0.0, 1.0]
    error(tmp_path, edit, "[task] labels: 0.0 is a float", '"0"')


@pytest.mark.parametrize("labels", [[True, False], [["a"], "b"], ["", "x"]])
def test_bad_label_values(tmp_path, labels):
    error(tmp_path, lambda d: d["task"].update(labels=labels), "[task] labels:",
          "must be a non-empty string or an integer")


def test_labels_must_be_a_list(tmp_path):
    error(tmp_path, lambda d: d["task"].update(labels="0,1"), "[task] labels: must be a non-empty list")


def test_duplicate_labels(tmp_path):
    error(tmp_path, lambda d: d["task"].update(labels=["1", 1]), "[task] labels: duplicates")


def test_label_words_keys_must_be_labels(tmp_path):
    error(tmp_path, lambda d: d["task"].update(label_words={"2": "two"}), "[task] label_words: ['2'] not in labels")


def test_label_words_values_must_be_strings(tmp_path):
    error(tmp_path, lambda d: d["task"].update(label_words={"1": 1}),
          "[task] label_words 1: must be a non-empty string")


def test_label_words_must_be_a_table(tmp_path):
    error(tmp_path, lambda d: d["task"].update(label_words=["no", "yes"]), "[task] label_words: must be a table")


def test_label_words_must_differ(tmp_path):
    error(tmp_path, lambda d: d["task"].update(label_words={"0": "1"}),
          "[task] label_words: labels '0' and '1' both answer '1'")


def test_label_words_default_to_labels(tmp_path):
    spec = load(tmp_path, lambda d: d["task"].update(label_words={"1": "yes"}))
    assert spec.label_words == {"0": "0", "1": "yes"}


def test_unknown_metric(tmp_path):
    error(tmp_path, lambda d: d["task"].update(metric="f2"), "[task] metric: 'f2' is not one of f1, macro_f1")


@pytest.mark.parametrize("value", [8, 200000, True, 64.0, "128"])
def test_bad_max_length(tmp_path, value):
    error(tmp_path, lambda d: d["task"].update(max_length=value),
          "[task] max_length: must be an integer between 16 and 131072")


def test_instruction_must_be_a_string(tmp_path):
    error(tmp_path, lambda d: d["task"].update(instruction=["a"]), "[task] instruction: must be a string")


def test_submission_columns_must_be_strings(tmp_path):
    error(tmp_path, lambda d: d["submission"].update(columns=["id", 3]), "[submission] columns: 3 must be")


def test_submission_columns_unique(tmp_path):
    error(tmp_path, lambda d: d["submission"].update(columns=["id", "label", "id"]),
          "[submission] columns: duplicates ['id']")


def test_submission_columns_not_empty(tmp_path):
    error(tmp_path, lambda d: d["submission"].update(columns=[]), "[submission] columns: must be a non-empty list")


def test_sample_split_must_be_a_split(tmp_path):
    def edit(d):
        d["submission"].update(sample="test.csv", sample_split="testB")
    error(tmp_path, edit, "[submission] sample_split: 'testB' is not a split")


def test_default_sample_split_needs_a_test_split(tmp_path):
    def edit(d):
        d["splits"] = {"dev": "test.csv"}
        d["submission"]["sample"] = "test.csv"
    error(tmp_path, edit, "[submission] sample_split: 'test' is not a split; [splits] has ['dev']")


def test_sample_split_unchecked_without_sample(tmp_path):
    assert load(tmp_path, lambda d: d["submission"].update(sample_split="other")).sample is None


def test_fill_values_must_be_strings(tmp_path):
    def edit(d):
        d["submission"] = {"columns": ["id", "Keywords", "label"], "fill": {"Keywords": 0}}
    error(tmp_path, edit, "[submission.fill] Keywords: must be a string")


def test_fill_may_be_a_constant(tmp_path):
    def edit(d):
        d["submission"] = {"columns": ["id", "Keywords", "label"], "fill": {"Keywords": "{{none}}"}}
    spec = load(tmp_path, edit)
    assert spec.template_columns(spec.fill["Keywords"]) == []
    assert spec.template_columns("") == []          # "" is a constant, not the input template


def test_bad_fill_template(tmp_path):
    def edit(d):
        d["submission"] = {"columns": ["id", "Keywords", "label"], "fill": {"Keywords": "{text:d}"}}
    error(tmp_path, edit, "[submission.fill] Keywords: template '{text:d}'", "format spec")


# -- the input template ---------------------------------------------------------------------------
def test_input_template_of_literal_braces_names_no_column(tmp_path):
    message = error(tmp_path, lambda d: d["columns"].update(input="{{text}}"))
    assert message.endswith("competition.toml [columns] input: template '{{text}}' names no column; write {text}")


def test_input_template_without_braces(tmp_path):
    error(tmp_path, lambda d: d["columns"].update(input="text"), "names no column; name a column like {text}")


@pytest.mark.parametrize("template, needle", [
    ("{text:d}", "{text:d} has a format spec; write {text}"),
    ("{text!x}", "{text!x} has a conversion; write {text}"),
    ("{text!r}", "{text!r} has a conversion; write {text}"),
    ("{}", "has an empty field {}"),
    ("{text", "is malformed"),
    ("text}", "is malformed"),
])
def test_bad_input_template(tmp_path, template, needle):
    error(tmp_path, lambda d: d["columns"].update(input=template), f"[columns] input: template {template!r}", needle)


def test_input_template_with_literal_column_names(tmp_path):
    spec = load(tmp_path, lambda d: d["columns"].update(input="{my title} - {a-b}.{x.y}"))
    assert spec.template_columns() == ["my title", "a-b", "x.y"]


def test_conftest_write_spec_still_loads(tmp_path):
    write_toy_competition(tmp_path)
    assert load_spec(write_spec(tmp_path, input="{text}")).input_template == "{text}"


# -- template_fields / render_template --------------------------------------------------------------
def test_template_fields_in_order_deduplicated():
    assert template_fields("{b} {a} {b} {{c}}") == ["b", "a"]


def test_template_fields_error_names_where():
    with pytest.raises(KitError, match=r"^spec.toml \[x\]: template '\{\}' has an empty field"):
        template_fields("{}", where="spec.toml [x]")
    with pytest.raises(KitError, match=r"^template '\{a:>3\}'"):
        template_fields("{a:>3}")


def test_render_template_spaces_hyphens_dots():
    record = {"my title": "T", "a-b": 1, "x.y": None, "0": "zero"}
    assert render_template("{my title}|{a-b}|{x.y}|{0}", record) == "T|1|None|zero"


def test_render_template_literal_braces():
    assert render_template("{{x}} {x} }}{{", {"x": "v"}) == "{x} v }{"


def test_render_template_values_are_not_re_expanded():
    assert render_template("title:{t}", {"t": "{t} and {other} {{"}) == "title:{t} and {other} {{"


def test_render_template_no_attribute_or_index_lookup():
    assert render_template("{a.b}{a[0]}", {"a.b": "x", "a[0]": "y"}) == "xy"


def test_render_template_missing_column():
    with pytest.raises(KitError, match="no column 'b'"):
        render_template("{a}{b}", {"a": 1})


def test_render_template_constant():
    assert render_template("", {}) == "" and render_template("n/a", {}) == "n/a"


# -- fingerprint ----------------------------------------------------------------------------------
def test_fingerprint_same_for_equal_specs(tmp_path):
    first, second = load(tmp_path), load(tmp_path)
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 16 and int(first.fingerprint(), 16) >= 0
    json.dumps(first.describe())
    assert set(first.describe()) == {"instruction", "labels", "label_words", "metric", "max_length",
                                     "input_template", "id_column", "label_column"}


def test_fingerprint_follows_replace(tmp_path):
    spec = load(tmp_path)
    prints = {spec.fingerprint(),
              replace(spec, instruction="Other.").fingerprint(),
              replace(spec, max_length=128).fingerprint(),
              replace(spec, label_words={"0": "no", "1": "yes"}).fingerprint(),
              replace(spec, input_template="x {text}").fingerprint()}
    assert len(prints) == 5


def test_fingerprint_changes_with_labels(tmp_path):
    before = load(tmp_path).fingerprint()
    after = load(tmp_path, lambda d: d["task"].update(labels=["0", "1", "2"], metric="macro_f1"))
    assert after.fingerprint() != before


def test_fingerprint_ignores_splits_and_submission(tmp_path):
    before = load(tmp_path).fingerprint()

    def edit(d):
        d["splits"]["testB"] = "testB.csv"
        d["answers"] = {"testB": "testB_labels.csv"}
        d["submission"]["sample"] = "test.csv"
    assert load(tmp_path, edit).fingerprint() == before


def test_label_descriptions_join_the_instruction(tmp_path):
    write_toy_competition(tmp_path)
    path = write_spec(tmp_path, extra='')
    text = path.read_text().replace('max_length = 64', 'max_length = 64\nlabel_descriptions = { "1" = "about animals", '
                                    '"0" = "about anything else" }')
    path.write_text(text)
    spec = load_spec(path)
    assert spec.instruction.endswith("\n0: about anything else\n1: about animals")
    path.write_text(text.replace('"1" = "about animals"', '"2" = "x"'))
    with pytest.raises(KitError, match=r"label_descriptions: \['2'\] not in labels"):
        load_spec(path)
