"""The architecture matrix: tiny random models of every family the kit claims (Llama, Qwen2,
Qwen3, Gemma-2, GLM, GLM-4, Mistral, Phi-3), built from configs (no downloads), each through
both heads, save/reload, the frozen-bottom cache, the prefix KV cache and LoRA's default
targets; and each family's real chat-template format around the prompt encoder."""
import json

import numpy as np
import pytest
import torch
from conftest import ARCH_FAMILIES

from kit.core.errors import KitError
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine import architecture
from kit.engine import loop as train
from kit.engine.architecture import block_list
from kit.engine.frozen import FrozenBottom
from kit.engine.inference import PrefixCache, classify_proba, score_labels
from kit.engine.prompts import PromptEncoder
from kit.engine.states import MemoryStates
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.registry import load_model, make_model

FAST = TrainArgs(max_steps=3, batch_size=8, lr=5e-3, checkpoint_every=0)
TWO_EPOCHS = TrainArgs(max_steps=6, batch_size=8, lr=5e-3, checkpoint_every=0)   # 24 toy rows: each seen twice
HEADS = ("classify", "generate")


# Gemma-2 refuses sdpa (it cannot soft-cap attention logits), and the kit's `auto` picks sdpa off a
# flash-attention GPU: the matrix names eager for it; test_default_attention_loads_every_family
# shows the default.
ATTENTION = {"gemma2": "eager"}


def margs(tiny_arch, family, **options):
    return ModelArgs(model=tiny_arch(family), attention=ATTENTION.get(family, "auto"), **options)


def spec_rows(toy, split="train"):
    spec = load_spec(toy)
    return spec, load_rows(spec, split)[0]


