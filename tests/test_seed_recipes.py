"""The seeds' three remaining recipes: base models scored zero-shot before any fine-tuning, extra
labelled files that join every fit's training rows and never a scored row, and generative answers
that carry a rationale after the label (constructed rationales: none ship here)."""
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from cli import ok, one_line_error
from conftest import ANIMALS, OTHER, write_toy_competition

from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine.inference import score_labels
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.models.registry import make_model
from kit.tasks.columns import column_of
from kit.workflows.zero_shot import sample_rows

FAST = TrainArgs(max_steps=2, batch_size=8, lr=5e-3, checkpoint_every=0)


def runs_written(root):
    runs = root / "runs"
    return sorted(p.name for p in runs.iterdir() if (p / "run.json").exists()) if runs.is_dir() else []


# -- zero-shot ---------------------------------------------------------------------------------------

def test_zero_shot_scores_each_candidate_on_the_same_rows_and_trains_nothing(tmp_path, monkeypatch, tiny_llama,
                                                                               tiny_qwen2):
    monkeypatch.chdir(tmp_path)
    spec = write_toy_competition(tmp_path)
    out = ok("cv", "--spec", spec, "--zero-shot", "--model", tiny_llama, "--model", tiny_qwen2, "--rows", "10")
    assert "zero-shot on 10 labelled rows" in out and f"| {tiny_llama} |" in out and f"| {tiny_qwen2} |" in out
    assert "| f1 (at 0.5) | accuracy | auc | seconds |" in out
    assert runs_written(tmp_path) == []                         # no run folder, nothing trained


def test_the_sample_is_stratified_seeded_and_in_file_order(toy):
    rows = load_rows(load_spec(toy))[0]
    a, b = sample_rows(rows, 10, seed=0), sample_rows(rows, 10, seed=0)
    assert a.ids == b.ids and len(a) == 10 and np.bincount(a.labels).tolist() == [5, 5]
    assert a.ids == sorted(a.ids, key=rows.ids.index)
    assert sample_rows(rows, 10, seed=1).ids != a.ids and sample_rows(rows).ids == rows.ids
    assert len(sample_rows(rows, len(rows) - 1)) == len(rows) - 1     # one row left over: not stratified, still drawn


def test_zero_shot_probabilities_are_the_base_models_own(toy, tiny_llama):
    """No adapter and no training: P(label) equals one plain forward pass of the base model."""
    from transformers import AutoModelForCausalLM
    spec = load_spec(toy)
    rows = load_rows(spec)[0]
    model = make_model(column_of(spec).estimator_task(), ModelArgs(model=tiny_llama, head="generate"), TrainArgs())
    probs = model.zero_shot().predict(rows, "score").probs
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids, _ = model.encode(rows)
    plain = score_labels(base, ids, [a[0] for a in model.answers], model.tokenizer.pad_token_id,
                         use_prefix_cache=False)
    np.testing.assert_allclose(probs, plain, atol=2e-3)   # the kit's pass reads fp16 lower-block states


