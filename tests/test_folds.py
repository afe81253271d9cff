"""Fold ensembles: `kit cv --keep-models` keeps each fold's model; `kit predict --models folds`
averages their probabilities, `--models merged` averages their LoRA weights first."""
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from kit.commands.fit import predict
from kit.commands.main import main
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.models.folds import merge_fold_adapters
from kit.models.registry import load_model
from kit.runs.folder import load_run
from kit.workflows.predict import load_predictor


@pytest.fixture
def cv_run(tmp_path, toy, tiny_llama, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["cv", "--spec", str(toy), "--model", tiny_llama, "--folds", "3",
                                       "--max-steps", "2", "--batch-size", "8", "--no-baseline", "--keep-models",
                                       "--name", "folds"])
    assert result.exit_code == 0, result.output
    return load_run("folds"), load_spec(toy)


def test_the_fold_ensemble_averages_the_fold_models(cv_run):
    run, spec = cv_run
    assert [p.name for p in run.fold_models] == ["fold-0-model", "fold-1-model", "fold-2-model"]
    rows = load_rows(spec, "test")[0]
    ensemble, used = load_predictor(run, "folds")
    expected = np.mean([load_model(p).predict(rows).probs for p in run.fold_models], axis=0)
    np.testing.assert_allclose(ensemble.predict(rows).probs, expected, atol=1e-7)
    assert len(used) == 3


def test_merged_folds_average_the_lora_updates(cv_run):
    """The merged adapter's update s' B'A' is the mean of the folds' s B_k A_k, exactly; the head
    is the folds' mean."""
    run, spec = cv_run
    predictor, _ = load_predictor(run, "merged")      # peft loads the rank-3r adapter its config names
    probs = predictor.predict(load_rows(spec, "test")[0]).probs
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    adapter = run.merged_folds / "adapter"
    merged = load_file(adapter / "adapter_model.safetensors")
    folds = [load_file(p / "adapter" / "adapter_model.safetensors") for p in run.fold_models]
    config = json.loads((adapter / "adapter_config.json").read_text())
    fold_config = json.loads((run.fold_models[0] / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 3 * fold_config["r"]
    scale, fold_scale = config["lora_alpha"] / config["r"], fold_config["lora_alpha"] / fold_config["r"]
    assert scale == fold_scale
    pairs = [name for name in merged if ".lora_A." in name]
    assert pairs
    for a_name in pairs:
        b_name = a_name.replace(".lora_A.", ".lora_B.")
        update = scale * (merged[b_name] @ merged[a_name]).numpy()
        expected = np.mean([fold_scale * (f[b_name] @ f[a_name]).numpy() for f in folds], axis=0)
        np.testing.assert_allclose(update, expected, atol=1e-6)
    heads = [name for name in merged if "lora_" not in name]
    assert heads
    for name in heads:
        np.testing.assert_allclose(merged[name].numpy(), np.mean([f[name].numpy() for f in folds], axis=0), atol=1e-7)


def test_predict_with_a_cv_run_records_the_models(cv_run):
    run, spec = cv_run
    result = CliRunner().invoke(main, ["predict", "--spec", str(spec.path), "--run", "folds"])
    assert result.exit_code == 0, result.output
    stats = json.loads(run.predict_stats("test").read_text())
    assert len(stats["models"]) == 3 and "fold-0-model" in stats["models"][0]
    result = CliRunner().invoke(main, ["predict", "--spec", str(spec.path), "--run", "folds", "--models", "full"])
    assert result.exit_code == 2 and "no full-train model" in result.output


def test_merging_tfidf_folds_is_refused(tmp_path, toy, monkeypatch):
    monkeypatch.chdir(tmp_path)
    CliRunner().invoke(main, ["cv", "--spec", str(toy), "--model", "tfidf", "--folds", "3", "--keep-models",
                              "--name", "tf"])
    result = CliRunner().invoke(main, ["predict", "--spec", str(toy), "--run", "tf", "--models", "merged"])
    assert result.exit_code == 2 and "needs LoRA fold models" in result.output
    # every option a message names is one the verb has
    named = set(re.findall(r"--[a-z-]+", result.output))
    assert named and named <= {p.opts[0] for p in predict.params} | {o for p in predict.params for o in p.opts}


def test_fold_models_left_by_a_cv_on_other_folds_are_refused(cv_run, toy, tiny_llama):
    run, spec = cv_run
    # the same settings on other folds meet in the same run folder, without keeping models
    result = CliRunner().invoke(main, ["cv", "--spec", str(toy), "--model", tiny_llama, "--folds", "3",
                                       "--fold-seed", "1", "--max-steps", "2", "--batch-size", "8", "--no-baseline",
                                       "--name", "folds"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["predict", "--spec", str(spec.path), "--run", "folds", "--models", "folds"])
    assert result.exit_code == 2 and "kept by an earlier CV on other folds" in result.output


def test_merged_number_heads_give_the_mean_of_the_fold_numbers(tmp_path):
    """Fold k of a number task outputs center_k + spread_k * head_k(h) (its targets standardised on
    its own rows); the merged model's center, spread and head make that mean exact for the head."""
    rng = np.random.default_rng(0)
    folds = []
    for k, (center, spread) in enumerate([(2.0, 0.5), (3.0, 1.5), (2.5, 1.0)]):
        directory = tmp_path / f"fold-{k}-model"
        (directory / "adapter").mkdir(parents=True)
        tensors = {"layer.lora_A.weight": torch.tensor(rng.normal(size=(2, 4)), dtype=torch.float32),
                   "layer.lora_B.weight": torch.tensor(rng.normal(size=(4, 2)), dtype=torch.float32),
                   "score.weight": torch.tensor(rng.normal(size=(1, 4)), dtype=torch.float32)}
        save_file(tensors, directory / "adapter" / "adapter_model.safetensors")
        (directory / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
        (directory / "kit_model.json").write_text(json.dumps(
            {"model_id": str(k), "task": {"center": center, "spread": spread}}))
        folds.append((directory, tensors, center, spread))
    merged = merge_fold_adapters([f[0] for f in folds], tmp_path / "merged")
    task = json.loads((merged / "kit_model.json").read_text())["task"]
    head = load_file(merged / "adapter" / "adapter_model.safetensors")["score.weight"].numpy()
    h = rng.normal(size=4)
    fold_numbers = [c + s * (t["score.weight"].numpy() @ h) for _, t, c, s in folds]
    assert task["center"] == pytest.approx(2.5) and task["spread"] == pytest.approx(1.0)
    np.testing.assert_allclose(task["center"] + task["spread"] * (head @ h), np.mean(fold_numbers, axis=0), atol=1e-6)
