"""Runs you can trust, round two: a run borrowed for something it was not made for. What a run was
trained on (its training file, its labels, its spec) is compared before its probabilities are used
to predict, serve, pseudo-label, teach or blend; an empty API key never opens a server; labels are
drawn as written; a served text that lacks the input template's literal text is flagged; fold-only
runs serve like `kit predict` serves them. Each test failed on the kit before this round.
TF-IDF runs only."""
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli import TFIDF, ok, one_line_error, runs_of
from click.testing import CliRunner
from conftest import write_spec, write_toy_competition
from test_serve import Served, classify, probabilities

from kit.commands import serving as serving_commands
from kit.commands.serving import serve
from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.models.base import MODEL_FILE
from kit.outputs import report as kr
from kit.outputs.export import export_run
from kit.outputs.serve import WARNING_HEADER, fits_template, template_literals
from kit.runs.folder import load_run
from kit.workflows import blend as ensemble
from kit.workflows import levers
from kit.workflows.cv import cross_validate
from kit.workflows.predict import predict_split


def _flip_labels(directory):
    """The same ids and texts, every label the other one: the same labels mean other things."""
    path = Path(directory) / "train.csv"
    frame = pd.read_csv(path, dtype=str)
    frame["label"] = [str(1 - int(v)) for v in frame["label"]]
    frame.to_csv(path, index=False)


def _competition(root, name, labels=None):
    """The toy competition in root/name; with labels, a spec of those labels and a training file
    cycling through them (the same instruction and template: only the label set differs)."""
    directory = root / name
    directory.mkdir()
    spec = write_toy_competition(directory, rows=36)
    if labels:
        spec = write_spec(directory, labels=json.dumps(labels))
        frame = pd.read_csv(directory / "train.csv", dtype=str)
        frame["label"] = [labels[i % len(labels)] for i in range(len(frame))]
        frame.to_csv(directory / "train.csv", index=False)
    return spec


# -- 4. an empty API key from the environment --------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_an_empty_api_key_in_the_environment_is_refused_like_an_empty_option(here, monkeypatch, host):
    spec_path = write_toy_competition(here)
    ok("train", "--spec", spec_path, *TFIDF)

    def never(*_args, **_kwargs):
        raise AssertionError("the server started")
    monkeypatch.setattr(serving_commands, "run_server", never)
    for env, options in (({"KIT_API_KEY": ""}, []), ({}, ["--api-key", ""]), ({"KIT_API_KEY": "\t "}, [])):
        result = CliRunner().invoke(serve, ["--spec", str(spec_path), "--host", host, "--port", "0", *options],
                                    env=env)
        assert result.exit_code == 2, (env, options, result.output)
        assert "error: --api-key (or KIT_API_KEY) is empty" in result.output
        assert "Traceback" not in result.output


# -- 5. a run of another training file -----------------------------------------------------------------

def test_predict_refuses_a_run_of_another_training_file_unless_told(here):
    spec_a = _competition(here, "a")
    spec_b = _competition(here, "b")
    _flip_labels(here / "b")                      # the same spec text: only the data says "0" means animals
    assert load_spec(spec_a).fingerprint() == load_spec(spec_b).fingerprint()
    ok("train", "--spec", spec_b, *TFIDF)
    (run_b,) = runs_of(here)
    out = one_line_error("predict", "--spec", spec_a, "--run", run_b.name)
    assert f"run runs/{run_b.name} was trained on another training file (" in out
    assert str(here / "b" / "train.csv") in out and "--allow-spec-change" in out
    assert "error" not in ok("predict", "--spec", spec_a, "--run", run_b.name, "--allow-spec-change")
    # the same for kit serve, which uses the same check
    result = CliRunner().invoke(serve, ["--spec", str(spec_a), "--run", run_b.name, "--port", "0"])
    assert result.exit_code == 2 and "another training file" in result.output


# -- 6. --allow-spec-change never accepts another label set ----------------------------------------------

