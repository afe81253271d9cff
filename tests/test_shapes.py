"""Submission shapes (label, probability, classes, top_k) and the metric registry: the values each
shape writes, the refusals of validation, the metrics against scikit-learn or hand-worked cases,
the spec's one-line errors, and `kit cv/train/predict/score/check/blend` end to end on TF-IDF."""
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_toy_competition
from sklearn import metrics as sk

from kit.commands.main import main
from kit.core.errors import KitError
from kit.evaluation.blending import fit_weights
from kit.evaluation.metrics import log_loss, map_at_k, metric_info, metric_value, ranked
from kit.inputs import shapes, submit
from kit.inputs.spec import load_spec
from kit.outputs.report import rank

TOPICS = {"a": ["the cat sleeps on the mat", "a dog barks at night", "horses run in the field",
                "the bird sings a song"],
          "b": ["the stock market fell today", "a new phone was released", "taxes rise next year",
                "the server crashed twice"],
          "c": ["rain is expected tomorrow", "a storm hit the coast", "snow fell in the hills",
                "the sun shines all day"]}


def competition(directory, metric, submission, labels=("a", "b", "c"), rows=36, test_rows=6):
    """A toy competition of len(labels) topics (train.csv, test.csv, test_labels.csv) and its spec."""
    topics = [TOPICS[label] for label in labels]
    train = ["id,text,label"] + [f"{i},{topics[i % len(labels)][i % 4]} {i},{labels[i % len(labels)]}"
                                 for i in range(rows)]
    test = ["id,text"] + [f"{100 + i},{topics[i % len(labels)][(i + 1) % 4]}" for i in range(test_rows)]
    answers = ["id,label"] + [f"{100 + i},{labels[i % len(labels)]}" for i in range(test_rows)]
    for name, lines in (("train", train), ("test", test), ("test_labels", answers)):
        (directory / f"{name}.csv").write_text("\n".join(lines) + "\n")
    spec = textwrap.dedent(f"""\
        name = "shapes"
        train = "train.csv"
        [splits]
        test = "test.csv"
        [answers]
        test = "test_labels.csv"
        [columns]
        id = "id"
        label = "label"
        input = "{{text}}"
        [task]
        labels = {json.dumps(list(labels))}
        metric = "{metric}"
        [submission]
        """) + textwrap.dedent(submission)
    path = directory / "competition.toml"
    path.write_text(spec)
    return path


def kit(directory, *args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# -- metrics ------------------------------------------------------------------------------------

def test_log_loss_matches_scikit_learn_binary_and_multiclass():
    rng = np.random.default_rng(0)
    for classes in (2, 5):
        probs = rng.dirichlet(np.ones(classes), 200)
        truth = rng.integers(0, classes, 200)
        assert log_loss(truth, probs) == pytest.approx(sk.log_loss(truth, probs, labels=range(classes)), rel=1e-9)
        assert metric_value("logloss", truth, None, probs) == pytest.approx(log_loss(truth, probs))


def test_log_loss_clips_a_certain_wrong_answer_to_a_finite_loss():
    # the true label got probability 0: clipped to 1e-15 (then renormalised), as Kaggle scores it
    value = log_loss([0], np.array([[0.0, 1.0]]))
    assert np.isfinite(value) and value == pytest.approx(-np.log(1e-15 / (1 + 1e-15 - 1e-15 * 0)), rel=1e-6)
    # rows that do not sum to 1 are renormalised first
    assert log_loss([1], np.array([[0.2, 0.6]])) == pytest.approx(-np.log(0.75))


def test_map_at_k_by_hand():
    top = np.array([[2, 0, 1], [0, 2, 1], [1, 0, 2], [0, 1, 2]])
    truth = np.array([2, 2, 2, 3])               # rank 1, rank 2, rank 3, not listed
    assert map_at_k(truth, top) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    probs = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    assert ranked(probs, 3).tolist() == [[1, 2, 0], [2, 0, 1]]        # ties: the earlier label first
    assert metric_value("map@2", [0, 0], None, probs) == pytest.approx((0 + 1 / 2) / 2)


def test_multiclass_auc_is_one_vs_rest_as_scikit_learn():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 90)
    truth = np.arange(90) % 3
    assert metric_value("auc", truth, None, probs) == pytest.approx(sk.roc_auc_score(truth, probs, multi_class="ovr"))
    assert np.isnan(metric_value("auc", np.zeros(5, int), None, probs[:5]))    # one class: no AUC


