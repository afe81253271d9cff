"""`kit export`: a trained run as a plain transformers directory. The export is loaded with plain
transformers only (no kit, no peft), the prompts are rebuilt from kit_export.json, and the
probabilities must equal the kit's own predictions."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_toy_competition

from kit.commands.serving import export
from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.data import Rows, load_rows
from kit.inputs.spec import load_spec
from kit.models.registry import load_model
from kit.outputs.export import EXPORT_FILE, export_run, front_matter
from kit.runs.folder import open_run
from kit.workflows.fit import train_run

FAST = TrainArgs(max_steps=2, batch_size=8, lr=5e-3, checkpoint_every=0)
LONG = " ".join(f"word{i} the cat and the dog" for i in range(40))     # longer than max_length: cut


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export-toy")
    return folder, load_spec(write_toy_competition(folder))


@pytest.fixture(scope="module")
def trained(competition):
    """(model, head, lora_r) -> the run folder, trained once per module."""
    folder, spec = competition
    built = {}

    def get(model, head, lora_r=16):
        if (model, head, lora_r) not in built:
            directory, _ = train_run(spec, ModelArgs(model=model, head=head, lora_r=lora_r), FAST,
                                     runs=folder / "runs")
            built[model, head, lora_r] = Path(directory)
        return built[model, head, lora_r]
    return get


def plain_probs(out, texts):
    """What a client does with plain transformers: prefix + cut input + tail, one forward per row."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    info = json.loads((Path(out) / EXPORT_FILE).read_text())
    prompt, classify = info["prompt"], info["task"]["head"] == "classify"
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = (AutoModelForSequenceClassification if classify else AutoModelForCausalLM).from_pretrained(out).eval()
    probs = []
    for text in texts:
        body = tokenizer(text, add_special_tokens=False).input_ids[:prompt["input_room"]]
        ids = prompt["prefix_ids"] + body + prompt["tail_ids"]
        assert len(ids) <= info["task"]["max_length"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits.float()
        if classify:
            probs.append(torch.softmax(logits[0], -1).numpy())
        else:
            firsts = [a["first_token_id"] for a in info["generate"]["answers"]]
            probs.append(torch.softmax(logits[0, -1, firsts], -1).numpy())
    return np.array(probs), model, tokenizer, info


def rows_with_a_long_one(spec):
    rows = load_rows(spec, "test")[0]
    return Rows(ids=list(rows.ids) + ["long"], texts=list(rows.texts) + [LONG])


@pytest.mark.parametrize("which, head", [("tiny_llama", "classify"), ("tiny_llama", "generate"),
                                         ("tiny_qwen2", "classify")])
def test_export_loads_in_plain_transformers_with_the_kits_probabilities(request, competition, trained, tmp_path,
                                                                       which, head):
    folder, spec = competition
    run = trained(request.getfixturevalue(which), head)
    out = tmp_path / "export"
    export_run(spec, out, run=run.name, runs=folder / "runs")
    rows = rows_with_a_long_one(spec)
    kit = load_model(run / "model").predict(rows).probs
    probs, model, tokenizer, info = plain_probs(out, rows.texts)
    difference = float(np.abs(probs - kit).max())
    print(f"{which} {head}: max |export - kit| = {difference:.2e}")
    assert difference < 1e-4
    # a plain model directory: merged safetensors weights, no adapter, fp32 as the CPU run trained
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert "--dtype float32" in info["serve"]["merged"]          # vLLM's auto would run fp32 weights in fp16
    assert info["run"]["merged"] and info["task"]["labels"] == ["0", "1"]
    readme = (out / "README.md").read_text()
    assert info["prompt"]["template"] in readme and "{input}" in info["prompt"]["template"]
    # a model card the hub reads, and files a teammate (or a server's user) can read
    card = readme.split("---\n")[1]
    assert "library_name: transformers" in card and "- kit" in card and "base_model" not in card   # a local base
    assert ("text-classification" if head == "classify" else "text-generation") in card
    mask = os.umask(0)
    os.umask(mask)
    assert all(path.stat().st_mode & 0o777 == 0o666 & ~mask for path in out.iterdir() if path.is_file())
    assert spec.instruction in info["prompt"]["template"] and "vLLM was NOT run" in readme
    assert tokenizer.chat_template and tokenizer.pad_token_id == model.config.pad_token_id
    # the training prompt is baked into the chat template: a user message alone renders it
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], add_generation_prompt=True,
                                             tokenize=False)
    assert tokenizer(rendered, add_special_tokens=False).input_ids == \
        info["prompt"]["prefix_ids"] + tokenizer("a cat", add_special_tokens=False).input_ids + info["prompt"]["tail_ids"]
    own = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}],
                                        add_generation_prompt=True, tokenize=False)
    assert "Be brief." in own and spec.instruction not in own          # a system message of its own still wins
    if head == "classify":
        assert model.config.architectures[0].endswith("ForSequenceClassification")
        assert model.config.num_labels == 2 and model.config.id2label == {0: "0", 1: "1"}
        assert model.config.label2id == {"0": 0, "1": 1}
        assert "--runner pooling --convert classify" in info["serve"]["merged"]
    else:
        assert model.config.architectures[0].endswith("ForCausalLM")
        for answer in info["generate"]["answers"]:
            assert f"word `{answer['word']}`" in readme and str(answer["first_token_id"]) in readme
        assert "--enable-lora --lora-modules" in info["serve"]["adapter"]
        assert str((run / "model" / "adapter").resolve()) in info["serve"]["adapter"]
        # the LoRA really was merged: the export is not the base model
        base = plain_probs_of_base(request.getfixturevalue(which), info, tokenizer, rows.texts)
        assert np.abs(base - probs).max() > 1e-6


