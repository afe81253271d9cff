"""Malformed inputs: every case gives a one-line error (exit 2) naming the file/key/row, or the
documented handling. Each fixture is written by the test itself."""
import pytest
from click.testing import CliRunner
from conftest import SHARED, write_spec, write_toy_competition

from kit.commands.main import main
from kit.core.errors import KitError
from kit.inputs.data import id_key, load_rows, read_csv
from kit.inputs.spec import load_spec


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


def test_float_ids_are_kept_as_written(tmp_path):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n1.0,a cat,1\n2.0,a car,0\n"))
    assert rows.ids == ["1.0", "2.0"]


def test_id_key_equates_integer_valued_floats():
    assert id_key("12.0") == id_key("12.00") == id_key(" 12 ") == "12" and id_key("-3.0") == "-3"
    assert id_key("12.5") == "12.5" and id_key("007") == "007" and id_key("A-2") == "A-2"


def test_float_and_integer_forms_of_an_id_are_duplicates(tmp_path):
    spec = _toy_with(tmp_path, "id,text,label\n3,a,1\n4,b,0\n3.0,c,0\n")
    with pytest.raises(KitError, match=r"train.csv: duplicate ids in 'id': 3 \(row 2\) and 3.0 \(row 4\)$"):
        load_rows(spec)


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


def test_empty_text_in_test_still_predicted(tmp_path, caplog):
    spec_path = write_toy_competition(tmp_path)
    (tmp_path / "test.csv").write_text("id,text\n1,a cat\n2,\n3,a car\n")
    rows, _ = load_rows(load_spec(spec_path), "test")
    assert len(rows) == 3 and rows.texts[1] == ""
    assert "1 row(s) have empty input fields; they still get a prediction" in caplog.text


def test_empty_text_in_train_is_reported(tmp_path, caplog):
    rows, _ = load_rows(_toy_with(tmp_path, "id,text,label\n1,,1\n2,b,0\n"))
    assert len(rows) == 2
    assert "1 row(s) have empty input fields" in caplog.text


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
    with pytest.raises(KitError, match="x.csv: line 1 is not valid UTF-8, and the file is not cleanly "
                                       "GBK/GB18030 or Windows-1252; save it as UTF-8"):
        read_csv(tmp_path / "x.csv")


# -- CSV shape: every record has the header's fields, names are unique ----------------------
@pytest.mark.parametrize("train, message", [
    ("id,text,label\n1,a,1\n2,b,x,0\n", "train.csv: line 3 has 4 fields, the header has 3"),
    ("id,text,label\n1,a,1\n2,b\n", "train.csv: line 3 has 2 fields, the header has 3"),
    ('id,text,label\n1,"two\nlines",1\n2,b,x,0\n', "train.csv: line 4 has 4 fields, the header has 3"),
    ("id,text,text ,label\n1,a,b,1\n", "train.csv: line 1: column 'text' appears twice in the header "
                                         "(columns 2 and 3)"),
    ("\ufeffid,text,,label\n1,a,b,1\n", "train.csv: line 1: header column 3 has no name"),
    ('id,text,label\n1,a,1\n2,"b,0\n3,c,1\n4,d,0\n', "train.csv: line 3: a quote opens and never closes"),
])
def test_malformed_csv_names_the_line(tmp_path, train, message):
    write_toy_competition(tmp_path)
    (tmp_path / "train.csv").write_text(train)
    output = expect_error(write_spec(tmp_path), message)
    assert output.endswith(message)


def test_extra_field_does_not_shift_ids_into_texts(tmp_path):
    # pandas would make the first column the index: ids would become the texts
    spec = _toy_with(tmp_path, "id,text,label\n1,a cat,1,extra\n2,a car,0,extra\n")
    with pytest.raises(KitError, match="line 2 has 4 fields, the header has 3"):
        load_rows(spec)