def test_the_registry_knows_each_metrics_direction_and_needs():
    assert metric_info("logloss").higher_is_better is False and metric_info("auc").needs == "probabilities"
    assert metric_info("map@3").k == 3 and metric_info("map@3").needs == "ranking"
    assert metric_info("f1").needs == "labels" and metric_info("kappa") is None and metric_info("map@0") is None
    assert metric_info("qwk").needs == "numbers" and metric_info("rmse").higher_is_better is False
    assert metric_info("logloss").better(0.3, 0.5) and metric_info("f1").better(0.5, 0.3)


def test_leaderboard_ranks_log_loss_lowest_first():
    entries = [{"name": n, "metric": "logloss", "score": s, "created": 0} for n, s in (("a", 0.9), ("b", 0.4))]
    assert [e["name"] for e in rank(entries)] == ["b", "a"]
    entries = [{**e, "metric": "auc"} for e in entries]
    assert [e["name"] for e in rank(entries)] == ["a", "b"]


def test_blend_weights_on_log_loss_keep_the_lowest_loss():
    truth = np.arange(60) % 2
    good = np.stack([1 - (0.2 + 0.6 * truth), 0.2 + 0.6 * truth], 1)
    bad = np.full((60, 2), 0.5)
    weights, how, result, tried = fit_weights("logloss", truth, [bad, good])
    assert result["score"] == pytest.approx(min(t["score"] for t in tried)) and weights[1] > 0.9
    assert result["threshold"] is None                     # a probability metric takes no threshold


# -- the spec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric, labels, submission, message", [
    ("auc", ("a", "b", "c"), 'columns = ["id", "label"]\nshape = "probability"\n',
     "shape: 'probability' writes P(positive) of two labels, the task has 3; use 'classes'"),
    ("auc", ("a", "b", "c"), 'columns = ["id", "label"]\n',
     "class_columns: the column of label 'a', 'a', is not in columns"),
    ("map@7", ("a", "b", "c"), 'columns = ["id", "label"]\n', "metric: 'map@7' ranks 7 labels, the task has 3"),
    ("qwk", ("a", "b", "c"), 'columns = ["id", "label"]\n', "labels: metric 'qwk' reads the label column as numbers"),
    ("logloss", ("a", "b"), 'columns = ["id", "label"]\nshape = "label"\n',
     "shape: 'label' does not fit metric 'logloss', which scores probabilities; use shape = 'probability'"),
    ("f1", ("a", "b"), 'columns = ["id", "label"]\nshape = "probability"\n', "does not fit metric 'f1'"),
    ("map@2", ("a", "b", "c"), 'columns = ["id", "label"]\nseparator = "a"\n', "separator: 'a' occurs in label 'a'"),
    ("f1", ("a", "b"), 'columns = ["id", "label"]\nseparator = ";"\n', "separator: only shape = 'top_k' uses it"),
    ("logloss", ("a", "b", "c"), 'columns = ["id", "x", "y"]\nclass_columns = {a = "x", b = "y"}\n',
     "class_columns: no column for label(s) ['c']"),
    ("logloss", ("a", "b", "c"), 'columns = ["id", "a", "b", "c"]\nlabel_column = "a"\n',
     "label_column: this shape writes a column per label (class_columns), not one"),
    ("macro_f1", ("a", "b", "c"), 'columns = ["id", "label"]\nshape = "ranks"\n', "shape: 'ranks' is not one of"),
])
def test_a_metric_or_shape_that_does_not_fit_is_one_line(tmp_path, metric, labels, submission, message):
    path = competition(tmp_path, metric, submission, labels)
    with pytest.raises(KitError) as error:
        load_spec(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_shape_defaults_follow_the_metric(tmp_path):
    expected = {("auc", 2): "probability", ("logloss", 2): "probability", ("logloss", 3): "classes",
                ("map@2", 3): "top_k", ("f1", 2): "label", ("accuracy", 3): "label"}
    for (metric, n), shape in expected.items():
        labels = ("a", "b", "c")[:n]
        columns = '["id", "a", "b", "c"]' if shape == "classes" else '["id", "label"]'
        spec = load_spec(competition(tmp_path, metric, f"columns = {columns}\n", labels))
        assert spec.shape == shape, (metric, n)
        assert shapes.label_columns(spec) == (["a", "b", "c"] if shape == "classes" else ["label"])


# -- values and validation -----------------------------------------------------------------------

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])


