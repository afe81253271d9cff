"""The leaderboard levers: pseudo-labels (--pseudo) and distillation (--teacher): the losses, the
refusals, the run key, and the honest CV protocol (fold k learns only from the teacher's fold-k
model, never from fold k's held-out rows)."""
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from kit.commands.main import main
from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine.batching import pad_batch
from kit.engine.losses import AnswerLoss, ClassifyLoss, DistillAnswerLoss, RowTarget, SoftClassifyLoss, distillation_kl
from kit.evaluation.folds import assign_folds
from kit.inputs.data import Rows, join_rows, load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.registry import load_model, make_model
from kit.models.transformer import TransformerModel
from kit.runs.folder import effective_config, load_run
from kit.tasks.label import LabelColumn
from kit.workflows import cv as kit_cv
from kit.workflows import levers


class FixedLogits(torch.nn.Module):
    """A 'model' whose classification logits are given: the loss modules' arithmetic alone."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, **inputs):
        return type("Output", (), {"logits": self.logits})()


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def _ok(*args):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def _refused(message, *args):
    result = _invoke(*args)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output
    return errors[0]


@pytest.fixture
def teacher(tmp_path, toy, monkeypatch):
    """A TF-IDF teacher: `kit cv --keep-models` on 3 folds, then its fold ensemble predicts test."""
    monkeypatch.chdir(tmp_path)
    _ok("cv", "--spec", toy, "--model", "tfidf", "--folds", 3, "--keep-models", "--name", "teacher")
    _ok("predict", "--spec", toy, "--run", "teacher")
    return load_run("teacher")


# -- the losses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_kl_is_zero_when_the_student_equals_the_teacher(temperature):
    teacher_probs = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9], [1 / 3, 1 / 3, 1 / 3]])
    logits = torch.log(teacher_probs) + torch.tensor([[3.0], [-1.0], [0.5]])   # softmax ignores a row's shift
    assert distillation_kl(logits, teacher_probs, temperature).abs().max() < 1e-6
    targets = [RowTarget(0, tuple(p.tolist())) for p in teacher_probs]
    loss = SoftClassifyLoss(FixedLogits(logits), kl_weight=1.0, temperature=temperature)
    assert abs(float(loss({}, targets))) / temperature ** 2 < 1e-6          # the module's sum is T^2 * KL
    other = torch.tensor([[0.1, 0.2, 0.7]] * 3)
    assert float(distillation_kl(logits, other, temperature).min()) > 1e-3


@pytest.mark.parametrize("class_weights", [None, torch.tensor([0.5, 2.0, 1.0])])
def test_zero_kl_weight_is_exactly_the_plain_cross_entropy(class_weights):
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = [0, 2, 1, 1, 0, 2]
    teacher_probs = torch.softmax(torch.randn(6, 3), -1).tolist()
    plain = ClassifyLoss(FixedLogits(logits), class_weights)
    lever = SoftClassifyLoss(FixedLogits(logits), class_weights, kl_weight=0.0, temperature=2.0)
    targets = [RowTarget(y, tuple(p)) for y, p in zip(labels, teacher_probs)]
    assert float(lever({}, targets)) == float(plain({}, labels))
    assert lever.weight(targets) == plain.weight(labels)
    half = SoftClassifyLoss(FixedLogits(logits), class_weights, kl_weight=0.5, temperature=2.0)
    kl = distillation_kl(logits, torch.tensor(teacher_probs), 2.0)
    row_weights = torch.ones(6) if class_weights is None else class_weights[labels]
    expected = 0.5 * plain({}, labels) + 0.5 * 4.0 * (kl * row_weights).sum()
    assert float(half({}, targets)) == pytest.approx(float(expected), rel=1e-6)


def test_soft_targets_are_cross_entropy_against_the_probabilities():
    torch.manual_seed(1)
    logits = torch.randn(4, 2)
    soft = [[0.9, 0.1], [0.2, 0.8]]
    loss = SoftClassifyLoss(FixedLogits(logits))
    targets = [RowTarget(1), RowTarget(soft[0]), RowTarget(0), RowTarget(soft[1])]
    expected = (F.cross_entropy(logits[[0, 2]], torch.tensor([1, 0]), reduction="sum")
                + F.cross_entropy(logits[[1, 3]], torch.tensor(soft), reduction="sum"))
    assert float(loss({}, targets)) == pytest.approx(float(expected), rel=1e-6)
    one_hot = SoftClassifyLoss(FixedLogits(logits))({}, [RowTarget([0.0, 1.0]), RowTarget([1.0, 0.0])])
    assert float(one_hot) == pytest.approx(float(ClassifyLoss(FixedLogits(logits[:2]))({}, [1, 0])), rel=1e-6)


def test_generate_distillation_reads_the_first_answer_position(tiny_llama):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    answers = [[28, 2], [29, 2], [28, 2]]            # label word token + end of turn
    prompts = [[1, 5, 6, 7], [1, 8, 9], [1, 10, 11, 12, 13]]
    inputs = pad_batch([p + a for p, a in zip(prompts, answers)], 2, True, "cpu")
    teacher_probs = [(0.8, 0.2), (0.3, 0.7), (0.5, 0.5)]
    targets = [RowTarget(a, p) for a, p in zip(answers, teacher_probs)]
    with torch.no_grad():
        plain = AnswerLoss(model)(inputs, answers)
        assert float(DistillAnswerLoss(model, [28, 29], 0.0, 2.0)(inputs, targets)) == float(plain)
        only_kl = DistillAnswerLoss(model, [28, 29], 1.0, 2.0)(inputs, targets)
        first = model(**inputs).logits[:, -3][:, [28, 29]]       # the position before each answer
    expected = 4.0 * (distillation_kl(first, torch.tensor(teacher_probs), 2.0) * 2).sum()
    assert float(only_kl) == pytest.approx(float(expected), rel=1e-4)


# -- pseudo rows ---------------------------------------------------------------------------------

def test_threshold_filters_rows_and_labels_them_by_argmax():
    split = Rows(["a", "b", "c", "d"], ["ta", "tb", "tc", "td"])
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9], [0.5, 0.5]])
    chosen, keep = levers.select_pseudo(split, probs, 0.9)
    assert keep == [0, 2] and chosen.ids == ["a", "c"] and chosen.labels == [0, 1]
    assert chosen.soft is None and chosen.teacher is None
    soft, _ = levers.select_pseudo(split, probs, 0.5, soft=True, teacher=True)
    assert soft.ids == ["a", "b", "c", "d"] and soft.soft == soft.teacher and soft.soft[1] == [0.6, 0.4]
    joined = join_rows(Rows(["x"], ["tx"], [1]), soft)
    assert joined.soft[0] is None and joined.labels == [1, 0, 0, 1, 0]



def test_no_row_reaching_the_threshold_is_said_with_the_highest_probability(toy, monkeypatch):
    said = []
    monkeypatch.setattr(levers, "log", said.append)
    probs = np.array([[0.4, 0.6], [0.55, 0.45]])
    split = Rows(["a", "b"], ["ta", "tb"])
    none, _ = levers.select_pseudo(split, probs, 0.9)
    levers._log_pseudo(load_spec(toy), none, "test", 0.9, "runs/x", probs)
    assert len(said) == 2 and "highest top probability in runs/x is 0.600" in said[1]
    some, _ = levers.select_pseudo(split, probs, 0.6)
    levers._log_pseudo(load_spec(toy), some, "test", 0.6, "runs/x", probs)
    assert len(said) == 3

def test_train_adds_pseudo_rows_and_records_them(teacher, toy, tiny_llama):
    _ok("train", "--spec", toy, "--model", tiny_llama, "--max-steps", 2, "--batch-size", 8,
        "--pseudo", "teacher:test", "--pseudo-threshold", 0.5, "--teacher", "teacher", "--name", "student")
    student = load_run("student")
    metrics = json.loads(student.train_metrics.read_text())
    assert sum(metrics["pseudo_rows"].values()) == 8 and metrics["train_rows"] == 24 + 8
    train = student.config["train"]
    assert train["pseudo"] == "teacher:test" and train["pseudo_fingerprint"] and train["teacher_fingerprint"]


def test_the_generate_head_distils_with_hard_pseudo_labels(teacher, toy, tiny_llama):
    _ok("train", "--spec", toy, "--model", tiny_llama, "--head", "generate", "--max-steps", 2, "--batch-size", 8,
        "--pseudo", "teacher", "--pseudo-threshold", 0.5, "--teacher", "teacher", "--kl-weight", 0.7,
        "--temperature", 3, "--name", "generate")
    metrics = json.loads(load_run("generate").train_metrics.read_text())
    assert metrics["train_rows"] == 32 and all(np.isfinite(metrics["loss_log"]))


# -- refusals ------------------------------------------------------------------------------------

def test_soft_targets_and_teachers_are_refused_where_a_head_cannot_learn_them(teacher, toy, tiny_llama):
    _refused("--pseudo-soft: the TF-IDF model learns hard labels only", "train", "--spec", toy, "--model", "tfidf",
             "--pseudo", "teacher", "--pseudo-soft")
    _refused("--teacher: the TF-IDF model cannot learn", "train", "--spec", toy, "--model", "tfidf",
             "--teacher", "teacher")
    _refused("soft targets need --head classify", "train", "--spec", toy, "--model", tiny_llama, "--head", "generate",
             "--pseudo", "teacher", "--pseudo-soft")
    _refused("need --pseudo RUN[:SPLIT]", "train", "--spec", toy, "--model", "tfidf", "--pseudo-soft")
    _refused("need --teacher RUN", "cv", "--spec", toy, "--model", "tfidf", "--kl-weight", 0.3)
    _refused("no [targets.x]", "cv", "--spec", toy, "--target", "x", "--pseudo", "teacher")
    generate = TransformerModel(Task("Answer.", ["1", "12"]), ModelArgs(model=tiny_llama, head="generate"))
    with pytest.raises(KitError, match="share their first token"):
        generate.check_levers(soft=False, teacher=True)


def test_a_teacher_missing_training_rows_is_refused(tmp_path, toy, tiny_llama, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _ok("cv", "--spec", toy, "--model", "tfidf", "--holdout", 0.25, "--name", "half")
    _refused("has no probability for 18 of 24 training rows", "train", "--spec", toy, "--model", tiny_llama,
             "--teacher", "half")


def test_pseudo_labels_from_the_training_file_are_refused(teacher, toy):
    _refused("pseudo-labels come from unlabelled split rows only", "train", "--spec", toy, "--model", "tfidf",
             "--pseudo", "teacher:train")


def test_cv_refuses_a_teacher_that_saw_the_held_out_rows(teacher, toy):
    _ok("train", "--spec", toy, "--model", "tfidf", "--name", "full")
    _refused("has no fold models", "cv", "--spec", toy, "--model", "tfidf", "--folds", 3, "--no-baseline",
             "--pseudo", "full")
    _ok("cv", "--spec", toy, "--model", "tfidf", "--folds", 3, "--fold-seed", 1, "--keep-models", "--name", "seed1")
    _refused("holds other rows", "cv", "--spec", toy, "--model", "tfidf", "--folds", 3, "--no-baseline",
             "--pseudo", "seed1")
    _refused("it has 3 folds, this CV 4", "cv", "--spec", toy, "--model", "tfidf", "--folds", 4, "--no-baseline",
             "--pseudo", "teacher")


def test_cv_refuses_fold_models_left_by_an_earlier_cv(teacher, toy):
    """The teacher's folder re-cross-validated on other folds without --keep-models: its fold
    results now name other rows than its kept models were trained without."""
    _ok("cv", "--spec", toy, "--model", "tfidf", "--folds", 3, "--fold-seed", 1, "--name", "teacher")
    _refused("does not name the model it kept", "cv", "--spec", toy, "--model", "tfidf", "--folds", 3,
             "--fold-seed", 1, "--no-baseline", "--pseudo", "teacher")


# -- the run key -----------------------------------------------------------------------------------

def _key(spec, model, train_args):
    rows = load_rows(spec, "train")[0]
    _, filled, _ = levers.for_train(LabelColumn(spec), rows, model, train_args)
    return effective_config(spec, model.args, filled)["key"]


def test_the_run_key_changes_with_the_teachers_probabilities(teacher, toy, tiny_llama):
    spec = load_spec(toy)
    args = TrainArgs(pseudo="teacher", pseudo_threshold=0.5, teacher="teacher")   # every test row is used
    model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama), args)
    first = _key(spec, model, args)
    assert _key(spec, model, args) == first
    assert _key(spec, model, replace(args, teacher=None)) != first
    for path in (teacher.oof, teacher.predictions("test")):
        original = path.read_text()
        lines = original.splitlines()
        cells = lines[1].split(",")
        column = lines[0].split(",").index("p_1")
        cells[column] = f"{float(cells[column]) + 0.01:.6f}"
        path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
        assert _key(spec, model, args) != first, path
        path.write_text(original)
    assert _key(spec, model, args) == first


# -- kit cv, end to end --------------------------------------------------------------------------

def test_cv_with_pseudo_labels_and_a_teacher_keeps_fold_k_to_fold_k(teacher, toy, tiny_llama, monkeypatch):
    """Fold k trains on its own training rows plus test rows, never on its held-out rows, with
    the pseudo-labels and teacher probabilities of the teacher's fold-k model."""
    seen = []
    real = kit_cv.fit_timed

    def spy(model, rows, *args, **kwargs):
        seen.append(rows)
        return real(model, rows, *args, **kwargs)
    monkeypatch.setattr(kit_cv, "fit_timed", spy)
    _ok("cv", "--spec", toy, "--model", tiny_llama, "--folds", 3, "--max-steps", 2, "--batch-size", 8,
        "--no-baseline", "--pseudo", "teacher", "--pseudo-threshold", 0.5, "--pseudo-soft", "--teacher", "teacher",
        "--name", "student")
    student = load_run("student")
    assert json.loads(student.cv_scores.read_text())["config"]["folds"] == 3
    spec = load_spec(toy)
    train_rows, test_rows = load_rows(spec, "train")[0], load_rows(spec, "test")[0]
    folds = [json.loads(teacher.fold_result(k).read_text())["index"] for k in range(3)]
    split_probs = [load_model(p).predict(test_rows).probs for p in teacher.fold_models]
    assert not np.allclose(split_probs[0], split_probs[1])        # the folds' models tell apart
    assert len(seen) == 3
    for k, rows in enumerate(seen):
        held = {train_rows.ids[i] for i in folds[k]}
        assert held.isdisjoint(rows.ids)
        own = [i for i in range(len(train_rows)) if i not in folds[k]]
        assert rows.ids == [train_rows.ids[i] for i in own] + test_rows.ids
        model_k = load_model(teacher.fold_model(k))
        expected_teacher = model_k.predict(train_rows.subset(own)).probs
        np.testing.assert_allclose(rows.teacher[:len(own)], expected_teacher, atol=1e-6)
        np.testing.assert_allclose(rows.soft[len(own):], split_probs[k], atol=1e-6)
        assert rows.labels[len(own):] == split_probs[k].argmax(1).tolist()
        assert rows.teacher[len(own):] == rows.soft[len(own):]
    assert len(list(teacher.cv_dir.glob("lever-fold-*.json"))) == 6     # cached for the next CV
    fold_stats = json.loads(student.fold_result(0).read_text())["stats"]
    assert sum(fold_stats["pseudo_rows"].values()) == 8

    def no_loading(*args, **kwargs):
        raise AssertionError("a cached fold prediction was computed again")
    monkeypatch.setattr("kit.models.registry.load_model", no_loading)
    fold = assign_folds(train_rows.labels, 3, 0)
    args = TrainArgs(pseudo="teacher", pseudo_threshold=0.5, teacher="teacher")
    student_model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama), args)
    _, filled = levers.for_cv(LabelColumn(spec), train_rows, fold, student_model, args)
    recorded = student.config["train"]
    assert (filled.pseudo_fingerprint, filled.teacher_fingerprint) == (recorded["pseudo_fingerprint"],
                                                                       recorded["teacher_fingerprint"])