@pytest.mark.parametrize("args, message", [
    (["--model", "minilm"], "minilm: an encoder (bert) answers through a classify head, which exists only after "
                            "training; it has no zero-shot score"),
    (["--model", "tfidf"], "tfidf: TF-IDF learns its vocabulary and weights from the training rows"),
    (["--keep-models"], "--keep-models does not apply to --zero-shot"),
])
def test_zero_shot_refuses_what_has_nothing_to_score_with_before_any_work(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    spec = write_toy_competition(tmp_path)
    assert message in one_line_error("cv", "--spec", spec, "--zero-shot", "--model", "smollm2", *args)
    assert runs_written(tmp_path) == []


def test_rows_without_zero_shot_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_toy_competition(tmp_path)
    assert "--rows samples the rows of --zero-shot" in one_line_error("cv", "--spec", spec, "--rows", "5")


# -- extra labelled data -------------------------------------------------------------------------------

def with_extra(directory, rows=10, extra=""):
    """The toy competition and an extra file under another schema (tweet,sentiment), named in [[extra]]."""
    spec = write_toy_competition(directory)
    lines = ["tweet,sentiment"] + [f"{(ANIMALS if i % 2 else OTHER)[i % 6]} again {i},{i % 2}" for i in range(rows)]
    (directory / "more.csv").write_text("\n".join(lines) + "\n")
    spec.write_text(spec.read_text() + textwrap.dedent(f"""\
        [[extra]]
        file = "more.csv"
        label = "sentiment"
        input = "{{tweet}}"
        {extra}
        """))
    return spec


def test_extra_rows_train_every_fold_and_are_never_scored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = with_extra(tmp_path)
    out = ok("check", "--spec", spec)
    assert "extra: 10 rows from 1 [[extra]] file(s), labels {'0': 5, '1': 5}" in out
    ok("cv", "--spec", spec, "--model", "tfidf", "--folds", "3", "--name", "with")
    train_ids = load_rows(load_spec(spec))[0].ids
    oof = pd.read_csv(tmp_path / "runs" / "with" / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(train_ids) and not oof["id"].str.startswith("extra").any()
    held = []
    for number in range(3):
        fold = json.loads((tmp_path / "runs" / "with" / "cv" / f"fold-{number}.json").read_text())
        held += fold["index"]
        assert fold["stats"]["extra_rows"] == 10
        assert fold["stats"]["train_rows"] == len(train_ids) - len(fold["index"]) + 10
    assert sorted(held) == list(range(len(train_ids)))          # each training row held out once, no other row
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "with")
    metrics = json.loads((tmp_path / "runs" / "with" / "train_metrics.json").read_text())
    assert metrics["train_rows"] == len(train_ids) + 10 and metrics["extra_rows"] == 10
    config = json.loads((tmp_path / "runs" / "with" / "run.json").read_text())
    assert config["data"]["extra"][0]["path"].endswith("more.csv")


def test_extra_rows_that_copy_a_training_row_are_dropped(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    spec = with_extra(tmp_path)
    train = load_rows(load_spec(spec))[0]
    with open(tmp_path / "more.csv", "a") as more:     # two training rows, copied under the extra schema
        more.write(f'"{train.texts[0]}",1\n"{train.texts[3]}",0\n')
    out = ok("check", "--spec", spec)
    assert "2 of 12 [[extra]] rows dropped (the first: extra1:12)" in caplog.text and "extra: 10 rows" in out
    ok("cv", "--spec", spec, "--model", "tfidf", "--folds", "3", "--name", "copies")
    fold = json.loads((tmp_path / "runs" / "copies" / "cv" / "fold-0.json").read_text())
    assert fold["stats"]["extra_rows"] == 10


def test_the_extra_files_contents_are_part_of_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = with_extra(tmp_path)
    ok("train", "--spec", spec, "--model", "tfidf", "--name", "r")
    ok("predict", "--spec", spec, "--run", "r", "--out", "a.csv")
    (tmp_path / "more.csv").write_text((tmp_path / "more.csv").read_text().replace(",1\n", ",0\n"))
    assert "made with other settings" in one_line_error("train", "--spec", spec, "--model", "tfidf", "--name", "r")
    assert "[[extra]] files" in one_line_error("predict", "--spec", spec, "--run", "r", "--out", "b.csv")


@pytest.mark.parametrize("extra, cell, message", [
    ("", "maybe", "more.csv: row 4: label 'maybe' in column 'sentiment' is not one of ['0', '1']"),
    ('max_rows = 0', None, "[[extra]] 1 max_rows: must be a whole number of at least 1"),
    ('weight = 2', None, "[[extra]] 1: unknown key 'weight'"),
])
def test_a_bad_extra_file_is_one_line(tmp_path, monkeypatch, extra, cell, message):
    monkeypatch.chdir(tmp_path)
    spec = with_extra(tmp_path, extra=extra)
    if cell:
        lines = (tmp_path / "more.csv").read_text().splitlines()
        lines[3] = lines[3].rsplit(",", 1)[0] + f",{cell}"
        (tmp_path / "more.csv").write_text("\n".join(lines) + "\n")
    assert message in one_line_error("check", "--spec", spec)


def test_an_extra_file_without_its_label_column_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = with_extra(tmp_path)
    spec.write_text(spec.read_text().replace('label = "sentiment"', 'label = "stars"'))
    out = one_line_error("check", "--spec", spec)
    assert "more.csv" in out and "'stars'" in out


def test_max_rows_takes_the_first_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = with_extra(tmp_path, extra="max_rows = 4")
    assert "extra: 4 rows from 1 [[extra]] file(s)" in ok("check", "--spec", spec)


# -- rationales ------------------------------------------------------------------------------------------

def with_rationales(directory, empty=False):
    spec = write_toy_competition(directory)
    frame = pd.read_csv(directory / "train.csv", dtype=str)
    frame["why"] = "" if empty else [f"because it says {t.split()[1]}" for t in frame["text"]]
    frame.to_csv(directory / "train.csv", index=False)
    spec.write_text(spec.read_text().replace('input = "{text}"', 'input = "{text}"\nrationale = "why"'))
    return spec


def test_the_generate_head_learns_label_then_rationale_and_decides_as_before(tmp_path, tiny_llama):
    spec = load_spec(with_rationales(tmp_path))
    rows, test = load_rows(spec)[0], load_rows(spec, "test")[0]
    assert rows.rationales[0] == f"because it says {rows.texts[0].split()[1]}"
    model = make_model(column_of(spec).estimator_task(), ModelArgs(model=tiny_llama, head="generate"), FAST)
    (tmp_path / "plain").mkdir()
    plain = make_model(column_of(load_spec(write_toy_competition(tmp_path / "plain"))).estimator_task(),
                       ModelArgs(model=tiny_llama, head="generate"), FAST)
    model._prepare_text()
    plain._prepare_text()
    ids, _ = model.encode(rows)
    _, targets, _ = model._training_pairs(None, ids, rows)
    tokenizer = model.tokenizer
    for target, label, why in zip(targets[:4], rows.labels, rows.rationales):
        # the label word, the separator, the rationale, the turn's end: exactly as written
        assert tokenizer.decode(target) == f"{spec.labels[label]}\n{why}{tokenizer.decode(target[-1:])}"
        assert target[0] == plain.answers[label][0]             # the first token: the label, as without rationales
    model.fit(rows)
    scored = model.predict(test, "score")
    assert scored.decided == ["score"] * len(test)              # decided by P(label word), as always
    generated = model.predict(test, "generate")
    assert set(generated.decided) <= {"generate", "fallback"}
    assert max(len(a) for a in model.answers) == 2              # generation stops after the label and separator


def test_prepare_writes_the_rationale_after_the_label(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = with_rationales(tmp_path)
    ok("prepare", "--spec", spec, "--out", "prepared")
    written = json.loads((tmp_path / "prepared" / "toy_alpaca.json").read_text())
    first = pd.read_csv(tmp_path / "train.csv", dtype=str).iloc[0]
    assert written[0]["output"] == f"{first['label']}\n{first['why']}"


def test_rationale_refusals_and_the_classify_heads_note(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    empty = with_rationales(tmp_path / "empty", empty=True)
    assert "the rationale column 'why' is empty in every row" in one_line_error("check", "--spec", empty)
    spec = with_rationales(tmp_path)
    spec.write_text(spec.read_text().replace('input = "{text}"', 'input = "{text} {why}"'))
    with pytest.raises(KitError, match="names the rationale column 'why'"):
        load_spec(spec)
    spec.write_text(spec.read_text().replace('input = "{text} {why}"', 'input = "{text}"'))
    out = ok("train", "--spec", spec, "--model", "tfidf")
    assert "is learned by the generative head only" in out + caplog.text