@pytest.fixture
def specs(tmp_path):
    made = {}
    for name, metric, labels, submission in (
            ("probability", "auc", ("a", "b"), 'columns = ["id", "label"]\n'),
            ("classes", "logloss", ("a", "b", "c"), 'columns = ["id", "pa", "pb", "pc"]\n'
                                                    'class_columns = {a = "pa", b = "pb", c = "pc"}\n'),
            ("top_k", "map@2", ("a", "b", "c"), 'columns = ["id", "label"]\nseparator = "|"\n')):
        folder = tmp_path / name
        folder.mkdir()
        made[name] = load_spec(competition(folder, metric, submission, labels))
    return made


def test_each_shape_writes_its_values(specs):
    binary = np.array([[0.75, 0.25], [0.1234567, 0.8765433]])
    assert shapes.values(specs["probability"], binary, [0, 1]) == {"label": [0.25, 0.876543]}
    classes = shapes.values(specs["classes"], PROBS, [0, 2])
    assert classes == {"pa": [0.7, 0.1], "pb": [0.2, 0.3], "pc": [0.1, 0.6]}
    assert shapes.values(specs["top_k"], PROBS, [0, 2]) == {"label": ["a|b", "c|b"]}


@pytest.mark.parametrize("shape, rows, message", [
    ("probability", {"label": ["0.2", "1.5"]}, "row 3: label '1.5' is not a probability in [0, 1]"),
    ("probability", {"label": ["0.2", "yes"]}, "row 3: label 'yes' is not a probability"),
    ("probability", {"label": ["nan", "0.1"]}, "is not a probability"),
    ("classes", {"pa": [0.5, 0.2], "pb": [0.5, 0.2], "pc": [0.0, 0.2]}, "row 3: the per-class columns sum to 0.6"),
    ("classes", {"pa": [0.5, -0.1], "pb": [0.5, 0.6], "pc": [0.0, 0.5]}, "row 3: pa"),
    ("top_k", {"label": ["a|b", "a|a"]}, "row 3: label 'a|a' is not 2 distinct labels"),
    ("top_k", {"label": ["a|b", "a|d"]}, "is not 2 distinct labels of ['a', 'b', 'c']"),
    ("top_k", {"label": ["a|b", "a"]}, "row 3: label 'a'"),
    ("top_k", {"label": ["a|b", "a b"]}, "joined by '|'"),
])
def test_validation_refuses_what_the_shape_cannot_hold(specs, shape, rows, message):
    frame = pd.DataFrame({"id": ["100", "101"], **rows})
    with pytest.raises(KitError) as error:
        submit.validate(specs[shape], frame, ["100", "101"], "test")
    assert message in str(error.value)


def test_read_back_gives_what_was_written(specs):
    for name, probs in (("classes", PROBS), ("top_k", PROBS)):
        spec = specs[name]
        frame = pd.DataFrame({"id": ["100", "101"], **shapes.values(spec, probs, probs.argmax(1))})
        back, decided = shapes.read_back(spec, frame, "sub.csv")
        assert ranked(back, 2).tolist() == ranked(probs, 2).tolist() and decided.tolist() == [0, 2]
    np.testing.assert_allclose(shapes.read_back(specs["classes"], frame.assign(pa=[0.7, 0.1], pb=[0.2, 0.3],
                                                                                pc=[0.1, 0.6]), "x")[0], PROBS)


