"""The number shape (a score per row: rmse, mae, qwk), on constructed data (no real regression data
ships here): the metrics against scikit-learn and a hand-worked case, QWK cut points tuned on OOF
rows, the spec's and the data's one-line refusals, the regression heads (TF-IDF ridge, a tiny LLM,
the MiniLM encoder), and `kit cv/train/predict/score/check/blend` end to end."""
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from cli import ok, one_line_error
from sklearn import metrics as sk

from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine.losses import RegressionLoss
from kit.evaluation.blending import fit_weights, squared_error
from kit.evaluation.metrics import apply_cut_points, number_value, quadratic_kappa, round_half_up, tune_cut_points
from kit.inputs import shapes
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import NumberTask
from kit.models.registry import load_model, make_model
from kit.tasks.columns import column_of
from kit.tasks.number import value_bins

WORDS = {1: "awful", 2: "poor", 3: "okay", 4: "good", 5: "superb"}
NOISE = ["the film", "this book", "our meal", "the hotel", "that song", "the show", "my phone"]
FAST = TrainArgs(max_steps=3, batch_size=8, lr=5e-3, checkpoint_every=0)


def score_of(i):
    return 1 + (i * 3) % 5


def competition(directory, metric="rmse", scale="[1, 5]", rows=40, test_rows=10, extra=""):
    """A toy rating competition: the score is told by one word of each text (train, test, answers)."""
    train = ["id,text,score"] + [f"{i},{NOISE[i % 7]} was {WORDS[score_of(i)]} {i},{score_of(i)}" for i in range(rows)]
    test = ["id,text"] + [f"{100 + i},{NOISE[(i + 2) % 7]} felt {WORDS[score_of(i)]}" for i in range(test_rows)]
    answers = ["id,score"] + [f"{100 + i},{score_of(i)}" for i in range(test_rows)]
    for name, lines in (("train", train), ("test", test), ("test_labels", answers)):
        (directory / f"{name}.csv").write_text("\n".join(lines) + "\n")
    scale_line = f"scale = {scale}" if scale else ""
    (directory / "competition.toml").write_text(textwrap.dedent(f"""\
        name = "ratings"
        train = "train.csv"
        [splits]
        test = "test.csv"
        [answers]
        test = "test_labels.csv"
        [columns]
        id = "id"
        label = "score"
        input = "{{text}}"
        [task]
        metric = "{metric}"
        {scale_line}
        max_length = 48
        [submission]
        columns = ["id", "score"]
        """) + extra)
    return directory / "competition.toml"


# -- metrics ------------------------------------------------------------------------------------

def test_rmse_mae_and_qwk_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 7, 200).astype(float)
    values = truth + rng.normal(0, 1.1, 200)
    assert number_value("rmse", truth, values) == pytest.approx(np.sqrt(sk.mean_squared_error(truth, values)))
    assert number_value("mae", truth, values) == pytest.approx(sk.mean_absolute_error(truth, values))
    rounded = np.rint(values).astype(int)
    assert number_value("qwk", truth, values) == pytest.approx(
        sk.cohen_kappa_score(truth.astype(int), rounded, weights="quadratic"))


def test_qwk_by_hand():
    # truth 1,2,3 predicted 1,3,3: observed weights (i-j)^2/(N-1)^2 with N = 3 points on the scale
    # O = [[1,0,0],[0,0,1],[0,0,1]], E = outer(hist_t, hist_p)/n = outer([1,1,1],[1,0,2])/3
    weights = np.array([[0, 1, 4], [1, 0, 1], [4, 1, 0]]) / 4
    observed = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1]])
    expected = np.outer([1, 1, 1], [1, 0, 2]) / 3
    kappa = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert quadratic_kappa([1, 2, 3], [1, 3, 3]) == pytest.approx(kappa)
    assert kappa == pytest.approx(1 - 0.25 / 1.25)         # observed 1/4, expected 5/4