def test_cv_pseudo_labels_from_a_blend_come_from_each_folds_members(teacher, toy, tiny_llama, monkeypatch):
    """A blend as the pseudo source under kit cv: fold k's pseudo-labels combine its members'
    fold-k models, weighted by weights fitted on the OOF rows outside fold k."""
    _ok("cv", "--spec", toy, "--model", tiny_llama, "--folds", 3, "--max-steps", 2, "--batch-size", 8,
        "--no-baseline", "--keep-models", "--name", "llm")
    _ok("blend", "--spec", toy, "teacher", "llm", "--name", "mix")
    seen, fitted = [], []
    real_fit, real_weights = kit_cv.fit_timed, levers.fit_weights
    monkeypatch.setattr(kit_cv, "fit_timed",
                        lambda model, rows, *a, **k: seen.append(rows) or real_fit(model, rows, *a, **k))
    monkeypatch.setattr(levers, "fit_weights", lambda metric, truth, probs, scale=None: fitted.append(
        (len(truth), real_weights(metric, truth, probs, scale)[0])) or real_weights(metric, truth, probs, scale))
    _ok("cv", "--spec", toy, "--model", "tfidf", "--folds", 3, "--no-baseline", "--pseudo", "mix",
        "--pseudo-threshold", 0.5, "--name", "student")
    spec = load_spec(toy)
    train_rows, test_rows = load_rows(spec, "train")[0], load_rows(spec, "test")[0]
    folds = [json.loads(teacher.fold_result(k).read_text())["index"] for k in range(3)]
    assert [n for n, _ in fitted] == [len(train_rows) - len(f) for f in folds]     # fold k's rows left out
    llm = load_run("llm")
    for k, rows in enumerate(seen):
        assert {train_rows.ids[i] for i in folds[k]}.isdisjoint(rows.ids)
        weights = fitted[k][1]
        assert np.all(weights >= 0) and np.isclose(weights.sum(), 1.0)
        members = [load_model(run.fold_model(k)).predict(test_rows).probs for run in (teacher, llm)]
        expected = weights[0] * members[0] + weights[1] * members[1]
        assert rows.ids[-len(test_rows):] == test_rows.ids
        assert rows.labels[-len(test_rows):] == expected.argmax(1).tolist()

