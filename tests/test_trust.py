"""Runs you can trust: every silent-wrong-submission case found in review, and every way a run
folder from someone else could have run code. Each test failed on the kit before runs.py."""
import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli import TFIDF, ok, one_line_error, runs_of
from conftest import write_spec, write_toy_competition

from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.registry import load_model, make_model
from kit.runs.folder import load_run
from kit.workflows import cv as kit_cv
from kit.workflows import predict as pipeline


class Marker:
    """A pickle payload: loading it creates a file. Nothing may ever load it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# -- 1. predict progress made by an older model --------------------------------------------------
class Exploding:
    """Wraps a model: the second predict() call fails, as a kill or a full disk would."""

    def __init__(self, model):
        self.model, self.model_id, self.calls = model, model.model_id, 0
        self.prediction_type, self.whole_split = model.prediction_type, model.whole_split

    def predict(self, rows, mode="score", **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("killed")
        return self.model.predict(rows, mode, **kwargs)


def _poison(progress):
    """Make the saved chunks say label 0 everywhere: reusing them would be visible."""
    saved = json.loads(progress.read_text())
    for chunk in saved["chunks"].values():
        chunk["probs"] = [[1.0, 0.0]] * len(chunk["probs"])
    progress.write_text(json.dumps(saved))


def test_predict_never_resumes_chunks_of_an_older_model(here, monkeypatch):
    spec_path = write_toy_competition(here, test_rows=8)
    ok("train", "--spec", spec_path, *TFIDF)
    (run,) = runs_of(here)
    fresh = ok("predict", "--spec", spec_path) and (run / "predictions-test.csv").read_text()
    monkeypatch.setattr(pipeline, "PREDICT_CHUNK", 4)
    spec = load_spec(spec_path)
    rows = load_rows(spec, "test")[0]
    progress = run / ".predict-test-score.progress.json"
    with pytest.raises(RuntimeError):
        pipeline.predict_resumable(Exploding(load_model(run / "model")), rows, "score", progress)
    _poison(progress)
    saved = progress.read_text()
    ok("train", "--spec", spec_path, *TFIDF)           # the same run trained again: a new model
    assert not progress.exists()                        # train clears the run's predict progress
    progress.write_text(saved)                          # and even if the file came back...
    output = ok("predict", "--spec", spec_path)
    assert "resuming" not in output
    assert (run / "predictions-test.csv").read_text() == fresh


def test_another_chunk_size_starts_fresh_instead_of_crashing(here, monkeypatch):
    spec_path = write_toy_competition(here, test_rows=8)
    ok("train", "--spec", spec_path, *TFIDF)
    (run,) = runs_of(here)
    model = load_model(run / "model")
    rows = load_rows(load_spec(spec_path), "test")[0]
    progress = run / ".predict-test-score.progress.json"
    with pytest.raises(RuntimeError):
        pipeline.predict_resumable(Exploding(model), rows, "score", progress, chunk=3)
    _poison(progress)
    result = pipeline.predict_resumable(model, rows, "score", progress, chunk=4)
    np.testing.assert_allclose(result.probs, model.predict(rows).probs)


# -- 2. the wrong model ---------------------------------------------------------------------------
def _two_competitions(root, same_name=True):
    a, b = root / "a", root / "b"
    a.mkdir(), b.mkdir()
    write_toy_competition(a)
    write_toy_competition(b, rows=30)
    if not same_name:
        write_spec(b, name="other")
    return a / "competition.toml", b / "competition.toml"


def test_predict_takes_the_latest_run_of_this_spec_not_of_any(here):
    spec_a, spec_b = _two_competitions(here, same_name=False)
    ok("train", "--spec", spec_a, *TFIDF)
    ok("train", "--spec", spec_b, *TFIDF)                 # the newest run overall is b's
    out = ok("predict", "--spec", spec_a)
    assert "runs/toy-tfidf-" in out and "other" not in out


def test_a_run_of_another_competition_is_refused(here):
    spec_a, spec_b = _two_competitions(here, same_name=False)
    text = spec_b.read_text().replace("Is the text about animals?", "Is the text about money?")
    spec_b.write_text(text)                                # same label words, another task
    ok("train", "--spec", spec_b, *TFIDF)
    (run_b,) = runs_of(here)
    out = one_line_error("predict", "--spec", spec_a, "--run", run_b.name)
    assert run_b.name in out and "instruction" in out and "--allow-spec-change" in out
    assert "error" not in ok("predict", "--spec", spec_a, "--run", run_b.name, "--allow-spec-change")


def test_two_specs_with_the_same_name_never_share_a_run_folder(here):
    spec_a, spec_b = _two_competitions(here, same_name=True)
    ok("train", "--spec", spec_a, *TFIDF)
    ok("train", "--spec", spec_b, *TFIDF)
    runs = runs_of(here)
    assert len(runs) == 2                                  # b did not replace a's model
    ok("predict", "--spec", spec_a, "--out", "a.csv")
    ok("predict", "--spec", spec_b, "--out", "b.csv")
    assert len(pd.read_csv(here / "a.csv")) == len(pd.read_csv(here / "b.csv")) == 8


def test_a_named_run_is_never_overwritten_by_other_settings(here):
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF, "--name", "mine")
    before = (here / "runs" / "mine" / "run.json").read_text()
    out = one_line_error("cv", "--spec", spec_path, "--name", "mine", "--lr", "0.5", "--folds", "2",
                         "--no-baseline", "--max-steps", "1")
    assert "other settings" in out and "--overwrite" in out
    assert (here / "runs" / "mine" / "run.json").read_text() == before


# -- 3. cross-validation reuse --------------------------------------------------------------------
def _cv(spec_path, root, **kwargs):
    return kit_cv.cross_validate(load_spec(spec_path), ModelArgs(model="tfidf"), kwargs.pop("train", TrainArgs()),
                                 folds=3, runs=root / "runs", **kwargs)


def test_finished_folds_of_other_cv_settings_are_not_reused(here, monkeypatch):
    spec_path = write_toy_competition(here)
    _cv(spec_path, here, fold_seed=0)
    calls = []
    real = kit_cv.make_model
    monkeypatch.setattr(kit_cv, "make_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    scores = _cv(spec_path, here, fold_seed=1)
    assert len(calls) == 4                                 # every fold fitted again
    fresh = _cv(spec_path, here / "clean", fold_seed=1)
    assert scores["f1"] == fresh["f1"] and scores["per_fold"] == fresh["per_fold"]


def test_the_training_seed_does_not_move_the_folds(here):
    spec_path = write_toy_competition(here)
    _cv(spec_path, here / "s0", train=TrainArgs(seed=0))
    _cv(spec_path, here / "s1", train=TrainArgs(seed=1))
    folds = [pd.read_csv(runs_of(root)[0] / "oof.csv")["fold"].tolist() for root in (here / "s0", here / "s1")]
    assert folds[0] == folds[1]


def test_threshold_oof_refuses_scores_of_other_settings(here):
    spec_path = write_toy_competition(here)
    ok("cv", "--spec", spec_path, *TFIDF, "--folds", "3")
    ok("train", "--spec", spec_path, *TFIDF)
    ok("predict", "--spec", spec_path, "--threshold", "oof")   # same settings: the cv run's folder
    (run,) = runs_of(here)
    scores = json.loads(run.joinpath("cv_scores.json").read_text())
    scores["run_key"] = "someone-else"
    run.joinpath("cv_scores.json").write_text(json.dumps(scores))
    assert "not made by this run's settings" in one_line_error("predict", "--spec", spec_path, "--threshold", "oof")


def test_a_fold_checkpoint_of_other_settings_is_not_resumed(tiny_llama, toy, tmp_path):
    spec = load_spec(toy)
    rows = load_rows(spec, "train")[0]
    args = TrainArgs(max_steps=2, batch_size=8, checkpoint_every=1)
    checkpoint = tmp_path / "fold.ckpt"

    def fit(key):
        model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama, lora_layers=0), args)
        return model.fit(rows, checkpoint=checkpoint, resume=True, checkpoint_key=key).loss_log
    straight = fit("settings-a")                           # leaves the step-1 checkpoint behind
    assert checkpoint.exists()
    saved = torch.load(checkpoint, weights_only=True)
    saved["loss_log"] = [123.0]                            # a resume would carry this into the log
    torch.save(saved, checkpoint)
    assert fit("settings-b") == straight                    # other key: trained from the start
    torch.save(saved, checkpoint)
    assert fit("settings-a") == [123.0, straight[1]]        # same key: resumed at step 1


# -- 8. writing the submission -------------------------------------------------------------------
@pytest.mark.parametrize("out, message", [("outdir", "is a directory"), ("newdir/", "is a directory"),
                                          ("afile/submit.csv", "is a file, not a folder")])
def test_unwritable_submission_paths_fail_before_predicting(here, out, message):
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF)
    (here / "outdir").mkdir()
    (here / "afile").write_text("x")
    assert message in one_line_error("predict", "--spec", spec_path, "--out", out)
    assert not list(runs_of(here)[0].glob("predictions-*"))     # no prediction work was done


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in read-only folders")
def test_read_only_folder_fails_before_predicting(here):
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF)
    (here / "ro").mkdir()
    (here / "ro").chmod(0o555)
    assert "permission denied" in one_line_error("predict", "--spec", spec_path, "--out", "ro/submit.csv")


def test_outputs_are_readable_by_a_teammate_and_no_stale_scores_stay(here):
    spec_path = write_toy_competition(here)
    ok("cv", "--spec", spec_path, *TFIDF, "--folds", "3", "--name", "with-cv")
    ok("train", "--spec", spec_path, *TFIDF, "--name", "with-cv")
    ok("predict", "--spec", spec_path, "--run", "with-cv")
    assert (here / "submissions" / "cv_scores.json").exists()
    ok("train", "--spec", spec_path, *TFIDF, "--seed", "3")       # another run, never cross-validated
    ok("predict", "--spec", spec_path)
    assert not (here / "submissions" / "cv_scores.json").exists()
    mode = (here / "submissions" / "submit.csv").stat().st_mode
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


# -- security: nothing in a run folder runs code ---------------------------------------------------
def test_a_crafted_pickle_in_a_run_folder_never_runs(here):
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF)
    (run,) = runs_of(here)
    marker = here / "pwned"
    (run / "model" / "tfidf.pkl").write_bytes(pickle.dumps(Marker(marker)))
    ok("predict", "--spec", spec_path)                      # the model loads from JSON + npz
    old_style = here / "runs" / "old"                       # an old-style folder: pickle only
    (old_style / "model").mkdir(parents=True)
    (old_style / "model" / "tfidf.pkl").write_bytes(pickle.dumps(Marker(marker)))
    one_line_error("predict", "--spec", spec_path, "--run", "old")
    assert not marker.exists()


def test_a_crafted_npz_with_objects_is_refused(here):
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF)
    (run,) = runs_of(here)
    marker = here / "pwned"
    np.savez(run / "model" / "tfidf.npz", idf=np.array([Marker(marker)], dtype=object))
    assert "not a readable TF-IDF model" in one_line_error("predict", "--spec", spec_path)
    assert not marker.exists()


def test_a_crafted_checkpoint_never_runs(here):
    from kit.engine.loop import load_checkpoint
    marker = here / "pwned"
    torch.save({"key": "k", "payload": Marker(marker)}, here / "checkpoint.pt")
    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    assert load_checkpoint(here / "checkpoint.pt", "k", {"p": parameter}, optimizer, scheduler) == (0, [])
    assert not marker.exists()


def test_trust_remote_code_comes_from_the_command_line_only(here, tiny_llama):
    spec_path = write_toy_competition(here)
    spec = load_spec(spec_path)
    model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama), TrainArgs(max_steps=1, batch_size=8))
    model.fit(load_rows(spec, "train")[0]).save(here / "saved")
    state = json.loads((here / "saved" / "kit_model.json").read_text())
    state["args"]["trust_remote_code"] = True
    state["trust_remote_code"] = True
    (here / "saved" / "kit_model.json").write_text(json.dumps(state))
    assert load_model(here / "saved").trust_remote_code is False
    (here / "sweep.toml").write_text('[[config]]\nname = "x"\ntrust_remote_code = true\n')
    assert "unknown option 'trust_remote_code'" in one_line_error("cv", "--spec", spec_path, "--sweep", "sweep.toml")


# -- one recorded configuration per run -------------------------------------------------------------
def test_run_json_records_the_effective_configuration(here):
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF, "--max-length", "48", "--seed", "7")
    run = load_run(runs_of(here)[0].name)
    config = run.config
    assert config["spec"]["resolved"]["max_length"] == 48 and config["train"]["seed"] == 7
    assert config["data"]["fingerprint"] and config["versions"]["torch"] and config["device"].startswith("cpu")
    assert run.name.endswith(config["key"][:6])
    (here / "train.csv").write_text((here / "train.csv").read_text() + "99,a new row,1\n")
    ok("train", "--spec", spec_path, *TFIDF, "--max-length", "48", "--seed", "7")
    assert len(runs_of(here)) == 2                         # new data: a new run, the old one intact


def test_a_run_trained_with_max_length_still_predicts(here):
    """--max-length changes the recorded spec, not the spec's version: predict accepts the run."""
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF, "--max-length", "48")
    assert "submission:" in ok("predict", "--spec", spec_path)


def test_a_sweep_value_outside_the_choices_is_refused(here):
    spec_path = write_toy_competition(here)
    (here / "sweep.toml").write_text('[[config]]\nname = "x"\nprecision = "half"\n')
    assert "precision = 'half': choose one of" in one_line_error("cv", "--spec", spec_path, "--sweep", "sweep.toml")