def test_qwk_weighs_distances_over_the_whole_scale_even_for_scores_nobody_gave():
    # truth 1,2,3,5,5 and predicted 1,2,3,3,5 on the scale 1..6: 4 and 6 occur nowhere, yet the
    # distance 5 -> 3 is 2 steps of 5, not 2 steps of the 3 that the observed scores span
    truth, predicted = [1, 2, 3, 5, 5], [1, 2, 3, 3, 5]
    points = np.arange(1, 7)
    weights = (points[:, None] - points[None, :]) ** 2 / 25
    observed = np.zeros((6, 6))
    for t, p in zip(truth, predicted):
        observed[t - 1, p - 1] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(truth)
    kappa = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert quadratic_kappa(truth, predicted, (1, 6)) == pytest.approx(kappa)
    assert number_value("qwk", truth, predicted, [1.0, 6.0]) == pytest.approx(kappa)
    assert kappa == pytest.approx(0.8214, abs=1e-4)
    assert quadratic_kappa(truth, predicted) != pytest.approx(kappa)    # the observed scores alone differ


def test_qwk_rounds_half_up_as_submissions_do_and_clips_to_the_scale():
    assert round_half_up([0.5, 1.5, 2.5, 2.49, 7.2], (1, 6)).tolist() == [1, 2, 3, 2, 6]
    # 2.5 is a 3 (np.rint would make it a 2): predicted 3,3 against truth 3,3 plus two exact rows
    assert number_value("qwk", [1, 3, 3, 5], [1, 2.5, 3.5, 5], [1, 5]) < 1.0      # 3.5 -> 4
    assert number_value("qwk", [1, 3, 3, 5], [1, 2.5, 3.4, 5], [1, 5]) == pytest.approx(1.0)


def test_qwk_refuses_fractional_truth_in_one_line(tmp_path):
    spec = competition(tmp_path, "qwk")
    lines = (tmp_path / "train.csv").read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2.5"
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    said = one_line_error("check", "--spec", spec)
    assert "row 3: score '2.5' is not an integer, and qwk scores integers" in said


def test_cut_points_round_and_tuning_beats_the_half_way_points():
    assert apply_cut_points([0.2, 1.49, 1.5, 2.7, 9], [1.5, 2.5], 1).tolist() == [1, 1, 2, 3, 3]
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 6, 400).astype(float)
    shrunk = 3 + 0.4 * (truth - 3) + rng.normal(0, 0.15, 400)      # a regressor pulled to the mean
    half_way = quadratic_kappa(truth, apply_cut_points(shrunk, [1.5, 2.5, 3.5, 4.5], 1))
    cuts, tuned = tune_cut_points(truth, shrunk, 1, 5)
    assert tuned > half_way + 0.05 and list(cuts) == sorted(cuts)
    assert quadratic_kappa(truth, apply_cut_points(shrunk, cuts, 1)) == pytest.approx(tuned, abs=1e-3)


def test_value_bins_stratify_folds_by_quantile():
    bins = value_bins(np.arange(100.0)[::-1], 5)
    assert sorted(set(bins.tolist())) == list(range(10)) and np.bincount(bins).tolist() == [10] * 10
    assert set(value_bins([1.0, 2.0, 3.0], 5).tolist()) == {0}             # too few rows: one bin


def test_squared_error_blend_weights_reach_the_least_squares_point():
    rng = np.random.default_rng(2)
    truth = rng.normal(3, 1, 300)
    good, bad = truth + rng.normal(0, 0.3, 300), truth + rng.normal(0, 1.0, 300)
    weights, how, result, _ = fit_weights("rmse", truth, [good[:, None], bad[:, None]])
    assert how.startswith("squared error") and weights.sum() == pytest.approx(1) and weights[0] > 0.8
    stacked = np.stack([good, bad], 1)
    grid = min(squared_error(np.array([w, 1 - w]), stacked, truth) for w in np.linspace(0, 1, 1001))
    assert squared_error(weights, stacked, truth) == pytest.approx(grid, abs=1e-6)
    assert result["score"] == pytest.approx(np.sqrt(squared_error(weights, stacked, truth)))


# -- the spec, the data and the submission's refusals ----------------------------------------------

