"""`kit blend`: simplex weights fitted on OOF rows, refusal of runs on other folds or specs,
the blended submission and blend folder, and the command through click."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kit.commands.main import main
from kit.core.errors import KitError
from kit.evaluation import blending
from kit.evaluation.folds import assign_folds
from kit.inputs import submit
from kit.inputs.data import load_rows, read_csv
from kit.inputs.spec import load_spec
from kit.workflows import blend as ensemble


def _probs_for(truth, good_rows, rng):
    """P(label 1) that is right and confident on good_rows, a coin flip elsewhere."""
    p = np.where(truth == 1, 0.85, 0.15)
    noise = rng.uniform(0.05, 0.95, len(truth))
    return np.where(good_rows, p, noise)


def fake_run(runs, spec, name, p_train, p_test, fold_seed=0, folds=3, fold=None, ids=None):
    """A run folder as `kit cv` + `kit predict` leave it: run.json, cv_scores.json, oof.csv,
    predictions-test.csv (probabilities given; labels at 0.5)."""
    rows, _ = load_rows(spec, "train")
    test, _ = load_rows(spec, "test")
    truth = np.asarray(rows.labels)
    fold = assign_folds(truth, folds, fold_seed) if fold is None else fold
    directory = runs / name
    directory.mkdir(parents=True)
    (directory / "run.json").write_text(json.dumps(
        {"key": f"key-{name}", "spec": {"name": spec.name, "fingerprint": spec.fingerprint(),
                                        "path": str(spec.path), "resolved": spec.describe()},
         "model": {"model": "fake"}}))
    (directory / "cv_scores.json").write_text(json.dumps(
        {"config": {"name": name, "folds": folds, "holdout": None, "fold_seed": fold_seed}}))

    def frame(ids_, p):
        p = np.stack([1 - p, p], 1) if p.ndim == 1 else p          # P(label 1), or one column per label
        columns = {f"p_{label}": p[:, j] for j, label in enumerate(spec.labels)}
        return pd.DataFrame({"id": ids_, "label": [spec.labels[j] for j in p.argmax(1)], **columns,
                             "decided": "fake"})
    oof = frame(ids or rows.ids, p_train)
    oof.insert(1, "true", [spec.labels[i] for i in truth])
    oof["fold"] = fold
    oof.to_csv(directory / "oof.csv", index=False)
    frame(test.ids, p_test).to_csv(directory / "predictions-test.csv", index=False)
    return directory


@pytest.fixture
def setup(tmp_path, toy):
    """The toy spec and two complementary fake runs: A is right on rows 0,1,4,5..., B on the others."""
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    truth = np.asarray(rows.labels)
    rng = np.random.default_rng(0)
    even = np.arange(len(truth)) % 4 < 2          # both labels in each half (the toy alternates)
    runs = tmp_path / "runs"
    for name, good in (("a", even), ("b", ~even)):
        fake_run(runs, spec, name, _probs_for(truth, good, rng), rng.uniform(0, 1, 8))
    return spec, runs, truth


def test_weights_are_non_negative_and_sum_to_one(monkeypatch):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 300)
    for k in (2, 3, 5):
        probs = [rng.dirichlet([1, 1, 1], 300) for _ in range(k)]
        for metric in ("macro_f1", "accuracy"):
            weights, _, _, _ = blending.fit_weights(metric, truth, probs)
            assert (weights >= 0).all() and weights.sum() == pytest.approx(1)
        slsqp, how = blending.fit_log_loss(truth, probs)
        assert how == "log loss (SLSQP)"
        monkeypatch.setitem(sys.modules, "scipy", None)        # as if scipy were not installed
        projected, how = blending.fit_log_loss(truth, probs)
        monkeypatch.delitem(sys.modules, "scipy")
        assert how == "log loss (projected gradient)" and projected.min() >= 0
        assert projected.sum() == pytest.approx(1)
        true_probs = blending._true_probs(truth, probs)           # both reach the convex optimum
        assert blending.log_loss(projected, true_probs) == pytest.approx(blending.log_loss(slsqp, true_probs), abs=1e-5)


def test_simplex_grid_and_projection():
    points = list(blending.simplex_grid(3, 0.25))
    assert len(points) == 15 and all(p.min() >= 0 and p.sum() == pytest.approx(1) for p in points)
    assert blending.project_simplex(np.array([2.0, 0.0, -1.0])).tolist() == [1.0, 0.0, 0.0]
    assert blending.project_simplex(np.array([0.2, 0.2, 0.2])) == pytest.approx([1 / 3] * 3)


def test_blend_beats_the_best_single_run(setup):
    spec, runs, _ = setup
    summary = ensemble.blend(spec, ["a", "b"], runs_dir=runs)
    best_single = max(m["score"] for m in summary["runs"])
    assert summary["blend"]["score"] >= best_single
    assert summary["blend"]["score"] > best_single + 0.05         # complementary runs: a real gain
    assert all(w > 0.2 for w in summary["weights"]) and sum(summary["weights"]) == pytest.approx(1)
    assert "optimistic" in ensemble.format_blend(summary)


def test_multiclass_blend(tmp_path):
    """Three labels (macro_f1 by default): argmax decides, no threshold; three runs, each right
    on a random 60% of the rows."""
    from conftest import write_spec
    lines = ["id,text,label"] + [f"{i},text {i},{i % 3}" for i in range(30)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.csv").write_text("id,text\n" + "".join(f"{100 + i},t {i}\n" for i in range(8)))
    spec = load_spec(write_spec(tmp_path, labels='["0", "1", "2"]'))
    rng = np.random.default_rng(2)
    truth = np.arange(30) % 3
    for name in ("x", "y", "z"):
        voted = np.where(rng.random(30) < 0.6, truth, rng.integers(0, 3, 30))
        probs = 0.5 * rng.dirichlet([1, 1, 1], 30) + 0.5 * np.eye(3)[voted]
        fake_run(tmp_path / "runs", spec, name, probs, rng.dirichlet([1, 1, 1], 8))
    summary = ensemble.blend(spec, ["x", "y", "z"], split="test", out=tmp_path / "s.csv", runs_dir=tmp_path / "runs")
    assert spec.metric == "macro_f1" and summary["threshold"] is None and summary["blend"]["tuned"] is None
    assert summary["blend"]["score"] >= max(m["score"] for m in summary["runs"])
    assert "grid" in " ".join(t["how"] for t in summary["tried"])
    assert read_csv(tmp_path / "s.csv")["label"].isin(["0", "1", "2"]).all()


def test_runs_on_other_folds_are_refused(setup):
    spec, runs, truth = setup
    p = np.full(len(truth), 0.5)
    fake_run(runs, spec, "other-seed", p, np.full(8, 0.5), fold_seed=1)
    with pytest.raises(KitError, match=r"runs a and other-seed .*fold_seed 0 vs 1.*--fold-seed") as error:
        ensemble.blend(spec, ["a", "other-seed"], runs_dir=runs)
    assert "\n" not in str(error.value)
    moved = assign_folds(truth, 3, 0)
    moved[[0, 1]] = moved[[1, 0]] if moved[0] != moved[1] else (moved[[0, 1]] + 1) % 3
    fake_run(runs, spec, "moved", p, np.full(8, 0.5), fold=moved)
    with pytest.raises(KitError, match=r"runs a and moved .*fold column differs on 2 rows"):
        ensemble.blend(spec, ["a", "moved"], runs_dir=runs)
    ids = load_rows(spec, "train")[0].ids
    fake_run(runs, spec, "shuffled", p, np.full(8, 0.5), ids=ids[::-1])
    with pytest.raises(KitError, match=r"runs a and shuffled .*ids differ or are in another order"):
        ensemble.blend(spec, ["a", "shuffled"], runs_dir=runs)


def test_runs_of_another_spec_are_refused(setup):
    spec, runs, _ = setup
    config = json.loads((runs / "b" / "run.json").read_text())
    config["spec"]["fingerprint"] = "0123456789abcdef"
    config["spec"]["resolved"]["instruction"] = "something else"
    (runs / "b" / "run.json").write_text(json.dumps(config))
    with pytest.raises(KitError, match=r"run b was made for another spec"):
        ensemble.blend(spec, ["a", "b"], runs_dir=runs)


def test_missing_predictions_is_one_line(setup, tmp_path):
    spec, runs, _ = setup
    (runs / "b" / "predictions-test.csv").unlink()
    with pytest.raises(KitError) as error:
        ensemble.blend(spec, ["a", "b"], split="test", out=tmp_path / "submit.csv", runs_dir=runs)
    message = str(error.value)
    assert "\n" not in message and "run b" in message
    assert "python -m kit predict --split test --run b" in message
    assert not (tmp_path / "submit.csv").exists()


def test_blended_submission_validates_and_blend_folder_blends_again(setup, tmp_path):
    spec, runs, _ = setup
    out = tmp_path / "sub" / "submit.csv"
    summary = ensemble.blend(spec, ["a", "b"], split="test", out=out, name="ab", runs_dir=runs)
    test_rows, _ = load_rows(spec, "test")
    written = read_csv(out)
    submit.validate(spec, written, test_rows.ids, "test")
    assert written["id"].tolist() == test_rows.ids
    folder = runs / "ab"
    assert json.loads((folder / "blend.json").read_text())["weights"] == summary["weights"]
    members = read_csv(runs / "a" / "oof.csv").columns.tolist()         # written in the older form: "label"
    assert read_csv(folder / "oof.csv").columns.tolist() == ["pred" if c == "label" else c for c in members]
    blended = read_csv(folder / "predictions-test.csv")
    expected = sum(w * read_csv(runs / r / "predictions-test.csv")["p_1"].astype(float)
                   for w, r in zip(summary["weights"], "ab"))
    assert blended["p_1"].astype(float).to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-5)
    assert blended["label"].tolist() == written["label"].tolist()
    again = ensemble.blend(spec, [str(folder), "a"], runs_dir=runs)   # a blend is a run like the others
    assert again["blend"]["score"] >= summary["blend"]["score"] - 1e-9
    with pytest.raises(KitError, match="holds another run or blend"):
        ensemble.blend(spec, ["a", str(folder)], name="ab", runs_dir=runs)


def test_blend_of_real_tfidf_runs(tmp_path, toy):
    from kit.core.settings import ModelArgs, TrainArgs
    from kit.workflows.cv import cross_validate
    from kit.workflows.fit import train_run
    from kit.workflows.predict import predict_split
    spec, runs = load_spec(toy), tmp_path / "runs"
    names = []
    for seed in (0, 1):
        scores = cross_validate(spec, ModelArgs(model="tfidf"), TrainArgs(seed=seed), folds=3, runs=runs)
        train_run(spec, ModelArgs(model="tfidf"), TrainArgs(seed=seed), runs=runs)
        predict_split(spec, "test", scores["config"]["name"], out=tmp_path / "single.csv", runs=runs)
        names.append(scores["config"]["name"])
    summary = ensemble.blend(spec, names, split="test", out=tmp_path / "blend.csv", runs_dir=runs)
    assert summary["blend"]["score"] >= max(m["score"] for m in summary["runs"])
    assert read_csv(tmp_path / "blend.csv")["id"].tolist() == load_rows(spec, "test")[0].ids


def test_cli_blend(setup, tmp_path, monkeypatch, toy):
    monkeypatch.chdir(tmp_path)                   # runs/ and submissions/ are relative to here
    runner = CliRunner()
    result = runner.invoke(main, ["blend", "--spec", str(toy), "a", "b", "--split", "test", "--name", "ab"])
    assert result.exit_code == 0, result.output
    assert "| BLEND |" in result.output and "optimistic" in result.output
    assert (tmp_path / "submissions" / "submit.csv").is_file() and (tmp_path / "runs" / "ab" / "blend.json").is_file()
    result = runner.invoke(main, ["blend", "--spec", str(toy), "a", "nope"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "error: run 'nope'" in result.output
    assert "blend" in runner.invoke(main, ["--help"]).output


def test_a_run_named_twice_by_two_spellings_is_refused(setup, tmp_path):
    """`kit blend A runs/A` is one run twice (its name and its path), as `A A` is."""
    spec, runs, _ = setup
    with pytest.raises(KitError, match=r"'a' and '.*runs/a' are the same run"):
        ensemble.read_runs(spec, ["a", str(runs / "a")], runs)
    with pytest.raises(KitError, match="at least two different runs"):
        ensemble.read_runs(spec, ["a", "a"], runs)


def test_a_cv_scores_file_the_kit_did_not_write_is_left_beside_the_submission(tmp_path):
    mine = tmp_path / "cv_scores.json"
    mine.write_text('{"my": "notes"}')
    submit.write_scores_beside(tmp_path / "submit.csv", None)             # would delete a kit-written one
    assert mine.read_text() == '{"my": "notes"}'
    kit_written = tmp_path / "run-scores.json"
    kit_written.write_text('{"run_key": "k", "f1": 0.5}')
    submit.write_scores_beside(tmp_path / "submit.csv", kit_written)      # nor replaced by the run's
    assert mine.read_text() == '{"my": "notes"}'
    mine.write_text('{"run_key": "old"}')                                  # an older run's: replaced
    submit.write_scores_beside(tmp_path / "submit.csv", kit_written)
    assert json.loads(mine.read_text())["run_key"] == "k"
    submit.write_scores_beside(tmp_path / "submit.csv", None)
    assert not mine.exists()


def test_the_nested_blends_fold_weights_never_see_that_folds_labels():
    """Fold k's weights (and threshold) are fitted on the other folds' rows alone: changing fold k's
    labels leaves them as they were, and they equal a fit on exactly those rows."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 300)
    fold = np.arange(300) % 3
    good = np.clip(np.where(truth == 1, 0.7, 0.3) + rng.normal(0, 0.2, 300), 0.01, 0.99)
    probs = [np.stack([1 - p, p], 1) for p in (good, rng.uniform(0.01, 0.99, 300))]
    nested = blending.nested_blend("f1", truth, probs, fold)
    for k in range(3):
        outside = fold != k
        expected = blending.fit_weights("f1", truth[outside], [p[outside] for p in probs])[0]
        assert nested["weights"][k] == pytest.approx(expected.tolist(), abs=1e-6)
    flipped = truth.copy()
    flipped[fold == 0] = 1 - flipped[fold == 0]
    again = blending.nested_blend("f1", flipped, probs, fold)
    assert again["weights"][0] == nested["weights"][0] and again["weights"][1] != nested["weights"][1]
    assert blending.nested_blend("f1", truth, probs, np.where(fold == 0, 0, -1)) is None   # a holdout: one fold