def plain_probs_of_base(base_path, info, tokenizer, texts):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(base_path).eval()
    firsts = [a["first_token_id"] for a in info["generate"]["answers"]]
    prompt, probs = info["prompt"], []
    for text in texts:
        ids = prompt["prefix_ids"] + tokenizer(text, add_special_tokens=False).input_ids[:prompt["input_room"]] \
            + prompt["tail_ids"]
        with torch.no_grad():
            probs.append(torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1, firsts], -1).numpy())
    return np.array(probs)


def test_full_fine_tune_exports_too(competition, trained, tiny_llama, tmp_path):
    folder, spec = competition
    run = trained(tiny_llama, "classify", lora_r=0)
    out = tmp_path / "full"
    info = export_run(spec, out, run=run.name, runs=folder / "runs")
    assert not info["run"]["merged"] and "adapter" not in info["serve"]
    rows = rows_with_a_long_one(spec)
    probs = plain_probs(out, rows.texts)[0]
    assert np.abs(probs - load_model(run / "model").predict(rows).probs).max() < 1e-4


def test_tfidf_and_untrained_runs_are_refused(competition, tiny_llama, tmp_path):
    folder, spec = competition
    directory, _ = train_run(spec, ModelArgs(model="tfidf"), FAST, runs=folder / "runs")
    with pytest.raises(KitError, match="tfidf model has no weights a serving engine loads"):
        export_run(spec, tmp_path / "out", run=Path(directory).name, runs=folder / "runs")
    open_run(spec, ModelArgs(model=tiny_llama, lora_r=4), FAST, name="untrained", runs=folder / "runs")
    with pytest.raises(KitError, match="no trained model"):
        export_run(spec, tmp_path / "out", run="untrained", runs=folder / "runs")
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_force_and_a_crash_leaves_the_old_export(competition, trained, tiny_llama, tmp_path,
                                                                    monkeypatch):
    folder, spec = competition
    run, runs = trained(tiny_llama, "classify"), folder / "runs"
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(KitError, match="not empty; pass --force"):
        export_run(spec, out, run=run.name, runs=runs)
    # --force replaces only an earlier export: a folder of the user's own files is never deleted
    with pytest.raises(KitError, match="holds no kit_export.json, so it is not a kit export"):
        export_run(spec, out, run=run.name, runs=runs, force=True)
    assert (out / "old.txt").read_text() == "keep me"
    with pytest.raises(KitError, match="overlaps the run folder"):
        export_run(spec, run / "export", run=run.name, runs=runs, force=True)
    (out / "old.txt").unlink()
    export_run(spec, out, run=run.name, runs=runs)                  # an empty folder needs no --force
    earlier = sorted(p.name for p in out.iterdir())

    def crash(*args):
        raise RuntimeError("disk full")
    with monkeypatch.context() as patch:
        patch.setattr("kit.outputs.export._check_tokenizer", crash)
        with pytest.raises(RuntimeError, match="disk full"):
            export_run(spec, out, run=run.name, runs=runs, force=True)
    assert sorted(p.name for p in out.iterdir()) == earlier          # the earlier export, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["export"]       # no half export beside it
    export_run(spec, out, run=run.name, runs=runs, force=True)
    assert (out / EXPORT_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    (tmp_path / "empty").mkdir()                                    # an empty folder needs no --force
    export_run(spec, tmp_path / "empty", run=run.name, runs=runs)


def test_the_command_prints_the_vllm_commands(competition, trained, tiny_llama, tmp_path, monkeypatch):
    folder, spec = competition
    run = trained(tiny_llama, "generate")
    monkeypatch.chdir(folder)                                       # runs/ is the default folder
    out = tmp_path / "served"
    result = CliRunner().invoke(export, ["--spec", str(spec.path), "--out", str(out), "--run", run.name])
    assert result.exit_code == 0, result.output
    print(result.output)
    assert f"vllm serve {out.resolve()}" in result.output
    assert f"--enable-lora --lora-modules {run.name}={(run / 'model' / 'adapter').resolve()}" in result.output
    again = CliRunner().invoke(export, ["--spec", str(spec.path), "--out", str(out), "--run", run.name])
    assert again.exit_code == 2 and "--force" in again.output
    missing = CliRunner().invoke(export, ["--spec", str(spec.path), "--out", str(tmp_path / "t"), "--run", "nope"])
    assert missing.exit_code == 2 and "no such run folder" in missing.output


def test_dtype_writes_the_weights_in_the_dtype_asked_for(competition, trained, tiny_llama, tmp_path):
    folder, spec = competition
    run = trained(tiny_llama, "classify")
    info = export_run(spec, tmp_path / "bf16", run=run.name, runs=folder / "runs", dtype="bf16")
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert info["run"]["dtype"] == "bfloat16" and "--dtype bfloat16" in info["serve"]["merged"]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_the_model_card_names_an_embedded_base_by_its_hub_id():
    card = front_matter({"run": {"base_model": "smollm2", "merged": True}, "task": {"head": "generate"}})
    assert card[:2] == ["---", 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"']
    assert "pipeline_tag: text-generation" in card and "- lora" in card and card[-2:] == ["---", ""]


def test_label_descriptions_travel_with_the_export(tmp_path, tiny_llama):
    spec_path = write_toy_competition(tmp_path)
    spec_path.write_text(spec_path.read_text().replace(
        "max_length = 64", 'max_length = 64\nlabel_descriptions = { "1" = "about animals" }'))
    spec = load_spec(spec_path)
    folder, _ = train_run(spec, ModelArgs(model=tiny_llama, head="classify"), FAST, runs=tmp_path / "runs")
    info = export_run(spec, tmp_path / "out", run=folder.name, runs=tmp_path / "runs")
    assert info["task"]["label_descriptions"] == {"1": "about animals"}
    assert "- 1: `1`: about animals" in (tmp_path / "out" / "README.md").read_text()
