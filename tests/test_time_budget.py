"""Time budgets (competition day): `kit predict --time-budget --fallback` always ends with a complete,
valid submission, each row's road counted and recorded; `kit train --time-budget` stops with a usable,
saved model and says so."""
import json
import time

import numpy as np
import pandas as pd
import pytest
from cli import ok, one_line_error

from kit.core.budget import Deadline, parse_duration
from kit.core.errors import KitError
from kit.inputs.data import Rows
from kit.models.base import Prediction
from kit.workflows import predict as predicting
from kit.workflows.predict import Fallback, predict_in_time

TFIDF = ["--model", "tfidf"]


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("90s", 90), ("1.5", 90)])
def test_a_duration_reads_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_duration_names_its_option():
    with pytest.raises(KitError, match="--time-budget 'later'"):
        parse_duration("later")


class Clock:
    """A monotonic clock the fake models move: a row costs what the model says."""
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeModel:
    prediction_type = Prediction
    whole_split = False
    model_id = "fake"

    def __init__(self, clock, seconds_per_row, label):
        self.clock, self.seconds_per_row, self.label = clock, seconds_per_row, label

    def predict(self, rows, mode="score"):
        self.clock.now += self.seconds_per_row * len(rows)
        probs = np.zeros((len(rows), 2))
        probs[:, self.label] = 1.0
        return Prediction(probs, ["score"] * len(rows))


def test_the_main_model_predicts_while_its_measured_rate_says_the_next_chunk_ends_in_time(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    monkeypatch.setattr(predicting, "BUDGET_CHUNK", 2)
    monkeypatch.setattr(predicting, "FALLBACK_RESERVE_S", 0.0)
    monkeypatch.setattr(predicting, "FALLBACK_RESERVE", 0.0)
    rows = Rows([str(i) for i in range(10)], [f"text {i}" for i in range(10)])
    deadline = Deadline(7.0)
    slow, quick = FakeModel(clock, 1.0, label=1), FakeModel(clock, 0.0, label=0)
    # 1 s a row: chunks end at 2, 4 and 6 s; the fourth would end at 8 s, past the deadline of 7
    prediction, figures = predict_in_time(slow, rows, "score", None, None, deadline, Fallback("fast", quick))
    assert figures["main_rows"] == 6 and figures["fallback_rows"] == 4 and figures["fallback_run"] == "fast"
    assert prediction.probs[:, 1].tolist() == [1.0] * 6 + [0.0] * 4         # in the rows' order
    assert prediction.decided == ["score"] * 6 + ["fallback run fast (time budget)"] * 4


def test_no_time_left_sends_every_row_to_the_fallback(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    rows = Rows(["a", "b", "c"], ["x", "y", "z"])
    deadline = Deadline(5.0)             # under the 10 s kept for the fallback
    prediction, figures = predict_in_time(FakeModel(clock, 1.0, 1), rows, "score", None, None, deadline,
                                          Fallback("fast", FakeModel(clock, 0.0, 0)))
    assert figures["main_rows"] == 0 and figures["fallback_rows"] == 3 and prediction.probs[:, 0].tolist() == [1] * 3


def test_a_budget_too_small_for_the_main_run_still_writes_a_complete_valid_submission(toy, tmp_path, monkeypatch,
                                                                                        tiny_llama):
    monkeypatch.chdir(tmp_path)
    ok("train", "--spec", toy, "--model", tiny_llama, "--max-steps", "2", "--batch-size", "8", "--name", "main")
    ok("train", "--spec", toy, *TFIDF, "--name", "fast")
    said = ok("predict", "--spec", toy, "--run", "main", "--time-budget", "3s", "--fallback", "fast",
              "--out", "sub.csv")
    assert "0 rows by the run, 8 by the fallback run fast" in said and "time budget:" in said
    assert "valid for split test" in ok("check", "--spec", toy, "--submission", "sub.csv")
    assert len(pd.read_csv("sub.csv")) == 8
    table = pd.read_csv(tmp_path / "runs" / "main" / "predictions-test.csv")
    assert (table["decided"] == "fallback run fast (time budget)").all()
    stats = json.loads((tmp_path / "runs" / "main" / "predict-test.json").read_text())
    assert stats["fallback_rows"] == 8 and stats["main_rows"] == 0
    roomy = ok("predict", "--spec", toy, "--run", "main", "--time-budget", "30m", "--fallback", "fast",
               "--out", "sub2.csv")
    assert "8 rows by the run, 0 by the fallback run fast" in roomy


def test_time_budget_refusals_are_one_line(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("train", "--spec", toy, *TFIDF, "--name", "fast")
    assert "--time-budget needs --fallback RUN" in one_line_error("predict", "--spec", toy, "--run", "fast",
                                                                  "--time-budget", "5m")
    assert "give --time-budget too" in one_line_error("predict", "--spec", toy, "--run", "fast", "--fallback", "fast")
    assert "--time-budget 'soon'" in one_line_error("predict", "--spec", toy, "--run", "fast", "--time-budget", "soon",
                                                    "--fallback", "fast")
    assert "nope" in one_line_error("predict", "--spec", toy, "--run", "fast", "--time-budget", "5m",
                                    "--fallback", "nope")


def test_training_stops_at_its_budget_with_a_usable_model(toy, tmp_path, monkeypatch, tiny_llama):
    monkeypatch.chdir(tmp_path)
    said = ok("train", "--spec", toy, "--model", tiny_llama, "--max-steps", "100000", "--batch-size", "8",
              "--checkpoint-every", "0", "--time-budget", "4s", "--name", "cut")
    metrics = json.loads((tmp_path / "runs" / "cut" / "train_metrics.json").read_text())
    cut = metrics["stopped_by_time_budget"]
    assert 1 <= cut["steps"] < cut["planned"] == 100000 and metrics["steps"] == cut["steps"]
    assert f"training stopped at step {cut['steps']} of 100000" in said
    ok("predict", "--spec", toy, "--run", "cut", "--out", "sub.csv")
    assert len(pd.read_csv("sub.csv")) == 8