def test_the_nested_score_is_the_metric_of_each_fold_blended_and_decided_without_it():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 2, 240)
    fold = np.arange(240) % 4
    probs = [np.stack([1 - p, p], 1) for p in (np.clip(truth * 0.5 + rng.uniform(0, 0.5, 240), 0, 1),
                                                rng.uniform(0, 1, 240))]
    nested = blending.nested_blend("f1", truth, probs, fold)
    decided = np.zeros(240, int)
    for k in range(4):
        outside = fold != k
        weights, _, result, _ = blending.fit_weights("f1", truth[outside], [p[outside] for p in probs])
        blended = blending.combine([p[fold == k] for p in probs], weights)
        decided[fold == k] = blended[:, 1] >= result["threshold"]
    from sklearn.metrics import f1_score
    assert nested["score"] == pytest.approx(f1_score(truth, decided))
    optimistic = blending.fit_weights("f1", truth, probs)[2]["score"]
    assert nested["score"] <= optimistic + 1e-9


def test_the_blend_command_prints_and_records_the_nested_score(setup, tmp_path, monkeypatch, toy):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["blend", "--spec", str(toy), "a", "b", "--name", "ab"])
    assert result.exit_code == 0, result.output
    assert "nested BLEND f1: " in result.output and "judge the blend by its nested score" in result.output
    scores = json.loads((tmp_path / "runs" / "ab" / "cv_scores.json").read_text())
    summary = json.loads((tmp_path / "runs" / "ab" / "blend.json").read_text())
    assert scores["nested_blend"] is True and scores["f1"] == summary["nested"]["score"]
