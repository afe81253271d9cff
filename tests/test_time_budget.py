"""Time budgets (competition day): `kit predict --time-budget --fallback` always ends with a complete,
valid submission, each row's road counted and recorded; `kit train --time-budget` stops with a usable,
saved model and says so."""
import json
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from cli import ok, one_line_error

from kit.core.budget import Deadline, parse_duration
from kit.core.errors import KitError
from kit.inputs.data import Rows
from kit.inputs.spec import load_spec
from kit.models.base import Prediction
from kit.tasks.label import LabelColumn
from kit.tasks.number import NumberColumn
from kit.tasks.several import SeveralLabelsColumn
from kit.workflows import predict as predicting
from kit.workflows.predict import BudgetRun, predict_in_time, second_pass

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


def ten_rows_in_chunks_of_two(monkeypatch):
    """A fake clock, chunks of 2 rows and no reserve: the time rule alone decides. (clock, 10 rows)"""
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    monkeypatch.setattr(predicting, "BUDGET_CHUNK", 2)
    monkeypatch.setattr(predicting, "FALLBACK_RESERVE_S", 0.0)
    monkeypatch.setattr(predicting, "FALLBACK_RESERVE", 0.0)
    return clock, Rows([str(i) for i in range(10)], [f"text {i}" for i in range(10)])


def test_the_main_model_predicts_while_its_measured_rate_says_the_next_chunk_ends_in_time(monkeypatch):
    clock, rows = ten_rows_in_chunks_of_two(monkeypatch)
    deadline = Deadline(7.0)
    slow, quick = FakeModel(clock, 1.0, label=1), FakeModel(clock, 0.0, label=0)
    # 1 s a row: chunks end at 2, 4 and 6 s; the fourth would end at 8 s, past the deadline of 7
    prediction, figures = predict_in_time(slow, rows, "score", None, None, deadline, BudgetRun("fast", quick))
    assert figures["main_rows"] == 6 and figures["fallback_rows"] == 4 and figures["fallback_run"] == "fast"
    assert prediction.probs[:, 1].tolist() == [1.0] * 6 + [0.0] * 4         # in the rows' order
    assert prediction.decided == ["score"] * 6 + ["fallback run fast (time budget)"] * 4