# -- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("metric, labels, submission, check", [
    ("auc", ("a", "b"), 'columns = ["id", "label"]\n',
     lambda s: s["label"].between(0, 1).all() and not s["label"].isin([0, 1]).all()),
    ("logloss", ("a", "b", "c"), 'columns = ["id", "a", "b", "c"]\n',
     lambda s: np.allclose(s[["a", "b", "c"]].sum(1), 1, atol=1e-5)),
    ("map@2", ("a", "b", "c"), 'columns = ["id", "label"]\n',
     lambda s: all(len(set(v.split(" "))) == 2 for v in s["label"])),
])
def test_cv_train_predict_score_and_check_in_each_shape(tmp_path, monkeypatch, metric, labels, submission, check):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path, metric, submission, labels)
    out = kit(tmp_path, "cv", "--spec", spec, "--model", "tfidf", "--folds", "3", "--name", "tf")
    assert f"tf: {metric} " in out and "(OOF);" in out           # no threshold is applied
    scores = json.loads((tmp_path / "runs" / "tf" / "cv_scores.json").read_text())
    assert "tuned_threshold" not in scores and scores["higher_is_better"] == (metric != "logloss")
    kit(tmp_path, "train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    kit(tmp_path, "predict", "--spec", spec, "--run", "tf", "--out", "sub.csv")
    written = pd.read_csv(tmp_path / "sub.csv", dtype={"label": str} if metric.startswith("map") else None)
    assert check(written), written
    assert "valid for split test" in kit(tmp_path, "check", "--spec", spec, "--submission", "sub.csv")
    from_submission = kit(tmp_path, "score", "--spec", spec, "--pred", "sub.csv", "--split", "test")
    from_predictions = kit(tmp_path, "score", "--spec", spec, "--pred", "runs/tf/predictions-test.csv",
                           "--split", "test")
    first = lambda text: float(text.split()[1])          # "metric: value ..."
    assert first(from_submission) == pytest.approx(first(from_predictions), abs=1e-5)
    other = ["--spec", spec, "--model", "tfidf", "--name", "tf2", "--seed", "1"]
    kit(tmp_path, "cv", *other, "--folds", "3", "--no-baseline")
    kit(tmp_path, "train", *other)
    kit(tmp_path, "predict", "--spec", spec, "--run", "tf2", "--out", "sub2.csv")
    blended = kit(tmp_path, "blend", "tf", "tf2", "--spec", spec, "--split", "test", "--out", "blend.csv")
    assert "BLEND" in blended and check(pd.read_csv(tmp_path / "blend.csv", dtype=str if metric.startswith("map")
                                                    else None))


def test_threshold_is_refused_for_a_probability_submission(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = competition(tmp_path, "auc", 'columns = ["id", "label"]\n', ("a", "b"))
    kit(tmp_path, "train", "--spec", spec, "--model", "tfidf", "--name", "tf")
    result = CliRunner().invoke(main, ["predict", "--spec", str(spec), "--run", "tf", "--threshold", "0.3"])
    assert result.exit_code == 2 and "no threshold decides" in result.output


def test_kit_score_reads_a_label_submission_as_labels_are_read_everywhere(tmp_path):
    spec = write_toy_competition(tmp_path, test_rows=6)          # labels "0" and "1", metric f1
    (tmp_path / "test_labels.csv").write_text("id,label\n" + "".join(f"{100 + i},{i % 2}\n" for i in range(6)))
    (tmp_path / "sub.csv").write_text("id,label\n" + "".join(f"{100 + i},{i % 2}.0\n" for i in range(6)))
    out = kit(tmp_path, "score", "--spec", spec, "--pred", tmp_path / "sub.csv", "--truth", tmp_path / "test_labels.csv")
    assert out.startswith("f1: 1.0000")                    # "1.0" is the label "1"
