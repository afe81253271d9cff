"""Predicted submission columns ([targets]): the spec, the three keyword roads under one CV,
the submission's Keywords column, and a small end-to-end run with a tiny LLM."""
import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kit.commands.main import main
from kit.core.errors import KitError
from kit.inputs.spec import load_spec

TOPICS = [("neural network training", "gradient descent"), ("protein folding", "molecular dynamics"),
          ("solar cell efficiency", "thin films"), ("graph neural networks", "node classification"),
          ("tumour staging", "deep learning"), ("crop yield prediction", "remote sensing")]


def write_papers(directory, rows=24, test_rows=6, with_label=True):
    """train.csv (uuid,title,abstract,Keywords[,label]) and test.csv (uuid,title,abstract)."""
    directory = Path(directory)
    train = []
    for i in range(rows):
        first, second = TOPICS[i % len(TOPICS)]
        row = {"uuid": i, "title": f"On {first} number {i}",
               "abstract": f"We study {first} with {second}. Results on {second} improve {first}.",
               "Keywords": f"{first}; {second}"}
        if with_label:
            row["label"] = i % 2
        train.append(row)
    pd.DataFrame(train).to_csv(directory / "train.csv", index=False)
    test = [{"uuid": 100 + i, "title": f"Notes on {TOPICS[i % 6][0]}",
             "abstract": f"A note on {TOPICS[i % 6][0]} and {TOPICS[i % 6][1]}."} for i in range(test_rows)]
    pd.DataFrame(test).to_csv(directory / "test.csv", index=False)


def write_paper_spec(directory, label=True, target='source = "Keywords"', extra=""):
    task = textwrap.dedent("""\
        label = "label"
        [task]
        instruction = "Is it about machine learning? Answer 1 or 0."
        labels = ["0", "1"]
        max_length = 96
        """) if label else "[task]\nmax_length = 96\n"
    columns = '["uuid", "Keywords", "label"]' if label else '["uuid", "Keywords"]'
    text = (f'name = "papers"\ntrain = "train.csv"\n[splits]\ntest = "test.csv"\n[columns]\nid = "uuid"\n'
            f'input = "{{title}}. {{abstract}}"\n{task}[submission]\ncolumns = {columns}\n'
            f"[targets.Keywords]\n{target}\n{extra}")
    path = Path(directory) / "competition.toml"
    path.write_text(text)
    return path


@pytest.fixture
def papers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_papers(tmp_path)
    return write_paper_spec(tmp_path)


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