def test_no_time_left_sends_every_row_to_the_fallback(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    rows = Rows(["a", "b", "c"], ["x", "y", "z"])
    deadline = Deadline(5.0)             # under the 10 s kept for the fallback
    prediction, figures = predict_in_time(FakeModel(clock, 1.0, 1), rows, "score", None, None, deadline,
                                          BudgetRun("fast", FakeModel(clock, 0.0, 0)))
    assert figures["main_rows"] == 0 and figures["fallback_rows"] == 3 and prediction.probs[:, 0].tolist() == [1] * 3


class RowModel(FakeModel):
    """P(positive) = the row's number / 100: every row its own value, so a row mismatch shows."""
    def predict(self, rows, mode="score"):
        self.clock.now += self.seconds_per_row * len(rows)
        p = np.array([int(i) / 100 for i in rows.ids])
        return Prediction(np.stack([1 - p, p], 1), ["score"] * len(rows))


def test_the_time_left_re_scores_the_least_certain_rows_first_and_averages_them_in(monkeypatch):
    clock, rows = ten_rows_in_chunks_of_two(monkeypatch)
    parsed = np.full(10, -1)
    parsed[3] = 1                                        # row 3's generated answer decided it
    first = Prediction(np.tile([0.2, 0.8], (10, 1)), ["score"] * 10, parsed=parsed)
    certainty = np.array([5, 0, 9, 1, 8, 2, 7, 3, 6, 4], float)
    # 1 s a row, 7 s left: three chunks of 2 (ending at 2, 4, 6 s), the fourth would end at 8 s
    again, figures = second_pass(first, rows, certainty, Deadline(7.0), BudgetRun("second", RowModel(clock, 1.0, 0)))
    averaged = [1, 5, 7, 9, 0, 8]                        # the six smallest certainties, row 3 left out
    assert figures == {"second_pass_run": "second", "second_pass_rows": 6}
    for i in range(10):
        expected = [(0.2 + 1 - i / 100) / 2, (0.8 + i / 100) / 2] if i in averaged else [0.2, 0.8]
        np.testing.assert_allclose(again.probs[i], expected)
        assert again.decided[i] == ("score + second pass run second (averaged)" if i in averaged else "score")
    assert again.parsed.tolist() == parsed.tolist()
    assert first.probs[0].tolist() == [0.2, 0.8]                  # the first prediction is left as it was


def test_no_time_left_leaves_the_prediction_as_it_was(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    rows = Rows(["a", "b"], ["x", "y"])
    first = Prediction(np.tile([0.2, 0.8], (2, 1)), ["score"] * 2)
    again, figures = second_pass(first, rows, [0.1, 0.2], Deadline(5.0),   # under the 10 s reserve
                                 BudgetRun("second", FakeModel(clock, 1.0, 0)))
    assert again is first and figures["second_pass_rows"] == 0


def test_certainty_is_the_distance_from_writing_something_else(toy):
    spec = load_spec(toy)
    two = Prediction(np.array([[0.9, 0.1], [0.45, 0.55], [0.3, 0.7]]), ["score"] * 3)
    np.testing.assert_allclose(LabelColumn(spec).certainty(two, 0.6), [0.5, 0.05, 0.1])   # |P(positive) - threshold|
    three = Prediction(np.array([[0.5, 0.3, 0.2], [0.4, 0.1, 0.5]]), ["score"] * 2)
    np.testing.assert_allclose(LabelColumn(replace(spec, labels=["a", "b", "c"])).certainty(three), [0.2, 0.1])
    numbers = Prediction(np.array([[1.2], [2.45], [9.0]]), ["score"] * 3)
    qwk = NumberColumn(replace(spec, metric="qwk", scale=(1, 4), labels=[]))
    np.testing.assert_allclose(qwk.certainty(numbers, [1.5, 2.5, 3.5]), [0.3, 0.05, 0.5])  # 9 is clipped to 4
    assert NumberColumn(replace(spec, metric="rmse", labels=[])).certainty(numbers).tolist() == [0, 0, 0]
    flags = Prediction(np.array([[0.9, 0.45], [0.2, 0.1]]), ["score"] * 2)
    several = SeveralLabelsColumn(replace(spec, label_columns=["x", "y"], shape="column_flags"))
    np.testing.assert_allclose(several.certainty(flags, [0.5, 0.3]), [0.15, 0.2])         # the closest column


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


def test_a_second_pass_averages_a_second_run_into_the_rows_the_time_left_covers(toy, tmp_path, monkeypatch,
                                                                                  tiny_llama):
    monkeypatch.chdir(tmp_path)
    ok("train", "--spec", toy, "--model", tiny_llama, "--max-steps", "2", "--batch-size", "8", "--name", "main")
    ok("train", "--spec", toy, *TFIDF, "--name", "fast")
    probs = {}
    for run in ("main", "fast"):
        ok("predict", "--spec", toy, "--run", run, "--out", f"{run}.csv")
        probs[run] = pd.read_csv(tmp_path / "runs" / run / "predictions-test.csv").filter(like="p_").to_numpy()
    said = ok("predict", "--spec", toy, "--run", "main", "--time-budget", "30m", "--fallback", "fast",
              "--second-pass", "fast", "--out", "sub.csv")
    assert "8 rows by the run, 0 by the fallback run fast, 8 re-scored by the second-pass run fast" in said
    table = pd.read_csv(tmp_path / "runs" / "main" / "predictions-test.csv")
    assert table["decided"].str.endswith(" + second pass run fast (averaged)").all()
    np.testing.assert_allclose(table.filter(like="p_").to_numpy(), (probs["main"] + probs["fast"]) / 2, atol=2e-6)
    stats = json.loads((tmp_path / "runs" / "main" / "predict-test.json").read_text())
    assert stats["second_pass_rows"] == 8 and stats["second_pass_run"] == "fast"
    assert "valid for split test" in ok("check", "--spec", toy, "--submission", "sub.csv")
    assert "is the run being predicted" in one_line_error("predict", "--spec", toy, "--run", "main", "--time-budget",
                                                          "5m", "--fallback", "fast", "--second-pass", "main")
    assert "--second-pass works within a --time-budget" in one_line_error("predict", "--spec", toy, "--run", "main",
                                                                          "--second-pass", "fast")


def test_time_budget_refusals_are_one_line(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("train", "--spec", toy, *TFIDF, "--name", "fast")
    assert "--time-budget needs --fallback RUN" in one_line_error("predict", "--spec", toy, "--run", "fast",
                                                                  "--time-budget", "5m")
    assert "--fallback works within a --time-budget; give --time-budget too" in one_line_error(
        "predict", "--spec", toy, "--run", "fast", "--fallback", "fast")
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