def test_blank_lines_and_empty_cells(tmp_path):
    # (one row has text: a template empty in every training row is refused, tests/test_trust_inputs.py)
    rows, frame = load_rows(_toy_with(tmp_path, 'id,text,label\n1,,1\n\n2,"",0\n\n\n3,a cat,1\n'))
    assert rows.ids == ["1", "2", "3"] and rows.texts == ["", "", "a cat"] and frame["text"].tolist()[:2] == ["", ""]


# -- encodings: chosen by evidence, one per file --------------------------------------------
def test_latin1_file_is_read_as_windows_1252(tmp_path):
    spec = _toy_with(tmp_path, "id,text,label\n1,Müller,1\n2,café naïve,0\n", encoding="latin-1")
    rows, frame = load_rows(spec)
    assert rows.texts == ["Müller", "café naïve"] and frame.attrs["encoding"] == "cp1252"


def test_gbk_text_reports_its_encoding(tmp_path):
    frame = load_rows(_toy_with(tmp_path, "id,text,label\n1,北京是首都,1\n2,朱镕基,0\n", encoding="gbk"))[1]
    assert frame["text"].tolist() == ["北京是首都", "朱镕基"] and frame.attrs["encoding"] == "gb18030"


@pytest.mark.skipif(not (SHARED / "paper" / "testB.csv").exists(), reason="shared data not present")
def test_gb18030_copy_of_real_data_reads_the_same(tmp_path):
    original = SHARED / "paper" / "testB.csv"
    (tmp_path / "gb.csv").write_bytes(original.read_text(encoding="utf-8").encode("gb18030"))
    gb = read_csv(tmp_path / "gb.csv")
    assert gb.attrs["encoding"] == "gb18030" and gb.equals(read_csv(original))


@pytest.mark.parametrize("data", [
    "id,text,label\n1,猫在睡觉,1\n".encode() + "2,股票下跌,0\n".encode("gbk"),
    "id,text,label\n1,Müller,1\n".encode() + "2,café,0\n".encode("latin-1"),
])
def test_a_file_mixing_encodings_is_refused(tmp_path, data):
    write_toy_competition(tmp_path)
    (tmp_path / "train.csv").write_bytes(data)
    expect_error(write_spec(tmp_path), "train.csv: line 3 is not valid UTF-8, and the file is not cleanly "
                 "GBK/GB18030 or Windows-1252; save it as UTF-8")


def test_check_prints_encodings_and_warns_when_they_differ(tmp_path):
    spec = write_toy_competition(tmp_path, test_rows=2)
    (tmp_path / "test.csv").write_bytes("id,text\n100,Müller\n101,café\n".encode("latin-1"))
    code, output = run("check", "--spec", spec)
    assert code == 0, output
    assert "train.csv: 24 rows (utf-8), labels" in output and "test.csv: 2 rows (cp1252)" in output
    assert "warning: train is utf-8 but split test is cp1252" in output


# -- labels and templates ---------------------------------------------------------------------
def test_one_label_in_train_is_an_error(tmp_path):
    write_toy_competition(tmp_path)
    (tmp_path / "train.csv").write_text("id,text,label\n" + "".join(f"{i},t{i},1\n" for i in range(24)))
    expect_error(write_spec(tmp_path), "train.csv: column 'label' has only one label ('1') in 24 rows; "
                 "training needs at least two")


def test_template_columns_with_spaces_hyphens_and_dots(tmp_path):
    # str.format_map would read {v1.2} as attribute 2 of column v1
    write_toy_competition(tmp_path)
    (tmp_path / "train.csv").write_text("id,my col,sub-title,v1.2,label\n1,a cat,pets,x,1\n2,a car,{x},y,0\n")
    rows, _ = load_rows(load_spec(write_spec(tmp_path, input="{my col} / {sub-title} ({v1.2})")))
    assert rows.texts == ["a cat / pets (x)", "a car / {x} (y)"]