# -- 1. both heads train, save and reload to identical probabilities ------------------------------
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_heads_train_save_and_reload_identically(tiny_arch, toy, tmp_path, family, head):
    spec, rows = spec_rows(toy)
    test = load_rows(spec, "test")[0]
    model = make_model(Task.from_spec(spec), margs(tiny_arch, family, head=head), FAST).fit(rows)
    assert len(model.loss_log) == 3 and all(np.isfinite(model.loss_log)), model.loss_log
    before = model.predict(test)
    assert before.probs.shape == (8, 2) and np.all(np.isfinite(before.probs))
    np.testing.assert_allclose(before.probs.sum(1), 1, rtol=1e-6)
    model.save(tmp_path / "saved")
    after = load_model(tmp_path / "saved").predict(test)
    # equal up to float32 rounding: under the lowest supported transformers (5.0) Gemma-2's reloaded
    # model differs from the trained one in the last bit of a few probabilities (3e-8)
    np.testing.assert_allclose(before.probs, after.probs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_default_attention_loads_every_family(tiny_arch, toy, family):
    spec = load_spec(toy)
    for head in HEADS:
        make_model(Task.from_spec(spec), ModelArgs(model=tiny_arch(family), head=head), FAST)._load_base()


# -- 2. the frozen-bottom cache trains exactly like the full pass ---------------------------------
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_frozen_bottom_equals_the_full_pass(tiny_arch, toy, monkeypatch, caplog, family, head):
    """LoRA on the top block only, two epochs: the cached states of blocks 1-2 must be exactly
    what block 3 sees in the full pass (Gemma-2 scales its embeddings inside forward)."""
    spec, rows = spec_rows(toy)
    # compare the losses unrounded: the log's 5 decimals would turn a 1e-8 difference at a rounding
    # boundary into 1e-5
    monkeypatch.setattr(train, "round", lambda value, digits=None: value, raising=False)
    logs = []
    for frozen in (True, False):
        real = train.fit
        monkeypatch.setattr(train, "fit", lambda *a, **k: real(*a, **{**k, "frozen_bottom": frozen}))
        args = margs(tiny_arch, family, head=head, lora_layers=1, frozen_states="fp32")
        model = make_model(Task.from_spec(spec), args, TWO_EPOCHS)
        logs.append(model.fit(rows).loss_log)
        monkeypatch.setattr(train, "fit", real)
    assert "frozen blocks: " not in caplog.text           # the cache was used, not refused
    assert len(logs[0]) == 6 and all(np.isfinite(logs[0]))
    np.testing.assert_allclose(logs[0], logs[1], rtol=1e-5)


def test_frozen_bottom_caches_the_blocks_below_the_trained_one(tiny_arch, toy):
    """The cache really splits at the first trained block (else test 2 proves nothing)."""
    spec, rows = spec_rows(toy)
    model = make_model(Task.from_spec(spec), margs(tiny_arch, "gemma2", lora_layers=1), TWO_EPOCHS)
    ids, _ = model.encode(rows)
    peft = model._add_lora(model._load_base())
    split = FrozenBottom.trainable_split(peft)
    assert split == 2
    cached = MemoryStates().states(peft, split, ids)
    # the cached states are block 2's output, scaled embeddings included
    backbone = architecture.backbone_of(peft)
    with torch.no_grad():
        states = backbone(input_ids=torch.tensor([ids[0]]), output_hidden_states=True).hidden_states
    # (a neighbouring block's output differs by far more than the rounding of a batched pass)
    torch.testing.assert_close(torch.from_numpy(cached.arrays[0]), states[2][0], rtol=1e-5, atol=1e-5)


# -- 3. the prefix KV cache gives the same scores as no cache -------------------------------------
def untrained(tiny_arch, toy, family, head):
    """The family's tiny model with a head, untrained; the toy rows' prompt ids; the pad id."""
    spec, rows = spec_rows(toy)
    model = make_model(Task.from_spec(spec), margs(tiny_arch, family, head=head), FAST)
    ids, _ = model.encode(rows)
    return model, model._load_base().eval(), ids, model.tokenizer.pad_token_id


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_prefix_cache_gives_the_same_label_scores(tiny_arch, toy, family):
    model, base, ids, pad = untrained(tiny_arch, toy, family, "generate")
    firsts = [a[0] for a in model.answers]
    assert PrefixCache(base, ids).length > 5           # the template + instruction is shared
    with_cache = score_labels(base, ids, firsts, pad, 8, True)
    without = score_labels(base, ids, firsts, pad, 8, False)
    assert np.all(np.isfinite(without))
    np.testing.assert_allclose(with_cache, without, atol=1e-5)


@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_prefix_cache_gives_the_same_classify_probabilities(tiny_arch, toy, family):
    _, base, ids, pad = untrained(tiny_arch, toy, family, "classify")
    with_cache = classify_proba(base, ids, pad, 8, True)
    without = classify_proba(base, ids, pad, 8, False)
    assert np.all(np.isfinite(without))
    np.testing.assert_allclose(with_cache, without, atol=1e-5)


# -- 2b/3b. rows longer than the sliding window -----------------------------------------------
# Real Gemma-2 and Mistral-7B-v0.1 attend over a 4096-token window (Gemma-2's context is 8192);
# a 16-token window makes the toy rows (33-36 tokens) longer than it.
@pytest.mark.parametrize("family, lora_layers", [
    ("mistral", 2), ("gemma2", 1), ("gemma2", 2),
])
def test_frozen_bottom_equals_the_full_pass_beyond_the_sliding_window(tiny_arch, toy, monkeypatch, caplog,
                                                                       family, lora_layers):
    spec, rows = spec_rows(toy)
    path = tiny_arch(family, sliding_window=16)
    monkeypatch.setattr(train, "round", lambda value, digits=None: value, raising=False)
    logs = []
    for frozen in (True, False):
        real = train.fit
        monkeypatch.setattr(train, "fit", lambda *a, **k: real(*a, **{**k, "frozen_bottom": frozen}))
        args = ModelArgs(model=path, head="classify", lora_layers=lora_layers, attention=ATTENTION.get(family, "auto"),
                         frozen_states="fp32")
        logs.append(make_model(Task.from_spec(spec), args, TWO_EPOCHS).fit(rows).loss_log)
        monkeypatch.setattr(train, "fit", real)
    assert "frozen blocks: " not in caplog.text
    assert min(len(s) for s in make_model(Task.from_spec(spec), args, FAST).encode(rows)[0]) > 16
    np.testing.assert_allclose(logs[0], logs[1], rtol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "mistral"])
def test_prefix_cache_gives_the_same_scores_beyond_the_sliding_window(tiny_arch, toy, family):
    spec, rows = spec_rows(toy)
    args = ModelArgs(model=tiny_arch(family, sliding_window=16), head="generate",
                     attention=ATTENTION.get(family, "auto"))
    model = make_model(Task.from_spec(spec), args, FAST)
    ids, _ = model.encode(rows)
    base = model._load_base().eval()
    pad, firsts = model.tokenizer.pad_token_id, [a[0] for a in model.answers]
    one_by_one = score_labels(base, ids, firsts, pad, 1, True)        # no padding: the cache is exact
    np.testing.assert_allclose(one_by_one, score_labels(base, ids, firsts, pad, 1, False), atol=1e-5)
    np.testing.assert_allclose(score_labels(base, ids, firsts, pad, 8, True),
                               score_labels(base, ids, firsts, pad, 8, False), atol=1e-5)


