"""Runs you can trust, round two: inputs that let a run learn the answer, train on nothing, read
nan as a setting, or report the wrong problem. Each test failed on the kit before this change."""
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import write_spec, write_toy_competition

from kit.commands.fit import cv, predict, train
from kit.commands.main import main
from kit.commands.options import FiniteFloat
from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.data import read_csv
from kit.inputs.spec import load_spec
from kit.inputs.sweep import OPTIONS, read_sweep, split_overrides


def kit(*args):
    """The CLI, run in the test's folder: files are named as a user there names them."""
    result = CliRunner().invoke(main, [a.name if isinstance(a, Path) else str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(*args):
    code, output = kit(*args)
    assert code == 2 and output.startswith("error: ") and output.count("\n") == 1, output
    assert "Traceback" not in output, output
    return output


def spec_error(path):
    """load_spec's one-line message for a spec in the current folder (named as the CLI names it)."""
    with pytest.raises(KitError) as info:
        load_spec(Path(path).name)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def add_columns(directory, file="train.csv", **columns):
    """Append columns to a CSV: name -> a function of the row's fields (a dict) giving the cell."""
    path = Path(directory) / file
    header, *rows = path.read_text().splitlines()
    names = header.split(",")
    out = [",".join([header, *columns])]
    for row in rows:
        fields = dict(zip(names, row.split(",")))
        out.append(",".join([row, *(make(fields) for make in columns.values())]))
    path.write_text("\n".join(out) + "\n")


def write_keywords(directory, target_input=None, columns_input="{text}"):
    """The toy competition plus a Keywords column predicted through [targets.Keywords]."""
    write_toy_competition(directory)
    add_columns(directory, Keywords=lambda f: f"word {f['id']}; other", kw=lambda f: f"word {f['id']}; other")
    extra = '[targets.Keywords]\nsource = "Keywords"\n' + (f'input = "{target_input}"\n' if target_input else "")
    return write_spec(directory, input=columns_input, columns='["id", "Keywords", "label"]', extra=extra)


# -- 8: the input must not contain the answer --------------------------------------------------------
def test_an_input_naming_the_label_column_is_refused(here):
    write_toy_competition(here)
    message = spec_error(write_spec(here, input="{text} {label}"))
    assert message == ("competition.toml [columns] input: template '{text} {label}' names the label column "
                       "'label'; the input must not contain the answer")


def test_an_input_column_identical_to_the_label_is_refused_where_train_is_read(here):
    spec_path = write_toy_competition(here)
    add_columns(here, answer=lambda f: f["label"])
    spec_path = write_spec(here, input="{text} {answer}")
    load_spec(spec_path)                       # the spec alone cannot know: the training rows tell
    message = one_line_error("check", "--spec", spec_path)
    assert message == ("error: competition.toml [columns] input: column 'answer' is identical to the answer column "
                       "'label' in train.csv; the input must not contain the answer\n")
    assert "identical to the answer column 'label'" in one_line_error("train", "--spec", spec_path, "--model", "tfidf")


def test_a_column_that_only_resembles_the_label_is_kept(here):
    write_toy_competition(here)
    for file in ("train.csv", "test.csv"):      # one training row differs from the label
        add_columns(here, file, flag=lambda f: "1" if f["id"] == "2" else f.get("label", "0"))
    assert kit("check", "--spec", write_spec(here, input="{text} {flag}"))[0] == 0


@pytest.mark.parametrize("target_input, columns_input, needle", [
    ("{text} {Keywords}", "{text}", "[targets.Keywords] input: template '{text} {Keywords}' names its source "
                                    "column 'Keywords'; the input must not contain the answer"),
    ("{text} {label}", "{text}", "[targets.Keywords] input: template '{text} {label}' names the label column 'label'"),
    (None, "{text} {Keywords}", "[targets.Keywords] input (the [columns] input): template '{text} {Keywords}' "
                                "names its source column 'Keywords'"),
])
def test_a_target_input_naming_its_source_or_the_label_is_refused(here, target_input, columns_input, needle):
    assert needle in spec_error(write_keywords(here, target_input, columns_input))


def test_a_target_input_column_identical_to_its_source_is_refused(here):
    spec_path = write_keywords(here, "{text} {kw}")
    assert ("competition.toml [targets.Keywords] input: column 'kw' is identical to the answer column 'Keywords' "
            "in train.csv") in one_line_error("check", "--spec", spec_path)


# -- 13: nan and inf are no setting; sweep values are checked like the command line -------------------
def float_options(command):
    return [p for p in command.params if isinstance(p.type, click.types.FloatParamType)]


def test_every_float_option_of_train_cv_and_predict_refuses_nan():
    for command in (train, cv, predict):
        for param in float_options(command):
            assert isinstance(param.type, FiniteFloat), f"{command.name} {param.opts[0]}"
            for value in ("nan", "inf"):
                with pytest.raises(click.BadParameter, match="is not a finite number"):
                    param.type.convert(value, param, None)
    assert {p.name for p in float_options(cv)} >= {"lr", "epochs", "pseudo_threshold", "holdout"}


@pytest.mark.parametrize("option", [p.opts[0] for p in float_options(train)])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_inf_are_refused_before_anything_runs(here, option, value):
    spec_path = write_toy_competition(here)
    code, output = kit("train", "--spec", spec_path, "--model", "tfidf", option, value)
    assert code == 2 and f"Invalid value for '{option}': '{value}' is not a finite number" in output, output
    assert not (here / "runs").exists()


def test_finite_floats_still_pass_and_ranges_still_hold(here):
    assert FiniteFloat(0, min_open=True).convert("3e-4", None, None) == 3e-4
    code, output = kit("train", "--spec", write_toy_competition(here), "--model", "tfidf", "--lr", "0")
    assert code == 2 and "0.0 is not in the range x>0" in output, output


def write_sweep(directory, body):
    path = Path(directory) / "sweep.toml"
    path.write_text(f'[[config]]\nname = "x"\nmodel = "tfidf"\n{body}\n')
    return path


@pytest.mark.parametrize("body, needle", [
    ("batch_size = 0", "batch_size = 0: must be an integer with x >= 1"),
    ('lr = "x"', "lr = 'x': must be a finite number with x > 0"),
    ("lr = nan", "lr = nan: must be a finite number with x > 0"),
    ("epochs = inf", "epochs = inf: must be a finite number with x > 0"),
    ("pseudo_threshold = nan", "pseudo_threshold = nan: must be a finite number with 0.5 <= x <= 1"),
    ("lora_dropout = 1.0", "lora_dropout = 1.0: must be a finite number with 0 <= x < 1"),
    ("warmup = 1.5", "warmup = 1.5: must be a finite number with 0 <= x <= 1"),
    ("max_length = 8", "max_length = 8: must be an integer with 16 <= x <= 131072"),
    ("lora_layers = -1", "lora_layers = -1: must be an integer with x >= 0 or 'auto'"),
    ("max_steps = 1.5", "max_steps = 1.5: must be an integer with x >= 0"),
    ("seed = true", "seed = True: must be an integer"),
    ("class_weights = 1", "class_weights = 1: must be true or false"),
    ("gradient_checkpointing = \"maybe\"", "gradient_checkpointing = 'maybe': must be true or false or 'auto'"),
    ('frozen_states = "fp8"', "frozen_states = 'fp8': choose one of fp16, fp32, int8"),
    ("lora_targets = [1]", "lora_targets = [1]: must be a list of module names"),
    ('instruction = " "', "instruction = ' ': must be a non-empty string"),
    ('label_words = { "0" = "same", "1" = "same" }', "label_words: two labels answer the same word"),
    ('pseudo_fingerprint = "0123"', "unknown option 'pseudo_fingerprint'"),
])
def test_a_sweep_value_is_type_and_range_checked(here, body, needle):
    spec_path = write_toy_competition(here)
    message = one_line_error("cv", "--spec", spec_path, "--sweep", write_sweep(here, body), "--holdout", "0.5")
    assert message.startswith("error: sweep.toml [[config]] x: ") and needle in message, message
    assert not (here / "runs").exists()


def test_sweep_ranges_agree_with_the_command_line():
    params = {p.name: p for p in cv.params}
    compared = 0
    for key, rule in OPTIONS.items():
        param = params.get(key)
        if param is None:
            continue
        kind = param.type
        if isinstance(kind, click.Choice):
            assert tuple(kind.choices) == rule.choices, key
        elif isinstance(kind, (click.IntRange, click.FloatRange)):
            assert rule.kind is (int if isinstance(kind, click.IntRange) else float), key
            assert (kind.min, kind.max, kind.min_open, kind.max_open) == (
                rule.low, rule.high, rule.low_open, rule.high_open), key
        elif kind.name == "INTEGER|auto":
            assert (rule.kind, rule.low, rule.choices) == (int, 0, ("auto",)), key
        else:
            continue
        compared += 1
    assert compared >= 20


def test_a_good_sweep_entry_is_taken_as_the_command_line_takes_it(here):
    spec = load_spec(write_toy_competition(here))
    entry = {"name": "x", "epochs": 2, "lora_targets": "q_proj, v_proj", "lora_layers": "auto",
             "gradient_checkpointing": True, "head": "generate", "label_words": {"0": "no", "1": "yes"}}
    spec, model, train_args = split_overrides(entry, spec, ModelArgs(), TrainArgs(), "sweep.toml [[config]] x")
    assert train_args.epochs == 2.0 and isinstance(train_args.epochs, float)
    assert model.lora_targets == ["q_proj", "v_proj"] and model.lora_layers == "auto" and model.head == "generate"
    assert spec.label_words == {"0": "no", "1": "yes"}


@pytest.mark.parametrize("body, needle", [
    ('[[config]]\nname = "a/b"\n', "name 'a/b' must be letters"),
    ('[[config]]\nname = "a"\n[[config]]\nname = "a"\n', "name 'a' is used twice"),
    ('[config]\nname = "a"\n', "no [[config]] tables"),
])
def test_sweep_entry_names_name_run_folders(here, body, needle):
    (here / "sweep.toml").write_text(body)
    with pytest.raises(KitError, match=re.escape(needle)):
        read_sweep(here / "sweep.toml")


# -- 14: a template that is empty in every training row ----------------------------------------------
def test_a_template_empty_in_every_training_row_is_refused_by_check_and_train(here):
    write_toy_competition(here)
    add_columns(here, notes=lambda f: " ")
    spec_path = write_spec(here, input="notes: {notes}")
    expected = ("error: competition.toml [columns] input: template 'notes: {notes}' is empty in every row of train.csv "
                "(columns ['notes']); name a column that holds the text\n")
    assert one_line_error("check", "--spec", spec_path) == expected
    assert one_line_error("train", "--spec", spec_path, "--model", "tfidf") == expected
    assert one_line_error("cv", "--spec", spec_path, "--model", "tfidf", "--holdout", "0.5") == expected


def test_a_template_empty_in_some_rows_still_trains(here):
    write_toy_competition(here)
    for file in ("train.csv", "test.csv"):
        add_columns(here, file, notes=lambda f: "a note" if f["id"] == "0" else "")
    code, output = kit("check", "--spec", write_spec(here, input="{notes}"))
    assert code == 0, output


def test_a_target_input_empty_in_every_training_row_is_refused(here):
    spec_path = write_keywords(here, "{notes}")
    add_columns(here, notes=lambda f: "")
    assert "competition.toml [targets.Keywords] input: template '{notes}' is empty in every row of train.csv" in (
        one_line_error("check", "--spec", spec_path))


# -- 15: a byte-order mark ---------------------------------------------------------------------------
def test_a_spec_and_a_sweep_saved_with_a_byte_order_mark_are_read(here):
    spec_path = write_toy_competition(here)
    spec_path.write_bytes(b"\xef\xbb\xbf" + spec_path.read_bytes())
    assert load_spec(spec_path).name == "toy"
    sweep = write_sweep(here, "lr = 3e-4")
    sweep.write_bytes(b"\xef\xbb\xbf" + sweep.read_bytes())
    assert read_sweep(sweep)[0]["lr"] == 3e-4
    assert kit("check", "--spec", spec_path)[0] == 0


def test_a_sweep_that_is_not_utf8_is_one_line(here):
    (here / "sweep.toml").write_bytes(b'[[config]]\nname = "caf\xe9"\n')
    with pytest.raises(KitError, match="sweep.toml: not valid TOML"):
        read_sweep(here / "sweep.toml")


# -- 16: say what the problem is ---------------------------------------------------------------------
def test_id_and_label_the_same_column_is_said_as_such(here):
    spec_path = write_toy_competition(here)
    spec_path.write_text(spec_path.read_text().replace('id = "id"', 'id = "label"'))
    assert spec_error(spec_path) == "competition.toml [columns] id and label are the same column 'label'"


@pytest.mark.parametrize("edit, needle", [
    (dict(train="folder"), "competition.toml train: 'folder' is a directory; name a CSV file"),
    (dict(splits='test = "folder"'), "competition.toml [splits] test: 'folder' is a directory; name a CSV file"),
    (dict(splits='test = "test.csv"\n[answers]\ntest = "folder"'),
     "competition.toml [answers] test: 'folder' is a directory; name a CSV file"),
    (dict(sample='sample = "folder"'), "competition.toml [submission] sample: 'folder' is a directory"),
])
def test_a_directory_given_as_a_file_is_said_to_be_a_directory(here, edit, needle):
    write_toy_competition(here)
    (here / "folder").mkdir()
    assert spec_error(write_spec(here, **edit)).startswith(needle)


def test_reading_a_directory_as_a_csv_says_so(here):
    (here / "folder").mkdir()
    with pytest.raises(KitError, match=r"^folder: is a directory, not a CSV file$"):
        read_csv("folder")
