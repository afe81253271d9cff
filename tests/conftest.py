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
    from kit.models import resolve_model
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
