"""Shared fixtures: small competitions written on the fly, and tiny random models built from a
config (no downloads). The tiny models borrow the embedded SmolLM2 tokenizer (its chat template)."""
import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def private_state_cache(tmp_path, monkeypatch):
    """Every test gets its own frozen-state cache (kit/engine/states.py), never the repository's."""
    from kit.engine import states
    monkeypatch.setattr(states, "ROOT", tmp_path / "state-cache")
    return tmp_path / "state-cache"


def write_spec(directory, extra="", **overrides):
    """A binary spec over train.csv/test.csv in directory; overrides replace whole lines."""
    values = {"name": "toy", "train": "train.csv", "input": "{text}", "labels": '["0", "1"]',
              "columns": '["id", "label"]', "splits": 'test = "test.csv"', "sample": ""}
    values.update(overrides)
    text = textwrap.dedent(f"""\
        name = "{values['name']}"
        train = "{values['train']}"
        [splits]
        {values['splits']}
        [columns]
        id = "id"
        label = "label"
        input = "{values['input']}"
        [task]
        instruction = "Is the text about animals? Answer 1 or 0."
        labels = {values['labels']}
        max_length = 64
        [submission]
        columns = {values['columns']}
        {values['sample']}
        """) + extra
    path = Path(directory) / "competition.toml"
    path.write_text(text)
    return path


ANIMALS = ["the cat sleeps on the mat", "a dog barks at night", "horses run in the field",
           "the bird sings a song", "a cow eats green grass", "fish swim in the lake"]
OTHER = ["the stock market fell today", "a new phone was released", "taxes rise next year",
         "the train was late again", "rain is expected tomorrow", "the server crashed twice"]


def write_toy_competition(directory, rows=24, test_rows=8):
    """A tiny binary competition: train.csv (id,text,label), test.csv (id,text)."""
    directory = Path(directory)
    lines = ["id,text,label"]
    for i in range(rows):
        text = (ANIMALS if i % 2 else OTHER)[i % 6]
        lines.append(f"{i},{text} {i},{i % 2}")
    (directory / "train.csv").write_text("\n".join(lines) + "\n")
    test = ["id,text"] + [f"{100 + i},{(ANIMALS if i % 2 else OTHER)[(i + 3) % 6]}" for i in range(test_rows)]
    (directory / "test.csv").write_text("\n".join(test) + "\n")
    return write_spec(directory)


@pytest.fixture
def toy(tmp_path):
    return write_toy_competition(tmp_path)


@pytest.fixture(scope="session")
def smol_tokenizer_dir():
    from kit.models.embedded import resolve_model
    return resolve_model("smollm2")


def _tiny(kind, directory, tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    common = dict(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True, pad_token_id=2, eos_token_id=2, bos_token_id=1)
    config, cls = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    model = cls(config(**common))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smol_tokenizer_dir):
    return _tiny("llama", tmp_path_factory.mktemp("tiny-llama"), smol_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, smol_tokenizer_dir):
    return _tiny("qwen2", tmp_path_factory.mktemp("tiny-qwen2"), smol_tokenizer_dir)


# -- the architecture matrix (tests/test_architectures.py) -------------------------------------
ARCH_FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "glm", "glm4", "mistral", "phi3")


def _arch_config(kind):
    """A tiny config of each family (hidden 32, 3 blocks), with the family's own quirks kept:
    Gemma-2's embedding scale, soft-capping and alternating sliding/full attention, GLM's
    partial rotary embeddings and qkv bias, Phi-3's fused qkv_proj and gate_up_proj."""
    import transformers
    common = dict(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=2, eos_token_id=2, bos_token_id=1)
    extra = {
        "llama": dict(tie_word_embeddings=True),
        "qwen2": dict(tie_word_embeddings=True),
        "qwen3": dict(tie_word_embeddings=True, head_dim=8),
        "gemma2": dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=128,
                       hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=30.0,
                       attn_logit_softcapping=50.0, tie_word_embeddings=True),
        "glm": dict(head_dim=8, attention_bias=True, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        "glm4": dict(head_dim=8, attention_bias=True, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
        "mistral": dict(head_dim=8, sliding_window=128, tie_word_embeddings=False),
        "phi3": dict(tie_word_embeddings=False),
    }[kind]
    name = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma2", "glm": "Glm",
            "glm4": "Glm4", "mistral": "Mistral", "phi3": "Phi3"}[kind]
    return getattr(transformers, f"{name}Config")(**common, **extra), getattr(transformers, f"{name}ForCausalLM")


def _tiny_arch(kind, directory, tokenizer_dir, **overrides):
    import torch
    from transformers import AutoTokenizer
    torch.manual_seed(0)
    config, cls = _arch_config(kind)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = cls(config)
    assert model.config.model_type == kind
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory, smol_tokenizer_dir):
    """(kind, **config overrides) -> the directory of a tiny random model of that family, built
    once per session (say tiny_arch("gemma2", sliding_window=16): rows longer than the window)."""
    built = {}

    def get(kind, **overrides):
        key = (kind, tuple(sorted(overrides.items())))
        if key not in built:
            built[key] = _tiny_arch(kind, tmp_path_factory.mktemp(f"tiny-{kind}"), smol_tokenizer_dir, **overrides)
        return built[key]
    return get


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A fresh working folder: the test runs inside tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
