"""`kit auto`: the roads that fit a budget, on the same folds, scored out of fold as whole procedures."""
import json

import numpy as np
import pandas as pd
import pytest
from cli import ok, one_line_error
from sklearn.metrics import f1_score

from kit.core.errors import KitError
from kit.core.settings import TrainArgs
from kit.evaluation.blending import nested_blend
from kit.evaluation.metrics import tune_threshold
from kit.inputs.spec import load_spec
from kit.workflows.auto import RATES_FILE, Road, blend_name, choose, minilm_recipe, parse_budget, token_epochs


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("90s", 90), ("1.5", 90), (" 10 min ", 600)])
def test_a_budget_reads_as_seconds(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0m", "-5m", "3d", ""])
def test_a_bad_budget_is_refused(text):
    with pytest.raises(KitError, match="--budget"):
        parse_budget(text)


def test_the_minilm_recipe_follows_the_texts_length():
    assert minilm_recipe(np.full(100, 40)) == (128, 2.0)               # tweets
    assert minilm_recipe(np.r_[np.full(85, 100), np.full(15, 400)]) == (256, 3.0)   # a long tail: abstracts


def test_token_epochs_count_every_folds_fit():
    lengths = np.array([10, 20, 300])
    road = Road("minilm", "m", "", None, TrainArgs(epochs=2), max_length=128)
    assert token_epochs(road, lengths, 5, None) == pytest.approx(3 * 4 * 2 * (10 + 20 + 128) / 3)
    assert token_epochs(road, lengths, 5, 0.2) == pytest.approx(3 * 0.8 * 2 * (10 + 20 + 128) / 3)
    tfidf = Road("tfidf", "t", "", None, TrainArgs(epochs=2), max_length=128)      # every token, once a fit
    assert token_epochs(tfidf, lengths, 5, None) == pytest.approx(3 * 4 * (10 + 20 + 300) / 3)
    llm = Road("llm", "l", "", None, TrainArgs(epochs=1), max_length=64, scale=2.0)
    assert token_epochs(llm, lengths, 2, None) == pytest.approx(3 * 1 * 1 * (45 + 55 + 64) / 3 * 2.0)


def test_a_tiny_budget_runs_tfidf_lists_the_rest_and_writes_the_choice(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # rates this slow leave nothing but TF-IDF within 1 s, however fast TF-IDF runs here
    (tmp_path / "runs" / RATES_FILE).write_text(json.dumps({"cpu": {"minilm": 10.0, "llm": 10.0}}))
    out = ok("auto", "--spec", toy, "--budget", "1s", "--folds", "3", "--write", "test", "--out", "sub.csv")
    assert "| TF-IDF + logistic regression |" in out
    assert "did not fit: all-MiniLM-L6-v2 fine-tuned whole" in out and "did not fit: SmolLM2-135M" in out
    assert "upload: TF-IDF + logistic regression" in out and "--models folds --split test --threshold oof" in out
    table = json.loads((tmp_path / "runs" / "toy-auto.json").read_text())
    run = table["best"]
    assert [s["road"] for s in table["skipped"]] == ["all-MiniLM-L6-v2 fine-tuned whole",
                                                     "SmolLM2-135M + LoRA (the default road)"]
    # the submission is the one `kit predict` writes for that run's fold ensemble at its OOF threshold
    ok("predict", "--spec", toy, "--run", run, "--models", "folds", "--threshold", "oof", "--out", "again.csv")
    assert pd.read_csv("sub.csv").equals(pd.read_csv("again.csv"))
    again = ok("auto", "--spec", toy, "--budget", "1s", "--folds", "3")         # interrupted or not: reused
    assert "finished before, reused" in again


def test_measured_rates_decide_and_the_blend_is_scored_nested(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # this machine measured MiniLM fast and the LLM slow: the MiniLM road fits, the LLM does not
    (tmp_path / "runs" / RATES_FILE).write_text(json.dumps({"cpu": {"minilm": 1e-9, "llm": 10.0}}))
    out = ok("auto", "--spec", toy, "--budget", "10m", "--folds", "3")
    assert "estimated 0.0 min, measured here" in out and "did not fit: SmolLM2-135M" in out
    table = json.loads((tmp_path / "runs" / "toy-auto.json").read_text())
    assert [r["road"] for r in table["results"]] == ["TF-IDF + logistic regression",
                                                     "all-MiniLM-L6-v2 fine-tuned whole"]
    blend = table["blend"]
    summary = json.loads((tmp_path / "runs" / blend["run"] / "blend.json").read_text())
    assert blend["honest"] == summary["nested"]["score"] and blend["fitted"] == summary["blend"]["score"]
    for result in table["results"]:            # every road's figure: its threshold fitted without the fold
        scores = json.loads((tmp_path / "runs" / result["run"] / "cv_scores.json").read_text())
        assert result["fitted"] == scores["tuned_score"]
        oof = pd.read_csv(tmp_path / "runs" / result["run"] / "oof.csv")
        truth, fold = oof["true"].astype(str).map({"0": 0, "1": 1}).to_numpy(), oof["fold"].to_numpy()
        probs = oof[["p_0", "p_1"]].to_numpy()
        assert result["honest"] == pytest.approx(nested_blend("f1", truth, [probs], fold)["score"])
        by_hand = np.zeros(len(truth), int)     # each fold at the threshold tuned on the other folds' rows
        for number in range(3):
            cut, _ = tune_threshold(truth[fold != number], probs[fold != number, 1], "f1")
            by_hand[fold == number] = probs[fold == number, 1] >= cut
        assert result["honest"] == pytest.approx(f1_score(truth, by_hand))
    assert table["best"] in [r["run"] for r in [*table["results"], blend]]
    rates = json.loads((tmp_path / "runs" / RATES_FILE).read_text())
    assert rates["cpu"]["minilm"] > 1e-9                    # replaced by what this road measured


def test_auto_refusals_are_one_line(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--budget 'soon'" in one_line_error("auto", "--spec", toy, "--budget", "soon")
    assert "unknown split 'testC'" in one_line_error("auto", "--spec", toy, "--write", "testC")


def test_each_set_of_roads_has_its_own_blend_folder(toy):
    spec = load_spec(toy)
    assert blend_name(spec, ["a", "b"]) == blend_name(spec, ["a", "b"]) != blend_name(spec, ["a", "b", "c"])


def test_the_simplest_candidate_within_one_standard_error_of_the_best_is_chosen(toy):
    spec = load_spec(toy)                  # f1: higher is better
    tfidf = {"road": "tfidf", "honest": 0.70, "scores": {"per_fold": [0.70, 0.71, 0.69, 0.70]}}
    minilm = {"road": "minilm", "honest": 0.80, "scores": {"per_fold": [0.78, 0.82, 0.76, 0.84]}}   # std 0.0316
    blend = {"road": "blend", "honest": 0.81}
    best, noise = choose(spec, [tfidf, minilm], blend)
    assert noise == pytest.approx(np.std([0.78, 0.82, 0.76, 0.84]) / 2)        # 0.0158: the blend's 0.01 is noise
    assert best is minilm
    clear = dict(blend, honest=0.83)
    assert choose(spec, [tfidf, minilm], clear)[0] is clear                   # 0.03 ahead: the blend
    assert choose(spec, [tfidf], None) == (tfidf, pytest.approx(np.std(tfidf["scores"]["per_fold"]) / 2))
