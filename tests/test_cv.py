"""Cross-validation: fold assignment, metrics against scikit-learn, threshold tuning, resume,
determinism, and the score command's errors."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn import metrics as sk

from kit.commands.main import main
from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.evaluation.folds import assign_folds
from kit.evaluation.metrics import metric_value, report, tune_threshold
from kit.inputs.spec import load_spec
from kit.workflows import cv as kit_cv


def test_folds_are_stratified_and_cover_every_row_once():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    fold = assign_folds(labels, folds=5, seed=3)
    assert sorted(set(fold)) == [0, 1, 2, 3, 4] and len(fold) == len(labels)
    for number in range(5):
        counts = np.bincount(labels[fold == number], minlength=3)
        assert counts.tolist() == [12, 6, 2]
    assert (assign_folds(labels, 5, 3) == fold).all()          # same seed, same folds
    assert (assign_folds(labels, 5, 4) != fold).any()


def test_holdout_is_one_stratified_part():
    labels = np.array([0] * 80 + [1] * 20)
    fold = assign_folds(labels, holdout=0.2, seed=0)
    assert (fold == 0).sum() == 20 and set(fold) == {-1, 0}
    assert np.bincount(labels[fold == 0]).tolist() == [16, 4]


def test_too_many_folds_for_the_rarest_label():
    with pytest.raises(KitError, match="rarest label has only 2 rows"):
        assign_folds(np.array([0] * 10 + [1] * 2), folds=5)


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    probs = rng.dirichlet([1, 1, 1], 200)
    predicted = probs.argmax(1)
    result = report(truth, probs, ["a", "b", "c"], "macro_f1")
    assert result["macro_f1"] == pytest.approx(sk.f1_score(truth, predicted, average="macro"))
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert result["confusion"] == sk.confusion_matrix(truth, predicted).tolist()
    binary = rng.integers(0, 2, 200)
    p = rng.random(200)
    two = np.stack([1 - p, p], 1)
    assert metric_value("f1", binary, (p >= 0.5).astype(int)) == pytest.approx(sk.f1_score(binary, p >= 0.5))
    assert report(binary, two, ["0", "1"], "f1")["auc"] == pytest.approx(sk.roc_auc_score(binary, p))


def test_threshold_tuning_on_a_toy_case():
    truth = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.45])       # all positives below 0.5, above 0.3
    threshold, score = tune_threshold(truth, p)
    assert 0.3 < threshold <= 0.35 and score == 1.0
    assert tune_threshold(truth, np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8]))[0] == 0.5   # 0.5 already best


def _cv(spec_path, tmp_path, **kwargs):
    return kit_cv.cross_validate(load_spec(spec_path), ModelArgs(model="tfidf"), TrainArgs(), folds=3,
                                 runs=tmp_path / "runs", **kwargs)


def _run_dir(root):
    """The one run folder under root/runs (its name ends with the settings key)."""
    (directory,) = [p for p in (root / "runs").iterdir() if p.is_dir()]
    return directory


def test_cv_writes_oof_and_scores(tmp_path, toy):
    scores = _cv(toy, tmp_path)
    oof = (_run_dir(tmp_path) / "oof.csv").read_text().splitlines()
    assert oof[0] == "id,true,pred,p_0,p_1,decided,fold" and len(oof) == 25
    saved = json.loads((_run_dir(tmp_path) / "cv_scores.json").read_text())
    assert saved["f1"] == scores["f1"] and len(saved["per_fold"]) == 3 and "tuned_threshold" in saved


def test_cv_is_deterministic(tmp_path, toy):
    _cv(toy, tmp_path / "a")
    _cv(toy, tmp_path / "b")
    read = lambda root: (_run_dir(root) / "oof.csv").read_bytes()   # noqa: E731
    assert read(tmp_path / "a") == read(tmp_path / "b")


def test_cv_resumes_finished_folds(tmp_path, toy, monkeypatch):
    calls = []
    real = kit_cv.make_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(kit_cv, "make_model", counting)
    first = _cv(toy, tmp_path)
    assert len(calls) == 4                  # one to tokenise + one per fold
    (_run_dir(tmp_path) / "cv" / "fold-2.json").unlink()   # as if killed in fold 3
    calls.clear()
    second = _cv(toy, tmp_path)
    assert len(calls) == 2                  # only fold 3 is fitted again
    assert second["f1"] == first["f1"]


def test_cv_command_prints_the_baseline_comparison(tmp_path, toy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["cv", "--spec", str(toy), "--model", "tfidf", "--folds", "3"])
    assert result.exit_code == 0, result.output
    assert "| toy-tfidf-" in result.output and "confusion" in result.output


# -- kit score ----------------------------------------------------------------------------------
def _score(toy, pred, truth):
    return CliRunner().invoke(main, ["score", "--spec", str(toy), "--pred", str(pred), "--truth", str(truth)])


def test_score_a_submission(tmp_path, toy):
    (tmp_path / "truth.csv").write_text("id,label\n1,1\n2,0\n3,1\n")
    (tmp_path / "pred.csv").write_text("id,label\n3,1\n1,1\n2,1\n")
    result = _score(toy, tmp_path / "pred.csv", tmp_path / "truth.csv")
    assert result.exit_code == 0, result.output
    assert "f1: 0.8000   accuracy: 0.6667" in result.output


@pytest.mark.parametrize("pred, message", [
    ("id,label\n1,1\n2,0\n", "1 missing (e.g. ['3'])"),
    ("id,label\n1,1\n2,0\n3,1\n9,0\n", "1 unknown (e.g. ['9'])"),
    ("id,label\n1,1\n2,7\n3,1\n", "row 3: label '7'"),
    ("name,value\n1,1\n", "needs an id column and a label column"),
    ("id,label\n1,1\n1,0\n3,1\n", "duplicate ids"),
])
def test_score_errors(tmp_path, toy, pred, message):
    (tmp_path / "truth.csv").write_text("id,label\n1,1\n2,0\n3,1\n")
    (tmp_path / "pred.csv").write_text(pred)
    result = _score(toy, tmp_path / "pred.csv", tmp_path / "truth.csv")
    assert result.exit_code == 2 and message in result.output, result.output


def test_score_needs_exactly_one_truth(tmp_path, toy):
    (tmp_path / "pred.csv").write_text("id,label\n1,1\n")
    result = CliRunner().invoke(main, ["score", "--spec", str(toy), "--pred", str(tmp_path / "pred.csv")])
    assert result.exit_code == 2 and "exactly one of --split" in result.output