@pytest.mark.parametrize("count", [3, 12])
def test_allow_spec_change_never_accepts_another_label_set(here, count):
    spec_a = _competition(here, "a")
    labels = [str(i) for i in range(count)]
    spec_b = _competition(here, "b", labels)
    ok("train", "--spec", spec_b, *TFIDF)
    (run_b,) = runs_of(here)
    for flags in ([], ["--allow-spec-change"]):
        out = one_line_error("predict", "--spec", spec_a, "--run", run_b.name, *flags)
        assert f"was trained on labels {labels}, not {spec_a}'s ['0', '1']" in out
        assert "--allow-spec-change never accepts another label set" in out
    assert not (here / "submissions").exists() or not list((here / "submissions").iterdir())


def test_the_same_labels_in_another_order_are_another_label_set(here):
    spec_a = _competition(here, "a")
    spec_b = _competition(here, "b", ["1", "0"])
    ok("train", "--spec", spec_b, *TFIDF)
    (run_b,) = runs_of(here)
    out = one_line_error("predict", "--spec", spec_a, "--run", run_b.name, "--allow-spec-change")
    assert "labels ['1', '0'], not" in out


# -- 7. pseudo-labels, teachers and blends from what another run learned ---------------------------------

def test_pseudo_labels_from_a_run_of_other_data_or_labels_are_refused(here):
    spec_a = _competition(here, "a")
    spec_b = _competition(here, "b")
    spec_c = _competition(here, "c", ["0", "1", "2"])
    _flip_labels(here / "b")
    for spec, name in ((spec_b, "flipped"), (spec_c, "three")):
        ok("train", "--spec", spec, *TFIDF, "--name", name)
        ok("predict", "--spec", spec, "--run", name, "--out", here / f"{name}.csv")
    # the test split's ids are the same everywhere: only what the runs learned differs
    out = one_line_error("train", "--spec", spec_a, *TFIDF, "--pseudo", "flipped:test", "--pseudo-threshold", 0.5)
    assert "--pseudo flipped:test: run flipped was trained on another training file (" in out
    out = one_line_error("train", "--spec", spec_a, *TFIDF, "--pseudo", "three:test", "--pseudo-threshold", 0.5)
    assert "--pseudo three:test: run three: it was trained on labels ['0', '1', '2']" in out
    ok("train", "--spec", spec_a, *TFIDF, "--name", "mine")
    ok("predict", "--spec", spec_a, "--run", "mine", "--out", here / "mine.csv")
    ok("train", "--spec", spec_a, *TFIDF, "--pseudo", "mine:test", "--pseudo-threshold", 0.5, "--name", "student")


def test_a_teacher_of_other_data_or_labels_is_refused(here):
    spec_a = load_spec(_competition(here, "a"))
    spec_b = load_spec(_competition(here, "b"))
    spec_c = load_spec(_competition(here, "c", ["0", "1", "2"]))
    _flip_labels(here / "b")
    cross_validate(spec_b, ModelArgs(model="tfidf"), TrainArgs(), folds=3, name="flipped")
    cross_validate(spec_c, ModelArgs(model="tfidf"), TrainArgs(), folds=3, name="three")
    rows, _ = load_rows(spec_a, "train")
    with pytest.raises(KitError, match=r"--teacher flipped: run flipped was trained on another training file"):
        levers.teacher_oof(spec_a, rows, "flipped")
    with pytest.raises(KitError, match=r"--teacher three: run three: it was trained on labels \['0', '1', '2'\]"):
        levers.teacher_oof(spec_a, rows, "three")
    cross_validate(spec_a, ModelArgs(model="tfidf"), TrainArgs(), folds=3, name="mine")
    probs, _ = levers.teacher_oof(spec_a, rows, "mine")
    assert probs.shape == (len(rows), 2)


