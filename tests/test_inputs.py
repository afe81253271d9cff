"""Malformed inputs: every case gives a one-line error (exit 2) naming the file/key/row, or the
documented handling. Each fixture is written by the test itself."""
import pytest
from click.testing import CliRunner

from conftest import write_spec, write_toy_competition
from kit.cli import main
from kit.data import load_rows, read_csv
from kit.errors import KitError
from kit.spec import load_spec


def run(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    return result.exit_code, result.output.strip()


def expect_error(spec_path, *needles, command="check"):
    code, output = run(command, "--spec", spec_path)
    assert code == 2, output
    assert output.startswith("error: ") and "\n" not in output and "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output
    return output


# -- spec errors ------------------------------------------------------------------------------
def test_missing_spec_file(tmp_path):
    expect_error(tmp_path / "nope.toml", "spec file not found", "nope.toml")


def test_bad_toml(tmp_path):
    path = tmp_path / "competition.toml"
    path.write_text("name = [unclosed\n")
    expect_error(path, "not valid TOML", "competition.toml")


def test_unknown_template_column(tmp_path):
    write_toy_competition(tmp_path)
    expect_error(write_spec(tmp_path, input="{title}: {text}"), "missing column 'title'", "train.csv",
                 "input template")


def test_missing_train_file(tmp_path):
    write_toy_competition(tmp_path)
    expect_error(write_spec(tmp_path, train="nowhere.csv"), "file not found", "nowhere.csv")


def test_unknown_split(tmp_path):
    spec = write_toy_competition(tmp_path)
    code, output = run("predict", "--spec", spec, "--split", "testB")
    assert code == 2 and "unknown split 'testB'" in output and "competition.toml" in output, output


def test_empty_label_set(tmp_path):
    write_toy_competition(tmp_path)
    expect_error(write_spec(tmp_path, labels="[]"), "[task]", "labels", "at least two")


def test_submission_column_nothing_fills(tmp_path):
    write_toy_competition(tmp_path)
    expect_error(write_spec(tmp_path, columns='["id", "Keywords", "label"]'),
                 "[submission] column 'Keywords'", "nothing fills it")


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "check", "--spec", str(tmp_path / "nope.toml")])
    assert isinstance(result.exception, KitError)


# -- CSV reading ------------------------------------------------------------------------------
def _toy_with(tmp_path, train_text, encoding="utf-8", bom=False):
    write_toy_competition(tmp_path)
    data = train_text.encode(encoding)
    (tmp_path / "train.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return load_spec(write_spec(tmp_path))


def test_bom_header_is_read(tmp_path):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n1,a cat,1\n2,a car,0\n", bom=True))
    assert rows.ids == ["1", "2"] and rows.labels == [1, 0]


def test_gbk_file_is_read(tmp_path):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n1,猫在睡觉,1\n2,股票下跌,0\n", encoding="gbk"))
    assert rows.texts == ["猫在睡觉", "股票下跌"]


def test_gbk_file_with_a_bom(tmp_path):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n1,猫,1\n2,车,0\n", encoding="gbk", bom=True))
    assert rows.ids == ["1", "2"] and rows.texts == ["猫", "车"]


def test_float_ids_become_integers(tmp_path):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n1.0,a cat,1\n2.0,a car,0\n"))
    assert rows.ids == ["1", "2"]


def test_ids_kept_exactly_as_text(tmp_path):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n007,a cat,1\nA-2,a car,0\n"))
    assert rows.ids == ["007", "A-2"]


def test_label_forms_are_one_label(tmp_path):
    rows, _ = load_rows(_toy_with(tmp_path, 'id,text,label\n1,a,1\n2,b,1.0\n3,c,"1"\n4,d, 0\n5,e,0.0\n'))
    assert rows.labels == [1, 1, 1, 0, 0]


def test_label_outside_the_set_names_the_row(tmp_path):
    spec = _toy_with(tmp_path, "id,text,label\n1,a,1\n2,b,2\n")
    with pytest.raises(KitError, match=r"row 3: label '2' in column 'label' is not one of"):
        load_rows(spec)


def test_duplicate_ids_are_named(tmp_path):
    spec = _toy_with(tmp_path, "id,text,label\n1,a,1\n2,b,0\n1,c,0\n")
    with pytest.raises(KitError, match=r"duplicate ids in 'id': 1"):
        load_rows(spec)


def test_empty_id_is_an_error(tmp_path):
    spec = _toy_with(tmp_path, "id,text,label\n1,a,1\n,b,0\n")
    with pytest.raises(KitError, match=r"empty id .* row 3"):
        load_rows(spec)


def test_empty_text_in_test_still_predicted(tmp_path, capsys):
    spec_path = write_toy_competition(tmp_path)
    (tmp_path / "test.csv").write_text("id,text\n1,a cat\n2,\n3,a car\n")
    rows, _ = load_rows(load_spec(spec_path), "test")
    assert len(rows) == 3 and rows.texts[1] == ""
    assert "1 row(s) have empty input fields; they still get a prediction" in capsys.readouterr().err


def test_empty_text_in_train_is_reported(tmp_path, capsys):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n1,,1\n2,b,0\n"))
    assert len(rows) == 2
    assert "1 row(s) have empty input fields" in capsys.readouterr().err


def test_empty_file(tmp_path):
    (tmp_path / "x.csv").write_text("")
    with pytest.raises(KitError, match="x.csv: the file is empty"):
        read_csv(tmp_path / "x.csv")


def test_header_only(tmp_path):
    (tmp_path / "x.csv").write_text("id,text\n")
    with pytest.raises(KitError, match="x.csv: no rows under the header"):
        read_csv(tmp_path / "x.csv")


def test_binary_garbage(tmp_path):
    (tmp_path / "x.csv").write_bytes(b"\xff\xfe\x00\x81\x00\xff" * 10)
    with pytest.raises(KitError, match="not UTF-8 or GBK"):
        read_csv(tmp_path / "x.csv")
