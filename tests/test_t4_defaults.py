"""The T4 (16 GB, fp16, no bf16, no flash-attention) defaults, without the user's help: fp16 autocast
with a scaler, sdpa attention, and 4-bit base weights where the memory estimate says the model would
not fit. No GPU here: the device is described to the kit, and the 7B model is a config alone (its
shape is built on the meta device; no weight is read)."""
import logging

import pytest
from transformers import AutoTokenizer, LlamaConfig

from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.tasks import Task
from kit.models import transformer
from kit.models.registry import make_model

T4 = {"name": "Tesla T4", "bf16": False, "total_bytes": 15 * 2 ** 30}


@pytest.fixture
def on_a_t4(monkeypatch):
    monkeypatch.setattr(transformer, "cuda_info", lambda device="auto": T4)


@pytest.fixture(scope="module")
def llama_7b_config(tmp_path_factory, smol_tokenizer_dir):
    """Llama-2-7B's shape (32 blocks of 4096), as a directory holding its config and a tokenizer only."""
    directory = tmp_path_factory.mktemp("llama-7b")
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=49152, pad_token_id=2, eos_token_id=2,
                bos_token_id=1).save_pretrained(directory)
    AutoTokenizer.from_pretrained(smol_tokenizer_dir).save_pretrained(directory)
    return str(directory)


def plan(model):
    return make_model(Task("Answer 1 or 0.", ["0", "1"], 256), ModelArgs(model=model), TrainArgs(batch_size=8))


def test_a_7b_model_on_a_t4_gets_fp16_sdpa_and_4bit_weights(on_a_t4, llama_7b_config, caplog):
    caplog.set_level(logging.INFO, logger="kit")
    args = plan(llama_7b_config).resolve_args()
    assert (args.precision, args.attention, args.lora_layers) == ("fp16", "sdpa", 0)
    assert args.quantize == "4bit" and args.gradient_checkpointing is True
    assert "4bit base weights (QLoRA): unquantized, the estimated peak" in caplog.text
    assert "fp16 autocast with a gradient scaler" in caplog.text


def test_a_small_model_on_a_t4_keeps_its_weights(on_a_t4, tiny_llama):
    args = plan(tiny_llama).resolve_args()
    assert args.quantize is None and args.precision == "fp16"


def test_a_cpu_never_quantizes_on_its_own(llama_7b_config, monkeypatch):
    monkeypatch.setattr(transformer, "cuda_info", lambda device="auto": None)
    assert plan(llama_7b_config).resolve_args().quantize is None


def test_no_4bit_where_it_cannot_help(on_a_t4, llama_7b_config, monkeypatch):
    full = make_model(Task("Answer 1 or 0.", ["0", "1"], 256), ModelArgs(model=llama_7b_config, lora_r=0),
                      TrainArgs(batch_size=8))
    assert full.resolve_args().quantize is None                     # a full fine-tune cannot train k-bit weights
    monkeypatch.setattr(transformer, "cuda_info", lambda device="auto": {**T4, "total_bytes": 2 * 2 ** 30})
    assert plan(llama_7b_config).resolve_args().quantize is None    # 4 bits do not fit 2 GB either