# -- 4. LoRA's default targets are the blocks' linear layers --------------------------------------
EXPECTED_TARGETS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen3": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "glm": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"},
    "glm4": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", ARCH_FAMILIES)
def test_lora_default_targets_are_the_blocks_linear_layers(tiny_arch, toy, family, head):
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    spec = load_spec(toy)
    model = make_model(Task.from_spec(spec), margs(tiny_arch, family, head=head, lora_layers=0), FAST)
    bare = model._load_base()
    _, _, blocks = block_list(bare)
    block_ids = {id(m) for m in blocks.modules()}
    linear = {name for name, m in bare.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in block_ids}
    peft = model._add_lora(bare)
    prefix = "base_model.model."
    wrapped = {name[len(prefix):] for name, m in peft.named_modules() if isinstance(m, LoraLayer)}
    leaf = lambda names: {n.rsplit(".", 1)[-1] for n in names}   # noqa: E731
    assert leaf(wrapped) == leaf(linear) == EXPECTED_TARGETS[family]
    assert wrapped == linear                            # every block, every linear layer, nothing else
    assert not any(n.rsplit(".", 1)[-1] in ("lm_head", "score") for n in wrapped)
    heads = {name.rsplit(".", 1)[-1] for name, m in peft.named_modules() if isinstance(m, ModulesToSaveWrapper)}
    assert heads == ({"score"} if head == "classify" else set())     # the new head trains in full
    if head == "classify":
        score = peft.base_model.model.score
        assert all(p.requires_grad for p in score.modules_to_save.parameters())


# -- 5. each family's real chat-template format -----------------------------------------------
# Jinja templates reproducing the real ones' output for system + user + generation prompt.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Qwen3: ChatML; the non-thinking answer slot follows an empty think block (enable_thinking=False)
QWEN3 = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
         "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
         "{% endif %}{% endif %}")
GLM4 = ("[gMASK]<sop>{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n'"
          " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "{{ '<start_of_turn>' + role + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
           "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
PHI3 = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")
# Phi-3-medium-4k-instruct (and the first Phi-3-mini): user/assistant only, a system message is dropped
PHI3_NO_SYSTEM = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                  "{{ '<|user|>\\n' + m['content'] + '<|end|>\\n<|assistant|>\\n' }}"
                  "{% elif m['role'] == 'assistant' %}{{ m['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}")

I, X = "{instruction}", "{text}"
FORMATS = {   # name: (template, special tokens, bos, expected prompt, generation prompt)
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], None,
               f"<|im_start|>system\n{I}<|im_end|>\n<|im_start|>user\n{X}<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>assistant\n"),
    "qwen3": (QWEN3, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"], None,
              f"<|im_start|>system\n{I}<|im_end|>\n<|im_start|>user\n{X}<|im_end|>\n<|im_start|>assistant\n"
              "<think>\n\n</think>\n\n", "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    "glm4": (GLM4, ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"], None,
             # the answer slot is after the newline GLM-4 writes before every reply
             f"[gMASK]<sop><|system|>\n{I}<|user|>\n{X}<|assistant|>\n", "<|assistant|>\n"),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>",
               f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{I}<|eot_id|>"
               f"<|start_header_id|>user<|end_header_id|>\n\n{X}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "gemma": (GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
              f"<bos><start_of_turn>user\n{I}\n{X}<end_of_turn>\n<start_of_turn>model\n",
              "<start_of_turn>model\n"),
    "mistral": (MISTRAL, ["<s>", "[INST]", "[/INST]"], "<s>", f"<s>[INST] {I}\n{X} [/INST]", " [/INST]"),
    "phi3": (PHI3, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], None,
             f"<|system|>\n{I}<|end|>\n<|user|>\n{X}<|end|>\n<|assistant|>\n", "<|end|>\n<|assistant|>\n"),
    "phi3-no-system": (PHI3_NO_SYSTEM, ["<s>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>",
                       f"<s><|user|>\n{I}\n{X}<|end|>\n<|assistant|>\n", "<|end|>\n<|assistant|>\n"),
}
FORMAT_CASES = [
    "chatml", "glm4", "llama3", "gemma", "mistral", "phi3", "qwen3", "phi3-no-system",
]