# -- the spec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("target, message", [
    ("", "nothing to predict 'Keywords' from; give source"),
    ('extractor = "bert"', "extractor: 'bert' is not one of minilm, tfidf"),
    ('source = "Keywords"\nmetric = "bleu"', "metric: 'bleu' is not one of exact_f1, partial_f1"),
    ('source = "Keywords"\ncount = 12', "count: 12 is over max_count 10"),
    ('source = "Keywords"\nseparator = ""', "separator: must be a non-empty one-line string"),
    ('extractor = "tfidf"\ntrain = "other.csv"', "a train file of its own needs a source column"),
    ('source = "Keywords"\nsoruce = "x"', "unknown key 'soruce'; did you mean 'source'?"),
    ('source = "Keywords"\ninput = "no fields"', "names no column"),
])
def test_a_target_without_a_way_to_predict_it_is_a_one_line_error(tmp_path, target, message):
    path = write_paper_spec(tmp_path, target=target)
    with pytest.raises(KitError, match="targets.Keywords") as error:
        load_spec(path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_target_must_be_a_submission_column_and_not_also_filled(tmp_path):
    path = write_paper_spec(tmp_path, extra='[targets.Summary]\nsource = "abstract"\n')
    with pytest.raises(KitError, match=r"\[targets.Summary\] must name one of the other submission columns"):
        load_spec(path)
    path = write_paper_spec(tmp_path, extra='[submission.fill]\nKeywords = ""\n')
    with pytest.raises(KitError, match="predicted by \\[targets.Keywords\\]; fill it or predict it"):
        load_spec(path)


def test_a_spec_without_a_label_needs_a_target(tmp_path):
    path = write_paper_spec(tmp_path, label=False)
    spec = load_spec(path)
    assert not spec.has_labels and list(spec.targets) == ["Keywords"]
    path.write_text(path.read_text().split("[targets.Keywords]")[0])
    with pytest.raises(KitError, match="missing key 'label'"):
        load_spec(path)
    path.write_text('name = "x"\ntrain = "train.csv"\n[columns]\nid = "uuid"\ninput = "{title}"\n'
                    '[task]\nlabels = ["0", "1"]\n[submission]\ncolumns = ["uuid", "Keywords"]\n'
                    '[targets.Keywords]\nsource = "Keywords"\n')
    with pytest.raises(KitError, match="labels: the spec has no \\[columns\\] label"):
        load_spec(path)


def test_a_target_spec_is_keyed_by_what_it_learns(tmp_path):
    spec = load_spec(write_paper_spec(tmp_path))
    keywords = spec.for_target("Keywords")
    assert keywords.name == "papers.Keywords" and keywords.label_column == "Keywords"
    assert keywords.fingerprint() != spec.fingerprint()
    other = load_spec(write_paper_spec(tmp_path, target='source = "Keywords"\nseparator = ", "'))
    assert other.for_target("Keywords").fingerprint() != keywords.fingerprint()
    # the label's own fingerprint does not move when a target changes
    assert other.fingerprint() == spec.fingerprint()
    # the label's shape is not the column's: a number or several-labels label leaves the column a text
    numbers = replace(spec, shape="number", scale=[1.0, 5.0], label_columns=["a", "b"], class_columns={"0": "x"})
    column = numbers.for_target("Keywords")
    assert (column.shape, column.scale, column.label_columns, column.class_columns) == ("label", None, [], {})
    assert column.fingerprint() == keywords.fingerprint()


# -- the roads under cv, train, predict -------------------------------------------------------
def test_cv_scores_every_road_on_the_same_rows(papers):
    result = run("cv", "--spec", papers, "--target", "Keywords", "--model", "minilm", "--folds", "3")
    assert result.exit_code == 0, result.output
    assert "| papers.Keywords-tfidf-" in result.output and "| papers.Keywords-minilm-extract-" in result.output
    tables = json.loads(Path("runs/papers.Keywords-compare-table.json").read_text())
    assert [t["config"]["model"] for t in tables] == ["tfidf", "minilm"]
    for scores in tables:
        assert scores["rows"] == 24 and 0 <= scores["exact_f1"] <= 1 and len(scores["per_fold"]) == 3
    oof = pd.read_csv(Path(f"runs/{tables[0]['config']['name']}/oof.csv"))
    assert sorted(oof["id"]) == list(range(24)) and set(oof["fold"]) == {0, 1, 2}
    # the phrases are in the text: the baseline finds some of the gold keywords
    assert tables[0]["exact_f1"] > 0.2
    from kit.outputs.report import write_report
    page = Path(write_report([Path("runs") / tables[0]["config"]["name"]], out="report.html")).read_text()
    assert "<td>exact</td>" in page and "<td>partial</td>" in page and "held-out rows" in page


@pytest.mark.parametrize("verb", ["cv", "train"])
def test_a_keyword_column_takes_no_lever(papers, verb):
    """Pseudo-labels and distillation learn label probabilities: refused in one line before any work."""
    result = run(verb, "--spec", papers, "--target", "Keywords", "--pseudo", "some-run")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "learn label probabilities, which [targets.Keywords] does not have" in result.output
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


def test_train_and_predict_fill_the_keywords_column(papers):
    assert run("train", "--spec", papers, "--model", "tfidf").exit_code == 0
    result = run("predict", "--spec", papers)
    # found before any label work, and never the label's run taken for the keywords' run
    assert result.exit_code == 2 and "[targets.Keywords]: no trained run for it" in result.output
    assert "--target Keywords`" in result.output
    assert not Path("runs/papers-tfidf-").exists()
    result = run("train", "--spec", papers, "--target", "Keywords", "--model", "tfidf")
    assert result.exit_code == 0, result.output
    result = run("predict", "--spec", papers)
    assert result.exit_code == 0, result.output
    submission = pd.read_csv("submissions/submit.csv", keep_default_na=False)
    assert list(submission.columns) == ["uuid", "Keywords", "label"] and len(submission) == 6
    assert all(value and "\n" not in value for value in submission["Keywords"])
    assert all(len(value.split("; ")) == 2 for value in submission["Keywords"])    # the median count of train
    check = run("check", "--spec", papers, "--submission", "submissions/submit.csv")
    assert check.exit_code == 0, check.output
    kept = next(Path("runs").glob("papers.Keywords-tfidf-*/predictions-test.csv"))
    assert list(pd.read_csv(kept).columns) == ["id", "Keywords", "decided"]


def test_a_target_with_no_source_needs_no_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_papers(tmp_path, with_label=False)
    spec = write_paper_spec(tmp_path, label=False, target='extractor = "tfidf"\ncount = 3')
    result = run("predict", "--spec", spec)
    assert result.exit_code == 0, result.output
    submission = pd.read_csv("submissions/submit.csv", keep_default_na=False)
    assert list(submission.columns) == ["uuid", "Keywords"]
    assert all(1 <= len(value.split("; ")) <= 3 for value in submission["Keywords"])
    result = run("train", "--spec", spec)
    assert result.exit_code == 2 and "--target Keywords" in result.output


def test_score_reports_keyword_f1_against_a_labelled_copy(papers, tmp_path):
    truth = pd.read_csv("train.csv").head(6)
    truth.to_csv("truth.csv", index=False)
    pd.DataFrame({"uuid": truth["uuid"], "Keywords": truth["Keywords"], "label": truth["label"]}).to_csv(
        "perfect.csv", index=False)
    result = run("score", "--spec", papers, "--pred", "perfect.csv", "--truth", "truth.csv")
    assert result.exit_code == 0, result.output
    assert "Keywords: exact P/R/F1 1.0000 / 1.0000 / 1.0000; partial F1 1.0000 over 6 rows" in result.output


def test_a_submission_with_a_line_break_or_a_missing_keyword_list_is_refused(tmp_path):
    from kit.inputs import submit
    spec = load_spec(write_paper_spec(tmp_path))
    frame = pd.DataFrame({"uuid": ["1", "2"], "Keywords": ["a; b", "c\nd"], "label": ["0", "1"]})
    with pytest.raises(KitError, match="row 3: Keywords holds a line break"):
        submit.validate(spec, frame, ["1", "2"], "test")
    frame["Keywords"] = ["a; b", ""]
    submit.validate(spec, frame, ["1", "2"], "test")                     # nothing was owed
    with pytest.raises(KitError, match="row 3: Keywords is empty although the row has text"):
        submit.validate(spec, frame, ["1", "2"], "test", promised={"Keywords": [True, True]})


@pytest.mark.parametrize("road", ["tfidf", "minilm"])
def test_the_extractors_follow_the_estimator_contract(papers, road):
    from kit.core.settings import ModelArgs, TrainArgs
    from kit.models.base import NotFittedError
    from kit.models.registry import load_model, make_model
    from kit.tasks.columns import column_of
    column = column_of(load_spec(papers), "Keywords")
    rows, frame = column.rows("train")
    model = make_model(column.estimator_task(frame), ModelArgs(model=road), TrainArgs())
    with pytest.raises(NotFittedError):
        model.predict(rows)
    assert model.fit(rows) is model and model.count == 2           # the answers' median count
    first = model.predict(rows.subset(range(6)))
    assert [len(k) for k in first.keywords] == [2] * 6 and set(first.decided) == {"extract"}
    model.save("saved")
    again = load_model("saved")
    assert type(again) is type(model) and again.predict(rows.subset(range(6))).keywords == first.keywords


# -- the LLM road -----------------------------------------------------------------------------
def test_the_llm_road_writes_parses_falls_back_and_round_trips(papers, tiny_llama, monkeypatch):
    from kit.core.settings import ModelArgs, TrainArgs
    from kit.inputs.spec import load_spec as load
    from kit.models.keywords import FALLBACK, GENERATE, KeywordWriter
    from kit.models.registry import load_model, make_model
    from kit.tasks.columns import column_of
    column = column_of(load(papers), "Keywords")
    rows, frame = column.rows("train")
    model = make_model(column.estimator_task(frame), ModelArgs(model=tiny_llama), TrainArgs(max_steps=2, batch_size=8))
    assert isinstance(model, KeywordWriter) and model.args.head == "generate"
    model.fit(rows)
    assert model.count == 2 and 4 < model.max_new_tokens <= 160
    # the answer the model learns: the keywords joined by the training column's separator
    assert model.tokenizer.decode(model._answer_ids(["a b", "c"])[:-1]) == "a b; c"
    answers = iter(["graph; graph; Node", "", "This is a sentence that goes on and on without any end at all"] * 9)
    monkeypatch.setattr("kit.models.keywords.generate_texts", lambda *a, **k: [next(answers) for _ in range(len(a[2]))])
    prediction = model.predict(rows.subset(range(6)))
    assert prediction.keywords[0] == ["graph", "Node"]                   # duplicates removed
    assert prediction.decided == [GENERATE, FALLBACK, FALLBACK] * 2      # empty or rambling: the extractor
    assert all(prediction.keywords[i] for i in range(6)) and prediction.stats["fallback_rows"] == 4
    model.save("saved")
    again = load_model("saved")
    assert isinstance(again, KeywordWriter) and (again.count, again.max_new_tokens) == (2, model.max_new_tokens)
    assert again.task.separator == "; "


def test_the_llm_road_end_to_end(papers, tiny_llama):
    common = ["--spec", papers, "--target", "Keywords", "--model", tiny_llama, "--max-steps", "2",
              "--batch-size", "8"]
    result = run("cv", *common, "--holdout", "0.25", "--no-baseline")
    assert result.exit_code == 0, result.output
    assert "papers.Keywords-tiny-llama" in result.output
    assert run("train", *common).exit_code == 0
    assert run("train", "--spec", papers, "--model", "tfidf").exit_code == 0
    result = run("predict", "--spec", papers)
    assert result.exit_code == 0, result.output
    submission = pd.read_csv("submissions/submit.csv", keep_default_na=False)
    assert all(submission["Keywords"])          # generated, or the extractor's where the answer gave nothing