# -- few-shot examples: drawn from the training fold only ---------------------------------------
def test_few_shot_examples_come_from_each_folds_training_rows(tiny_llama, tmp_path):
    from conftest import write_toy_competition
    spec_path = write_toy_competition(tmp_path)
    text = re.sub(r"max_length = \d+", "max_length = 256", spec_path.read_text())   # room for 3 examples
    spec_path.write_text(text.replace("[task]\n", "[task]\nfew_shot = 3\n"))
    spec = load_spec(spec_path)
    assert spec.few_shot == 3 and "few_shot" in spec.describe()
    rows, _ = load_rows(spec, "train")
    args = ModelArgs(model=tiny_llama, head="classify", lora_layers=1)
    scores = kit_cv.cross_validate(spec, args, TrainArgs(max_steps=2, batch_size=8, checkpoint_every=0), folds=3,
                            runs=tmp_path / "runs", keep_models=True)
    run = tmp_path / "runs" / scores["config"]["name"]
    for number in range(3):
        held = set(np.asarray(rows.texts)[json.loads((run / "cv" / f"fold-{number}.json").read_text())["index"]])
        task = json.loads((run / "cv" / f"fold-{number}-model" / "kit_model.json").read_text())["task"]
        assert len(task["examples"]) == 3 and {w for _, w in task["examples"]} == {"0", "1"}
        assert not {text for text, _ in task["examples"]} & held


def test_few_shot_prompt_shows_the_examples_and_reloads(tiny_llama, toy, tmp_path):
    spec = load_spec(toy)
    spec.few_shot, spec.max_length = 2, 256
    rows, _ = load_rows(spec, "train")
    model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama, head="classify"),
                       TrainArgs(max_steps=1, batch_size=8, checkpoint_every=0)).fit(rows)
    prompt = model.tokenizer.decode(model.encoder.prefix)
    assert "Examples:" in prompt and model.task.examples[0][0] in prompt
    model.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    np.testing.assert_array_equal(model.predict(rows).probs, again.predict(rows).probs)


@pytest.mark.parametrize("value", [-1, 17, "2", 1.5])
def test_few_shot_must_be_a_small_integer(toy, value):
    toy.write_text(toy.read_text().replace("[task]\n", f"[task]\nfew_shot = {json_value(value)}\n"))
    with pytest.raises(KitError, match="few_shot: must be an integer between 0 and 16"):
        load_spec(toy)


def json_value(value):
    return f'"{value}"' if isinstance(value, str) else str(value)
