"""Submission checks: columns, ids, order, NaN, labels, the sample; atomic writes."""
import os

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_spec, write_toy_competition

from kit.commands.main import main
from kit.core.errors import KitError
from kit.inputs import submit
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec


@pytest.fixture
def spec(tmp_path):
    write_toy_competition(tmp_path, test_rows=3)
    return load_spec(write_spec(tmp_path))


IDS = ["100", "101", "102"]


def frame(ids=IDS, labels=("0", "1", "0")):
    return pd.DataFrame({"id": list(ids), "label": list(labels)})


def test_valid_submission_passes(spec):
    submit.validate(spec, frame(), IDS, "test")


@pytest.mark.parametrize("bad, message", [
    (frame()[["label", "id"]], "columns"),
    (frame(IDS[:2], ("0", "1")), "2 rows, the split has 3"),
    (frame(["100", "101", "999"]), "missing ['102']; unknown ['999']"),
    (frame(["101", "100", "102"]), "same ids, other order"),
    (frame(labels=("0", None, "1")), "empty values in column 'label'"),
    (frame(labels=("0", "2", "1")), "row 3: label '2' is not one of"),
])
def test_invalid_submissions(spec, bad, message):
    with pytest.raises(KitError) as error:
        submit.validate(spec, bad, IDS, "test")
    assert message in str(error.value)


def test_sample_with_other_ids_is_caught(tmp_path):
    write_toy_competition(tmp_path, test_rows=3)
    (tmp_path / "sample.csv").write_text("id,label\n100,0\n101,0\n555,0\n")
    spec = load_spec(write_spec(tmp_path, sample='sample = "sample.csv"'))
    with pytest.raises(KitError, match=r"sample.csv: ids differ from the split's; the sample lacks \['102'\]; "
                                       r"the split lacks \['555'\]$"):
        submit.validate(spec, frame(), IDS, "test")
    submit.validate(spec, frame(), IDS, "testB")   # the sample lists test's ids, not testB's


def test_fill_columns(tmp_path):
    write_toy_competition(tmp_path, test_rows=3)
    spec = load_spec(write_spec(tmp_path, columns='["id", "Keywords", "label"]',
                                extra='[submission.fill]\nKeywords = "kw:{text}"\n'))
    test = pd.DataFrame({"id": IDS, "text": ["a", "b", "c"]})
    built = submit.build(spec, test, IDS, {"label": ["0", "1", "0"]})
    assert list(built.columns) == ["id", "Keywords", "label"]
    assert built["Keywords"].tolist() == ["kw:a", "kw:b", "kw:c"]


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "submit.csv"
    target.write_text("old\n")

    class Boom(pd.DataFrame):
        def to_csv(self, path, **kwargs):
            open(path, "w").write("half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        submit.write(Boom(frame()), target)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["submit.csv"]     # no temporary file left behind


def test_check_command_validates_a_submission(tmp_path):
    spec = write_toy_competition(tmp_path, test_rows=3)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("id,label\n100.0,0\n101.0,1\n102.0,0\n")     # compared by id_key: 100.0 is 100
    bad.write_text("id,label\n100,0\n101,1\n")
    ok = CliRunner().invoke(main, ["check", "--spec", str(spec), "--submission", str(good)])
    assert ok.exit_code == 0 and "valid for split test (3 rows)" in ok.output
    fail = CliRunner().invoke(main, ["check", "--spec", str(spec), "--submission", str(bad)])
    assert fail.exit_code == 2 and "2 rows, the split has 3" in fail.output


# -- ids: written as the sample (or the split) writes them, compared by id_key ----------------
def test_ids_compare_by_key_in_order(spec):
    submit.validate(spec, frame(["100.0", "101", "102.00"]), IDS, "test")
    with pytest.raises(KitError, match=r"submission: ids differ from the split's: same ids, other order "
                                       r"\(row 2 is '101.0', the split's row 2 is '100'\)$"):
        submit.validate(spec, frame(["101.0", "100", "102"]), IDS, "test")


def test_check_accepts_ids_mixing_float_and_other_forms(tmp_path):
    spec = write_toy_competition(tmp_path, test_rows=3)
    (tmp_path / "test.csv").write_text("id,text\n3.0,a cat\nA7,a car\n5,a dog\n")
    (tmp_path / "sub.csv").write_text("id,label\n3.0,0\nA7,1\n5,0\n")
    result = CliRunner().invoke(main, ["check", "--spec", str(spec), "--submission", str(tmp_path / "sub.csv")])
    assert result.exit_code == 0 and "valid for split test (3 rows)" in result.output, result.output


@pytest.mark.parametrize("test_ids, sample_ids, written", [
    (["100", "101", "102"], ["100.0", "101.0", "102.0"], ["100.0", "101.0", "102.0"]),   # the sample's form
    (["1.0", "2.0", "3.0"], ["1.0", "2.0", "3.0"], ["1.0", "2.0", "3.0"]),               # kept, not 1
    (["1.0", "2.0", "3.0"], None, ["1.0", "2.0", "3.0"]),                                # the split's form
])
def test_submission_writes_ids_in_the_sample_form(tmp_path, test_ids, sample_ids, written):
    write_toy_competition(tmp_path, test_rows=3)
    (tmp_path / "test.csv").write_text("id,text\n" + "".join(f"{i},t\n" for i in test_ids))
    if sample_ids:
        (tmp_path / "sample.csv").write_text("id,label\n" + "".join(f"{i},0\n" for i in sample_ids))
    spec = load_spec(write_spec(tmp_path, sample='sample = "sample.csv"' if sample_ids else ""))
    rows, test = load_rows(spec, "test")
    built = submit.build(spec, test, rows.ids, {"label": ["0", "1", "0"]})
    assert built["id"].tolist() == written
    submit.validate(spec, built, rows.ids, "test")


def test_sample_in_another_order_is_caught(tmp_path):
    write_toy_competition(tmp_path, test_rows=3)
    (tmp_path / "sample.csv").write_text("id,label\n101,0\n100,0\n102,0\n")
    spec = load_spec(write_spec(tmp_path, sample='sample = "sample.csv"'))
    with pytest.raises(KitError, match=r"sample.csv: ids differ from the split's: same ids, other order"):
        submit.validate(spec, frame(), IDS, "test")