@pytest.mark.parametrize("metric, scale, extra_task, message", [
    ("qwk", None, "", "scale: metric 'qwk' scores integers on a scale; give scale = [low, high]"),
    ("qwk", "[0.5, 5]", "", "low and high must be integers"),
    ("rmse", "[5, 1]", "", "scale: give [low, high], two finite numbers with low < high"),
    ("rmse", "[1, 5]", 'labels = ["1", "2"]', "labels: metric 'rmse' reads the label column as numbers"),
    ("f1", "[1, 5]", 'labels = ["1", "2"]', "scale: only a metric over numbers (rmse, mae, qwk) uses a scale"),
])
def test_a_number_spec_that_does_not_fit_is_one_line(tmp_path, metric, scale, extra_task, message):
    spec = competition(tmp_path, metric, scale)
    text = spec.read_text().replace("max_length = 48", f"max_length = 48\n{extra_task}")
    spec.write_text(text)
    with pytest.raises(KitError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_spec(spec)


def test_a_label_shape_for_a_numbers_metric_is_refused(tmp_path):
    spec = competition(tmp_path, "rmse", extra='shape = "label"\n')
    with pytest.raises(KitError, match="'label' does not fit metric 'rmse', which scores numbers; use shape = 'number'"):
        load_spec(spec)


def test_the_spec_reads_a_number_task(tmp_path):
    spec = load_spec(competition(tmp_path, "qwk"))
    assert (spec.shape, spec.scale, spec.labels, spec.instruction) == ("number", [1.0, 5.0], [],
                                                                       "Rate the text with a number from 1 to 5.")
    assert spec.describe()["scale"] == [1.0, 5.0]
    rows = load_rows(spec)[0]
    assert rows.labels[:3] == [1.0, 4.0, 2.0]


@pytest.mark.parametrize("cell, message", [("high", "row 4: score 'high' is not a finite number"),
                                           ("7", "row 4: score '7' is outside the spec's scale [1, 5]"),
                                           ("nan", "row 4: score 'nan' is not a finite number")])
def test_a_bad_training_number_names_its_row(tmp_path, cell, message):
    spec = competition(tmp_path)
    lines = (tmp_path / "train.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + f",{cell}"
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    assert message in one_line_error("check", "--spec", spec)


@pytest.mark.parametrize("metric, values, message", [
    ("rmse", ["2.5", "nan"], "row 3: score 'nan' is not a finite number in [1, 5]"),
    ("rmse", ["2.5", "5.5"], "row 3: score '5.5' is not a finite number in [1, 5]"),
    ("qwk", ["2", "3.5"], "row 3: score '3.5' is not an integer in [1, 5]"),
])
def test_validation_refuses_numbers_the_shape_cannot_hold(tmp_path, metric, values, message):
    spec = load_spec(competition(tmp_path, metric))
    with pytest.raises(KitError, match=message.replace("[", r"\[")):
        shapes.check(spec, pd.DataFrame({"id": ["1", "2"], "score": values}), "sub.csv")


# -- the regression heads --------------------------------------------------------------------------

def test_regression_loss_is_the_summed_squared_error():
    class Head(torch.nn.Module):
        def forward(self, x):
            return type("Out", (), {"logits": x})()
    outputs, targets = torch.tensor([[0.5], [2.0], [-1.0]]), [1.0, 1.0, 1.0]
    assert RegressionLoss(Head())(dict(x=outputs), targets).item() == pytest.approx(0.25 + 1 + 4)
    assert RegressionLoss.weight(targets) == 3


@pytest.mark.parametrize("model", ["tfidf", "tiny_llama", "minilm"])
def test_each_road_learns_a_number_and_reloads_it_exactly(request, tmp_path, model):
    spec = load_spec(competition(tmp_path))
    rows, test = load_rows(spec)[0], load_rows(spec, "test")[0]
    name = request.getfixturevalue(model) if model.startswith("tiny") else model
    args = ModelArgs(model=str(name), head="classify")
    fitted = make_model(column_of(spec).estimator_task(), args, FAST).fit(rows)
    before = fitted.predict(test)
    assert before.probs.shape == (len(test), 1) and np.isfinite(before.probs).all()
    fitted.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    assert isinstance(again.task, NumberTask)
    if model != "tfidf":           # the head learns standardised targets (ridge fits its own intercept)
        assert again.task.center == pytest.approx(np.mean(rows.labels))
        assert again.task.spread == pytest.approx(np.std(rows.labels))
    np.testing.assert_allclose(again.predict(test).probs, before.probs, rtol=1e-6, atol=1e-6)


def test_the_generate_head_is_refused_for_a_number(tmp_path, tiny_llama):
    spec = load_spec(competition(tmp_path))
    with pytest.raises(KitError, match="a number task learns a regression head"):
        make_model(column_of(spec).estimator_task(), ModelArgs(model=str(tiny_llama), head="generate"), FAST)


# -- end to end -------------------------------------------------------------------------------------

def test_rmse_cv_train_predict_score_check_and_blend(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path, "rmse")
    out = ok("cv", "--spec", spec, "--model", "tfidf", "--folds", "4", "--name", "tf")
    assert "tf: rmse " in out and "(OOF)" in out and "lower is better" in out
    scores = json.loads((tmp_path / "runs" / "tf" / "cv_scores.json").read_text())
    assert scores["higher_is_better"] is False and scores["rmse"] < 1.0     # the word tells the score
    oof = pd.read_csv(tmp_path / "runs" / "tf" / "oof.csv")
    assert list(oof.columns) == ["id", "true", "pred", "decided", "fold"] and oof["pred"].between(1, 5).all()
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    said = ok("predict", "--spec", spec, "--run", "tf", "--out", "sub.csv")
    assert "the submission holds a number per row" in said
    written = pd.read_csv(tmp_path / "sub.csv")
    assert list(written.columns) == ["id", "score"] and written["score"].between(1, 5).all()
    assert "valid for split test" in ok("check", "--spec", spec, "--submission", "sub.csv")
    scored = ok("score", "--spec", spec, "--pred", "sub.csv", "--split", "test")
    truth = pd.read_csv(tmp_path / "test_labels.csv")["score"]
    rmse = float(np.sqrt(np.mean((written["score"] - truth) ** 2)))
    assert scored.startswith(f"rmse: {rmse:.4f}")
    assert one_line_error("predict", "--spec", spec, "--run", "tf", "--threshold", "0.5").count("no threshold decides")
    other = ["--spec", spec, "--model", "tfidf", "--name", "tf2", "--seed", "1"]
    ok("cv", *other, "--folds", "4", "--no-baseline")
    ok("train", *other)
    ok("predict", "--spec", spec, "--run", "tf2", "--out", "sub2.csv")
    blended = ok("blend", "tf", "tf2", "--spec", spec, "--split", "test", "--out", "blend.csv")
    assert "BLEND" in blended and "squared error" in blended and "@0.5" not in blended
    assert pd.read_csv(tmp_path / "blend.csv")["score"].between(1, 5).all()


def test_qwk_tunes_cut_points_on_oof_rows_and_writes_integers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path, "qwk")
    out = ok("cv", "--spec", spec, "--model", "tfidf", "--folds", "4", "--name", "tf", "--no-baseline")
    scores = json.loads((tmp_path / "runs" / "tf" / "cv_scores.json").read_text())
    assert len(scores["cut_points"]) == 4 and scores["tuned_score"] >= scores["qwk"] - 1e-9
    assert "at OOF-tuned cut points" in out
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    said = ok("predict", "--spec", spec, "--run", "tf", "--out", "sub.csv")
    assert f"rounded at cut points {scores['cut_points']}" in said
    written = pd.read_csv(tmp_path / "sub.csv")["score"]
    assert written.dtype.kind == "i" and written.between(1, 5).all()
    predicted = pd.read_csv(tmp_path / "runs" / "tf" / "predictions-test.csv")
    np.testing.assert_array_equal(written, apply_cut_points(predicted["pred"], scores["cut_points"], 1))


def test_levers_serve_and_export_refuse_a_number_task_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path, "rmse")
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    assert "learn label probabilities" in one_line_error("train", "--spec", spec, "--model", "tfidf", "--name", "p",
                                                  "--pseudo", "tf")
    assert "a number task (metric rmse) is predicted with kit predict" in one_line_error("serve", "--spec", spec, "--run", "tf")


def test_prepare_writes_the_number_as_the_answer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path, "rmse")
    ok("prepare", "--spec", spec, "--out", "prepared")
    written = json.loads((tmp_path / "prepared" / "ratings_alpaca.json").read_text())
    assert [r["output"] for r in written[:3]] == ["1", "4", "2"]
