"""Several label columns per row (toxic-comment style), on constructed data (no real multi-label data
ships here): mean column AUC and micro / macro F1 against scikit-learn, the folds, the spec's and the
data's one-line refusals, an independent probability per column on every road (TF-IDF one-vs-rest, a
tiny LLM and the MiniLM encoder with a sigmoid head), and `kit cv/train/predict/score/check/blend`."""
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from cli import ok, one_line_error
from sklearn import metrics as sk

from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.evaluation.blending import fit_weights
from kit.evaluation.folds import merge_small_strata
from kit.evaluation.metrics import multi_label_value
from kit.inputs import shapes
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import SeveralLabelsTask
from kit.models.registry import load_model, make_model
from kit.tasks.columns import column_of
from kit.tasks.several import rarest_positive

WORDS = {"animal": ["cat", "dog", "horse"], "weather": ["rain", "storm", "snow"], "money": ["tax", "stock", "price"]}
COLUMNS = list(WORDS)
FAST = TrainArgs(max_steps=3, batch_size=8, lr=5e-3, checkpoint_every=0)


def flags_of(i):
    """Row i's 0/1 per column: every pattern but "none of them" in turn, and some rows with none."""
    if i % 8 == 7:
        return (0, 0, 0)
    n = 1 + i % 7
    return tuple((n >> j) & 1 for j in range(3))


def text_of(i, flags):
    words = [WORDS[c][i % 3] for c, f in zip(COLUMNS, flags) if f] or ["nothing"]
    return f"a note about {' and '.join(words)} number {i}"


def competition(directory, metric="mean_auc", rows=48, test_rows=12, submission=""):
    train = ["id,text," + ",".join(COLUMNS)] + [f"{i},{text_of(i, flags_of(i))},{','.join(map(str, flags_of(i)))}"
                                                for i in range(rows)]
    test = ["id,text"] + [f"{100 + i},{text_of(i + 1, flags_of(i))}" for i in range(test_rows)]
    answers = ["id," + ",".join(COLUMNS)] + [f"{100 + i},{','.join(map(str, flags_of(i)))}" for i in range(test_rows)]
    for name, lines in (("train", train), ("test", test), ("test_labels", answers)):
        (directory / f"{name}.csv").write_text("\n".join(lines) + "\n")
    (directory / "competition.toml").write_text(textwrap.dedent(f"""\
        name = "tags"
        train = "train.csv"
        [splits]
        test = "test.csv"
        [answers]
        test = "test_labels.csv"
        [columns]
        id = "id"
        label = {json.dumps(COLUMNS)}
        input = "{{text}}"
        [task]
        metric = "{metric}"
        max_length = 48
        [submission]
        """) + textwrap.dedent(submission))
    return directory / "competition.toml"


# -- metrics and folds ----------------------------------------------------------------------------

def test_column_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, (200, 4))
    probs = np.clip(truth * 0.6 + rng.uniform(0, 0.5, (200, 4)), 0, 1)
    expected = np.mean([sk.roc_auc_score(truth[:, j], probs[:, j]) for j in range(4)])
    assert multi_label_value("mean_auc", truth, probs) == pytest.approx(expected)
    decided = (probs >= 0.5).astype(int)
    assert multi_label_value("micro_f1", truth, probs) == pytest.approx(sk.f1_score(truth, decided, average="micro"))
    assert multi_label_value("macro_f1", truth, probs) == pytest.approx(sk.f1_score(truth, decided, average="macro"))
    truth[:, 0] = 0                      # a column without positives has no AUC and is left out
    expected = np.mean([sk.roc_auc_score(truth[:, j], probs[:, j]) for j in range(1, 4)])
    assert multi_label_value("mean_auc", truth, probs) == pytest.approx(expected)


def test_folds_are_stratified_by_each_rows_rarest_column():
    flags = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]])      # positives 3, 2, 1
    assert rarest_positive(flags).tolist() == [1, 0, 3, 2, 1]


def test_a_column_rarer_than_the_folds_still_gets_folds():
    strata = np.array([0] * 20 + [1] * 9 + [2] * 3 + [3] * 2)          # stratum 3: 2 rows, 2: 3 rows
    merged = merge_small_strata(strata, 5)
    assert merged.tolist() == [0] * 20 + [1] * 9 + [3] * 5             # 2 + 3 rows pooled into one of 5
    assert merge_small_strata([0] * 10 + [1] * 2, 5).tolist() == [0] * 12     # a short pool joins the largest


def test_cv_of_a_column_with_fewer_positives_than_folds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path)
    train = pd.read_csv(tmp_path / "train.csv")
    money = train.index[train["money"] == 1]
    train.loc[money[3:], "money"] = 0                    # 3 positives left, under 5 folds
    train.to_csv(tmp_path / "train.csv", index=False)
    out = ok("cv", "--spec", spec, "--model", "tfidf", "--folds", "5", "--name", "tf")
    assert "tf: mean_auc " in out
    oof = pd.read_csv(tmp_path / "runs" / "tf" / "oof.csv")
    assert sorted(oof["fold"].unique().tolist()) == list(range(5))


