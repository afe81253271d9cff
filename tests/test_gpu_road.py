"""The GPU road, tested on the CPU: device-aware defaults, precisions, gradient checkpointing,
QLoRA through bitsandbytes (which runs k-bit weights on CPUs too), and the memory estimate's
refusal. The same code paths run on a GPU; only the device differs."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT

from kit.commands.main import main
from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine.device import estimate_peak, model_shape, resolve
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.registry import load_model, make_model

FAST = TrainArgs(max_steps=3, batch_size=8, lr=5e-3, checkpoint_every=0)
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="session")
def tiny_llama64(tmp_path_factory, smol_tokenizer_dir):
    """bitsandbytes' CPU kernels quantise in blocks of 64 inputs: hidden sizes must be multiples
    of 64, as every real model's are."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-llama64")
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                 pad_token_id=2, eos_token_id=2, bos_token_id=1)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(smol_tokenizer_dir).save_pretrained(directory)
    return str(directory)


def _fit(path, spec, **model_options):
    args = ModelArgs(model=path, **model_options)
    return make_model(Task.from_spec(spec), args, FAST).fit(load_rows(spec, "train")[0])


# -- device-aware defaults ----------------------------------------------------------------------
GPU_BF16 = {"name": "a bf16 GPU", "bf16": True, "total_bytes": 24 * 2**30}
GPU_T4 = {"name": "Tesla T4", "bf16": False, "total_bytes": 15 * 2**30}


def _config_dir(tmp_path, name):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "config.json").write_text((ROOT / "configs" / f"{name}.json").read_text())
    return str(directory)


def test_auto_settings_per_device(tmp_path):
    big = model_shape(_config_dir(tmp_path, "qwen2.5-7b"))
    cpu, _ = resolve(ModelArgs(), None, None)
    assert (cpu.lora_layers, cpu.precision, cpu.gradient_checkpointing, cpu.attention) == (4, "fp32", False, "sdpa")
    gpu, lines = resolve(ModelArgs(), big, GPU_BF16)
    assert (gpu.lora_layers, gpu.precision, gpu.gradient_checkpointing) == (0, "bf16", True)
    t4, lines = resolve(ModelArgs(), big, GPU_T4)
    assert t4.precision == "fp16" and any("gradient scaler" in line for line in lines)
    small = model_shape(_config_dir(tmp_path, "qwen2.5-0.5b"))
    assert resolve(ModelArgs(), small, GPU_BF16)[0].gradient_checkpointing is False   # under 1B
    explicit, _ = resolve(ModelArgs(lora_layers=2, precision="fp32", gradient_checkpointing=False), big, GPU_BF16)
    assert (explicit.lora_layers, explicit.precision, explicit.gradient_checkpointing) == (2, "fp32", False)


def test_the_plan_is_printed_and_recorded(tmp_path, toy, tiny_llama, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "--spec", str(toy), "--model", tiny_llama, "--max-steps", "1",
                                       "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    (config,) = tmp_path.glob("runs/*/run.json")
    model = json.loads(config.read_text())["model"]
    assert (model["lora_layers"], model["precision"], model["gradient_checkpointing"], model["attention"]) == \
        (4, "fp32", False, "sdpa")


# -- precisions and gradient checkpointing -------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_runs(tiny_llama, toy, precision):
    """bf16 autocast; fp16 autocast with a gradient scaler (the T4 / V100 road)."""
    model = _fit(tiny_llama, load_spec(toy), precision=precision, lora_layers=0)
    assert len(model.loss_log) == 3 and all(np.isfinite(model.loss_log))
    assert all(p.dtype == torch.float32 for p in model.model.parameters() if p.requires_grad)


def test_gradient_checkpointing_gives_the_same_losses(tiny_llama, toy):
    spec = load_spec(toy)
    off = _fit(tiny_llama, spec, gradient_checkpointing=False, lora_layers=0).loss_log
    on = _fit(tiny_llama, spec, gradient_checkpointing=True, lora_layers=0).loss_log
    np.testing.assert_allclose(on, off, rtol=1e-5)


# -- QLoRA ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes not installed")
@pytest.mark.parametrize("head", ["classify", "generate"])
def test_qlora_trains_saves_and_reloads(tiny_llama64, toy, tmp_path, head):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    spec = load_spec(toy)
    model = _fit(tiny_llama64, spec, head=head, quantize="4bit")
    layer = model.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and all(np.isfinite(model.loss_log))
    test = load_rows(spec, "test")[0]
    before = model.predict(test).probs
    model.save(tmp_path / "saved")
    np.testing.assert_array_equal(load_model(tmp_path / "saved").predict(test).probs, before)
    # the adapter loads on the un-quantised base too
    plain = (AutoModelForSequenceClassification.from_pretrained(tiny_llama64, num_labels=2) if head == "classify"
             else AutoModelForCausalLM.from_pretrained(tiny_llama64))
    PeftModel.from_pretrained(plain, tmp_path / "saved" / "adapter")


def test_quantize_without_bitsandbytes_is_one_line(tmp_path, toy, tiny_llama, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "--spec", str(toy), "--model", tiny_llama, "--quantize", "4bit"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--quantize 4bit needs bitsandbytes: pip install 'competition-kit[qlora]'" in result.output


# -- the memory estimate -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def qwen7b_config_dir(tmp_path_factory, smol_tokenizer_dir):
    """Qwen2.5-7B's real config (no weights) with a borrowed tokenizer: enough to plan a run."""
    from transformers import AutoTokenizer
    directory = tmp_path_factory.mktemp("qwen7b")
    (directory / "config.json").write_text((ROOT / "configs" / "qwen2.5-7b.json").read_text())
    AutoTokenizer.from_pretrained(smol_tokenizer_dir).save_pretrained(directory)
    return directory


def test_a_run_that_cannot_fit_is_refused_before_loading(tmp_path, toy, qwen7b_config_dir, monkeypatch):
    monkeypatch.setattr("kit.models.transformer.available_memory_bytes", lambda: 24 * 2**30)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "--spec", str(toy), "--model", str(qwen7b_config_dir)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "does not fit the 24.0 GB" in result.output and "--quantize 4bit" in result.output
    assert "--batch-size" in result.output and "--max-length" in result.output


def test_estimates_for_a_24gb_card(qwen7b_config_dir):
    """7B at batch 8 x 512 on a 24 GB card: bf16 LoRA needs gradient checkpointing (the GPU
    default for models over 1B); 4-bit QLoRA fits under 20 GB either way."""
    shape = model_shape(str(qwen7b_config_dir))
    assert 7.0e9 < shape.params < 8.0e9
    gpu = dict(lora_layers=0, precision="bf16", attention="sdpa")
    peak = lambda **options: sum(estimate_peak(shape, ModelArgs(**gpu, **options), 8, 512, True).values())  # noqa: E731
    card = 24 * 2**30
    assert peak(gradient_checkpointing=False) > card > peak(gradient_checkpointing=True)
    assert peak(gradient_checkpointing=True, quantize="4bit") < 20 * 2**30
    with pytest.raises(KitError, match="does not fit"):
        from kit.engine.device import check_memory
        check_memory(estimate_peak(shape, ModelArgs(**gpu, gradient_checkpointing=False), 8, 512, True), card, "x")
