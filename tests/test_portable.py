"""Runs are found by what they are (spec name and version, training file), not by where the spec
file was: a run folder copied to another checkout predicts there with no extra flag."""
import shutil
from pathlib import Path

from click.testing import CliRunner
from conftest import write_toy_competition

from kit.commands.main import main


def kit(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def trained_checkout(here, monkeypatch):
    """A toy competition in `here` with a TF-IDF run trained in its runs/ (the working folder)."""
    here.mkdir()
    write_toy_competition(here)
    monkeypatch.chdir(here)
    assert kit("train", "--spec", "competition.toml", "--model", "tfidf")[0] == 0


def test_a_run_copied_to_another_checkout_predicts_there(tmp_path, monkeypatch):
    here, there = tmp_path / "laptop", tmp_path / "gpu-box"
    trained_checkout(here, monkeypatch)
    assert kit("predict", "--spec", "competition.toml", "--out", "mine.csv")[0] == 0
    shutil.copytree(here, there)                 # the whole checkout, runs/ included, elsewhere
    monkeypatch.chdir(there)
    code, output = kit("predict", "--spec", "competition.toml", "--out", "theirs.csv")
    assert code == 0, output
    assert (there / "theirs.csv").read_text() == (here / "mine.csv").read_text()


def test_a_copied_run_of_another_spec_version_is_not_taken(tmp_path, monkeypatch):
    here, there = tmp_path / "a", tmp_path / "b"
    trained_checkout(here, monkeypatch)
    shutil.copytree(here, there)
    spec = there / "competition.toml"
    spec.write_text(spec.read_text().replace("Is the text about animals?", "Is it about animals?"))
    monkeypatch.chdir(there)
    code, output = kit("predict", "--spec", "competition.toml", "--out", "theirs.csv")
    assert code == 2 and "no trained run of competition.toml" in output


def test_a_keyword_run_named_where_a_label_run_is_wanted_says_so(tmp_path, monkeypatch):
    spec = Path(__file__).resolve().parent.parent / "data" / "competition.toml"
    monkeypatch.chdir(tmp_path)
    assert kit("train", "--spec", spec, "--target", "Keywords")[0] == 0          # the TF-IDF extractor: seconds
    (run,) = [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith("paper-medical.Keywords")]
    for verb in (["export", "--out", "exported"], ["predict", "--out", "sub.csv"], ["serve", "--port", "0"]):
        code, output = kit(verb[0], "--spec", spec, "--run", run, *verb[1:])
        assert code == 2 and f"run {run} predicts the Keywords column ([targets.Keywords]), not the label" in output


def test_every_verb_that_reads_runs_takes_the_same_runs_dir(tmp_path, monkeypatch):
    write_toy_competition(tmp_path)
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "shared" / "runs"
    spec = ["--spec", "competition.toml", "--runs-dir", elsewhere]
    for args in (["cv", *spec, "--model", "tfidf", "--folds", "3", "--name", "a"],
                 ["cv", *spec, "--model", "tfidf", "--folds", "3", "--name", "b", "--seed", "1", "--no-baseline"],
                 ["train", *spec, "--model", "tfidf", "--name", "a"],
                 ["train", *spec, "--model", "tfidf", "--name", "b", "--seed", "1"],
                 ["predict", *spec, "--run", "a", "--out", "a.csv"],
                 ["predict", *spec, "--run", "b", "--out", "b.csv"],
                 ["blend", "a", "b", *spec, "--split", "test", "--out", "blend.csv"],
                 ["blend", "--run", "a", "--run", "b", *spec, "--name", "by-option"],      # --run, as elsewhere
                 ["report", "--run", "a", "--runs-dir", elsewhere, "--out", "report.html"],
                 ["runs", "--runs-dir", elsewhere]):
        code, output = kit(*args)
        assert code == 0, (args, output)
    assert not (tmp_path / "runs").exists()                # nothing went to ./runs
    assert {"a", "b"} <= {p.name for p in elsewhere.iterdir()}
    for verb in ("serve", "export"):
        code, output = kit(verb, "--help")
        assert "--runs-dir" in output