def family_tokenizer(smol_tokenizer_dir, fmt):
    """The SmolLM2 tokenizer dressed as the family's: its special tokens and chat template."""
    from transformers import AutoTokenizer
    template, specials, bos, _, _ = FORMATS[fmt]
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if bos:
        tokenizer.bos_token = bos
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("fmt", FORMAT_CASES)
def test_chat_template_format_puts_the_answer_slot_where_the_model_writes(smol_tokenizer_dir, toy, fmt):
    spec, rows = spec_rows(toy)
    tokenizer = family_tokenizer(smol_tokenizer_dir, fmt)
    _, specials, _, expected, generation = FORMATS[fmt]
    encoder = PromptEncoder(tokenizer, spec.instruction, 128)
    text = rows.texts[0]
    ids = encoder.encode(text).ids
    assert tokenizer.decode(ids) == expected.format(instruction=spec.instruction, text=text)
    for token in specials:                               # one token each, never split into pieces
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id]
        assert ids.count(token_id) == expected.count(token)
    generation_ids = tokenizer(generation, add_special_tokens=False).input_ids
    assert ids[-len(generation_ids):] == generation_ids  # the prompt ends at the answer slot
    assert encoder.tail[-len(generation_ids):] == generation_ids
    assert len(encoder.prefix) > 5 and ids[:len(encoder.prefix)] == encoder.prefix


# the real tokenizers' eos_token, and the token the family closes the assistant's turn with
END_OF_TURN = {"chatml": ("<|im_end|>", "<|im_end|>"), "llama3": ("<|eot_id|>", "<|eot_id|>"),
               "mistral": ("</s>", "</s>"), "gemma": ("<eos>", "<end_of_turn>"), "phi3": ("<|endoftext|>", "<|end|>")}
@pytest.mark.parametrize("fmt", ["chatml", "llama3", "mistral", "gemma", "phi3"])
def test_generate_answers_end_with_the_familys_end_of_turn(smol_tokenizer_dir, fmt):
    from kit.engine.prompts import answer_ids
    tokenizer = family_tokenizer(smol_tokenizer_dir, fmt)
    eos, end = END_OF_TURN[fmt]
    tokenizer.add_tokens([end], special_tokens=True)
    tokenizer.add_special_tokens({"eos_token": eos})
    for answer in answer_ids(tokenizer, ["0", "1"]):
        assert answer[-1] == tokenizer.convert_tokens_to_ids(end), tokenizer.decode(answer)


@pytest.mark.parametrize("family, fmt", [("qwen2", "chatml"), ("glm4", "glm4")])
def test_a_family_template_trains_end_to_end(tmp_path, smol_tokenizer_dir, toy, family, fmt):
    """The tokenizer (its template, its new special tokens) saved in the model folder is the one
    the kit trains and predicts with. New tokens get ids past SmolLM2's vocabulary, so the
    model's vocabulary is grown to cover them."""
    import conftest
    tokenizer = family_tokenizer(smol_tokenizer_dir, fmt)
    torch.manual_seed(0)
    config, cls = conftest._arch_config(family)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    cls(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    spec, rows = spec_rows(toy)
    model = make_model(Task.from_spec(spec), ModelArgs(model=str(tmp_path / "model"), head="generate"),
                       TrainArgs(max_steps=2, batch_size=8, lr=5e-3, checkpoint_every=0)).fit(rows)
    assert len(model.loss_log) == 2 and all(np.isfinite(model.loss_log))
    generation = FORMATS[fmt][4]
    ids, _ = model.encode(rows)
    assert model.tokenizer.decode(ids[0]).endswith(generation)
    probs = model.predict(load_rows(spec, "test")[0]).probs
    assert probs.shape == (8, 2) and np.all(np.isfinite(probs))


# -- 6. ChatGLM2/3: remote code only ----------------------------------------------------------
def test_remote_code_model_is_refused_without_trust_remote_code(tmp_path, toy):
    """ChatGLM2/3 ship their modeling code on the hub (model_type chatglm, auto_map): without
    --trust-remote-code the kit must refuse, naming the flag, before running anything."""
    directory = tmp_path / "chatglm3-6b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
                     "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification"},
        "num_layers": 2, "hidden_size": 32, "padded_vocab_size": 49152}))
    spec, rows = spec_rows(toy)
    model = make_model(Task.from_spec(spec), ModelArgs(model=str(directory), head="generate"), FAST)
    with pytest.raises((KitError, ValueError), match="trust.remote.code") as caught:
        model.fit(rows)
    assert "chatglm" in str(caught.value).lower() or str(directory) in str(caught.value)


def test_remote_code_refusal_is_a_one_line_kit_error(tmp_path, toy):
    directory = tmp_path / "chatglm3-6b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "model_type": "chatglm", "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"}}))
    spec, rows = spec_rows(toy)
    with pytest.raises(KitError, match="--trust-remote-code"):
        make_model(Task.from_spec(spec), ModelArgs(model=str(directory), head="generate"), FAST).fit(rows)