def test_blend_refuses_a_run_of_another_training_file_and_records_its_own(here):
    spec_a = load_spec(_competition(here, "a"))
    spec_b = load_spec(_competition(here, "b"))
    _flip_labels(here / "b")
    cross_validate(spec_a, ModelArgs(model="tfidf"), TrainArgs(), folds=3, name="mine")
    cross_validate(spec_a, ModelArgs(model="tfidf"), TrainArgs(seed=1), folds=3, name="mine2")
    cross_validate(spec_b, ModelArgs(model="tfidf"), TrainArgs(), folds=3, name="flipped")
    with pytest.raises(KitError, match=r"blend: run flipped was trained on another training file"):
        ensemble.blend(spec_a, ["mine", "flipped"])
    summary = ensemble.blend(spec_a, ["mine", "mine2"], name="both")
    blended = load_run(summary["directory"])
    assert blended.config["data"] == load_run("mine").config["data"]      # so it can teach and be checked
    rows, _ = load_rows(spec_a, "train")
    levers.teacher_oof(spec_a, rows, "both")
    # a blend folder written before blends recorded their data answers for its members
    config = json.loads((blended.directory / "run.json").read_text())
    del config["data"]
    (blended.directory / "run.json").write_text(json.dumps(config))
    levers.teacher_oof(spec_a, rows, "both")
    with pytest.raises(KitError, match="another training file"):
        levers.teacher_oof(spec_b, load_rows(spec_b, "train")[0], "both")


# -- 17. labels with $ in the report ---------------------------------------------------------------------

def test_report_draws_dollar_labels_as_written(here, monkeypatch):
    directory = here / "prices"
    directory.mkdir()
    write_toy_competition(directory)
    labels = ["$0-$50", "$50+"]
    spec_path = write_spec(directory, labels=json.dumps(labels))
    frame = pd.read_csv(directory / "train.csv", dtype=str)
    frame["label"] = [labels[int(v)] for v in frame["label"]]
    frame.to_csv(directory / "train.csv", index=False)
    spec = load_spec(spec_path)
    cross_validate(spec, ModelArgs(model="tfidf"), TrainArgs(), folds=3, name="prices")
    drawn = []
    image = kr._image

    def capture(figure, alt):              # every text matplotlib is asked to draw, as it will draw it
        for text in figure.findobj(lambda artist: hasattr(artist, "get_text") and hasattr(artist, "_preprocess_math")):
            if text.get_text():
                drawn.append(text._preprocess_math(text.get_text()))
        return image(figure, alt)
    monkeypatch.setattr(kr, "_image", capture)
    page = kr.write_report([here / "runs" / "prices"], None, here / "report.html").read_text()
    assert "could not draw" not in page
    confusion = page[page.index('id="run-1-confusion"'):page.index('id="run-1-threshold"')]
    calibration = page[page.index('id="run-1-calibration"'):page.index('id="run-1-loss"')]
    assert "data:image/png;base64," in confusion and "data:image/png;base64," in calibration
    assert ("$0-$50", False) in drawn and ("$50+", False) in drawn       # tick labels, as written
    assert all(not math for _, math in drawn)                            # nothing read as math text
    assert any("P($50+)" in text for text, _ in drawn)


# -- 18. a served text that lacks the input template's literal text ----------------------------------------

def test_template_shape_by_hand():
    pieces = template_literals("title:{title},abstract:{abstract}")
    assert pieces == ["title:", ",abstract:", ""]
    assert fits_template("title:Cats,abstract:They sleep.", pieces)
    assert fits_template("title:,abstract:", pieces)                    # empty fields are rows too
    assert not fits_template("They sleep.", pieces)
    assert not fits_template("abstract:x,title:y", pieces)
    assert template_literals("{text}") is None and template_literals("{a}{b}") is None
    assert template_literals("{{x}} {a}") == ["{x} ", ""]
    assert not fits_template("title:x", ["title:", ",abstract:", "!"])
    assert fits_template("ab", ["a", "b"]) and not fits_template("a", ["a", "a"])


def _two_column_competition(directory):
    lines = ["id,title,abstract,label"]
    for i in range(24):
        animal = i % 2
        lines.append(f"{i},{'pets' if animal else 'money'} {i},{'the cat sleeps' if animal else 'taxes rise'} {i},"
                     f"{animal}")
    (directory / "train.csv").write_text("\n".join(lines) + "\n")
    (directory / "test.csv").write_text("id,title,abstract\n100,pets,a dog barks\n101,money,the market fell\n")
    return write_spec(directory, input="title:{title},abstract:{abstract}")