def test_blend_weights_by_binary_log_loss():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, (300, 3))
    good = np.clip(truth * 0.7 + rng.uniform(0, 0.3, truth.shape), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, truth.shape)
    weights, how, result, _ = fit_weights("mean_auc", truth, [good, noise])
    assert how.startswith("log loss") and weights[0] > 0.9 and weights.sum() == pytest.approx(1)
    assert result["score"] == pytest.approx(multi_label_value("mean_auc", truth, weights[0] * good + weights[1] * noise))


# -- the spec, the data and the submission's refusals ---------------------------------------------

def test_the_spec_reads_several_label_columns(tmp_path):
    spec = load_spec(competition(tmp_path))
    assert (spec.label_columns, spec.labels, spec.shape) == (COLUMNS, COLUMNS, "column_probabilities")
    assert spec.submission_columns == ["id", *COLUMNS] and spec.class_columns == {c: c for c in COLUMNS}
    assert load_rows(spec)[0].labels[:2] == [(1, 0, 0), (0, 1, 0)]
    flags = load_spec(competition(tmp_path, "micro_f1"))
    assert flags.shape == "column_flags" and flags.instruction == "Which of these apply to the text: animal, weather, money?"


@pytest.mark.parametrize("metric, extra, submission, message", [
    ("f1", "", "", "metric: 'f1' scores one label per row; several label columns take macro_f1, mean_auc, micro_f1"),
    ("mean_auc", 'labels = ["a", "b"]', "", "labels: [columns] label names several 0/1 columns"),
    ("mean_auc", "", 'shape = "probability"\n', "shape: 'probability' is not one of column_probabilities, column_flags"),
    ("mean_auc", "", 'shape = "column_flags"\n', "'column_flags' does not fit metric 'mean_auc', which scores probabilities"),
    ("micro_f1", "", 'columns = ["id", "animal", "weather"]\n', "the column of label 'money', 'money', is not in columns"),
])
def test_a_several_labels_spec_that_does_not_fit_is_one_line(tmp_path, metric, extra, submission, message):
    path = competition(tmp_path, metric, submission=submission)
    path.write_text(path.read_text().replace("max_length = 48", f"max_length = 48\n{extra}"))
    with pytest.raises(KitError) as error:
        load_spec(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_one_label_metrics_refuse_several_columns_and_several_column_metrics_refuse_one(tmp_path):
    path = competition(tmp_path)
    path.write_text(path.read_text().replace(json.dumps(COLUMNS), '["animal"]'))
    with pytest.raises(KitError, match="label: several label columns are a list of at least two distinct"):
        load_spec(path)
    single = tmp_path / "single"
    single.mkdir()
    (single / "train.csv").write_text("id,text,label\n1,a,x\n2,b,y\n")
    (single / "s.toml").write_text('train = "train.csv"\n[columns]\nid = "id"\nlabel = "label"\ninput = "{text}"\n'
                                   '[task]\nlabels = ["x", "y"]\nmetric = "mean_auc"\n')
    with pytest.raises(KitError, match="'mean_auc' scores several label columns"):
        load_spec(single / "s.toml")


def test_renamed_submission_columns_and_a_bad_cell(tmp_path):
    spec = load_spec(competition(tmp_path, submission='columns = ["id", "is_animal", "weather", "money"]\n'
                                                      'class_columns = {animal = "is_animal"}\n'))
    assert spec.class_columns["animal"] == "is_animal"
    lines = (tmp_path / "train.csv").read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ",2"
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    assert "row 5: label column 'money' holds '2', not 0 or 1" in one_line_error("check", "--spec", tmp_path / "competition.toml")


@pytest.mark.parametrize("metric, value, message", [
    ("mean_auc", "1.2", "row 2: weather '1.2' is not a probability in [0, 1]"),
    ("micro_f1", "0.4", "row 2: weather '0.4' is not 0 or 1"),
])
def test_validation_refuses_what_a_column_cannot_hold(tmp_path, metric, value, message):
    spec = load_spec(competition(tmp_path, metric))
    frame = pd.DataFrame({"id": ["1"], "animal": ["1"], "weather": [value], "money": ["0"]})
    with pytest.raises(KitError, match=message.replace("[", r"\[")):
        shapes.check(spec, frame, "sub.csv")


# -- the roads ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tfidf", "tiny_llama", "minilm"])
def test_each_road_gives_each_column_its_own_probability(request, tmp_path, model):
    spec = load_spec(competition(tmp_path))
    rows, test = load_rows(spec)[0], load_rows(spec, "test")[0]
    name = request.getfixturevalue(model) if model.startswith("tiny") else model
    fitted = make_model(column_of(spec).estimator_task(), ModelArgs(model=str(name), head="classify"), FAST).fit(rows)
    before = fitted.predict(test)
    assert before.probs.shape == (len(test), 3) and ((before.probs > 0) & (before.probs < 1)).all()
    assert not np.allclose(before.probs.sum(1), 1)           # independent columns, not a softmax
    fitted.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    assert isinstance(again.task, SeveralLabelsTask)
    np.testing.assert_allclose(again.predict(test).probs, before.probs, rtol=1e-6, atol=1e-6)


def test_the_generate_head_is_refused(tmp_path, tiny_llama):
    spec = load_spec(competition(tmp_path))
    with pytest.raises(KitError, match="several label columns are learned by a head with an output per column"):
        make_model(column_of(spec).estimator_task(), ModelArgs(model=str(tiny_llama), head="generate"), FAST)


# -- end to end ----------------------------------------------------------------------------------------

def test_mean_auc_cv_train_predict_score_check_and_blend(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path)
    out = ok("cv", "--spec", spec, "--model", "tfidf", "--folds", "3", "--name", "tf")
    assert "tf: mean_auc " in out and "positives" in out
    scores = json.loads((tmp_path / "runs" / "tf" / "cv_scores.json").read_text())
    assert scores["mean_auc"] > 0.8 and set(scores["per_column"]) == set(COLUMNS)
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    said = ok("predict", "--spec", spec, "--run", "tf", "--out", "sub.csv")
    assert "each column's probability" in said
    written = pd.read_csv(tmp_path / "sub.csv")
    assert list(written.columns) == ["id", *COLUMNS] and written[COLUMNS].stack().between(0, 1).all()
    assert "valid for split test" in ok("check", "--spec", spec, "--submission", "sub.csv")
    truth = pd.read_csv(tmp_path / "test_labels.csv")
    expected = np.mean([sk.roc_auc_score(truth[c], written[c]) for c in COLUMNS])
    assert ok("score", "--spec", spec, "--pred", "sub.csv", "--split", "test").startswith(f"mean_auc: {expected:.4f}")
    assert ok("score", "--spec", spec, "--pred", "runs/tf/predictions-test.csv",
               "--split", "test").startswith(f"mean_auc: {expected:.4f}")
    other = ["--spec", spec, "--model", "tfidf", "--name", "tf2", "--seed", "1"]
    ok("cv", *other, "--folds", "3", "--no-baseline")
    ok("train", *other)
    ok("predict", "--spec", spec, "--run", "tf2", "--out", "sub2.csv")
    blended = ok("blend", "tf", "tf2", "--spec", spec, "--split", "test", "--out", "blend.csv")
    assert "BLEND" in blended and pd.read_csv(tmp_path / "blend.csv")[COLUMNS].stack().between(0, 1).all()


def test_flags_decided_at_thresholds_tuned_per_column_on_oof_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path, "micro_f1")
    out = ok("cv", "--spec", spec, "--model", "tfidf", "--folds", "3", "--name", "tf", "--no-baseline")
    scores = json.loads((tmp_path / "runs" / "tf" / "cv_scores.json").read_text())
    assert len(scores["tuned_thresholds"]) == 3 and "OOF-tuned thresholds" in out
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    said = ok("predict", "--spec", spec, "--run", "tf", "--threshold", "oof", "--out", "sub.csv")
    assert f"at thresholds {scores['tuned_thresholds']}" in said
    written = pd.read_csv(tmp_path / "sub.csv")
    predicted = pd.read_csv(tmp_path / "runs" / "tf" / "predictions-test.csv")
    for column, cut in zip(COLUMNS, scores["tuned_thresholds"]):
        assert written[column].tolist() == (predicted[f"p_{column}"] >= cut).astype(int).tolist()
    assert "valid for split test" in ok("check", "--spec", spec, "--submission", "sub.csv")
    assert ok("score", "--spec", spec, "--pred", "sub.csv", "--split", "test").startswith("micro_f1: ")


def test_levers_and_serve_refuse_several_label_columns_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path)
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    assert "learn label probabilities" in one_line_error("train", "--spec", spec, "--model", "tfidf", "--name", "p",
                                                  "--pseudo", "tf")
    assert "several label columns (metric mean_auc) is predicted" in one_line_error("serve", "--spec", spec, "--run", "tf")


def test_prepare_writes_the_columns_that_apply_as_the_answer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path)
    ok("prepare", "--spec", spec, "--out", "prepared")
    written = json.loads((tmp_path / "prepared" / "tags_alpaca.json").read_text())
    assert [r["output"] for r in written[:8]] == ["animal", "weather", "animal, weather", "money", "animal, money",
                                                  "weather, money", "animal, weather, money", "none"]