def test_serve_flags_texts_that_lack_the_input_template(here, monkeypatch, caplog):
    spec_path = _two_column_competition(here)
    ok("train", "--spec", spec_path, *TFIDF)
    started = {}
    monkeypatch.setattr(serving_commands, "run_server", lambda app, sock: started.update(app=app, sock=sock))
    result = CliRunner().invoke(serve, ["--spec", str(spec_path), "--port", "0"], env={"KIT_API_KEY": "k"})
    assert result.exit_code == 0, result.output
    rendered = "title:pets,abstract:a dog barks"
    caplog.set_level(logging.INFO, logger="kit")
    with Served(started["app"], started["sock"]) as served:
        client = served.openai(key="k")
        (name,) = [m.id for m in client.models.list()]
        good = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": rendered}])
        assert WARNING_HEADER not in good.headers and "warning" not in (good.parse().model_extra or {})
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=[{"role": "user", "content": "a dog barks"}])
        answer = raw.parse()
        assert answer.choices[0].message.content in ("0", "1")            # answered all the same
        warning = answer.model_extra["warning"]
        assert warning.startswith("messages.0.content does not match the run's input template "
                                  "'title:{title},abstract:{abstract}'")
        assert "not what kit predict gives" in warning
        assert "input template" in raw.headers[WARNING_HEADER]
        with served.http(key="k") as http:
            response = http.post("/v1/classify", json={"model": name, "input": [rendered, "a dog barks", "x"]})
            assert response.status_code == 200
            body = response.json()
            assert body["warning"].startswith("input.1, input.2 do not match the run's input template")
            assert response.headers[WARNING_HEADER].startswith("2 input(s) do not match")
            clean = http.post("/v1/classify", json={"model": name, "input": [rendered]})
            assert "warning" not in clean.json() and WARNING_HEADER not in clean.headers
    assert any("serve: warning: messages.0.content does not match" in r.getMessage() for r in caplog.records)


# -- One pipeline: a fold-only run (kit cv --keep-models, no kit train) --------------------------------------

def test_serve_and_export_take_a_fold_only_run(here, monkeypatch):
    spec_path = write_toy_competition(here)
    spec = load_spec(spec_path)
    cross_validate(spec, ModelArgs(model="tfidf"), TrainArgs(), folds=3, keep_models=True, name="folds")
    run = load_run("folds")
    assert not run.has_full_model and len(run.fold_models) == 3
    predict_split(spec, "test", "folds", out=here / "submit.csv")        # kit predict: the fold ensemble
    expected = pd.read_csv(run.predictions("test"), dtype={"label": str})
    started = {}
    monkeypatch.setattr(serving_commands, "run_server", lambda app, sock: started.update(app=app, sock=sock))
    result = CliRunner().invoke(serve, ["--spec", str(spec_path), "--run", "folds", "--port", "0",
                                        "--api-key", "k"])
    assert result.exit_code == 0, result.output
    rows, _ = load_rows(spec, "test")
    with Served(started["app"], started["sock"]) as served:
        answer = classify(served.openai(key="k"), "folds", rows.texts)
        np.testing.assert_allclose(probabilities(answer, spec.labels),
                                   expected[[f"p_{label}" for label in spec.labels]].to_numpy(), atol=1e-6)
        assert [row["label"] for row in answer["data"]] == expected["label"].tolist()
        chat = served.openai(key="k").chat.completions.create(
            model="folds", messages=[{"role": "user", "content": rows.texts[0]}])
        assert chat.choices[0].message.content == expected["label"][0]
    # export: TF-IDF fold models have no weights to export, in one line naming why
    out = one_line_error("export", "--spec", spec_path, "--run", "folds", "--out", here / "exported")
    assert "a tfidf model has no weights a serving engine loads" in out
    # a transformer run with fold models only: kit train first (a fold model's kind, edited by hand)
    state_file = run.fold_models[0] / MODEL_FILE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "kind": "transformer"}))
    with pytest.raises(KitError, match=r"only fold models .*no full-train model to export; run `python -m kit "
                                       r"train` with its settings first"):
        export_run(spec, here / "exported", run="folds")
    assert not (here / "exported").exists()
