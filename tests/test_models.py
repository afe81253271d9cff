"""Every road through the same interface: tiny random Qwen2 / Llama (no downloads) with both
heads, the embedded MiniLM encoder, TF-IDF; save and reload give identical predictions."""
import logging
from dataclasses import replace

import numpy as np
import pytest

from kit.core.settings import ModelArgs, TrainArgs
from kit.engine import loop as train
from kit.engine.inference import PrefixCache, score_labels
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.registry import load_model, make_model

FAST = TrainArgs(max_steps=3, batch_size=8, lr=5e-3, checkpoint_every=0)


def rows_of(spec_path, split="train"):
    spec = load_spec(spec_path)
    return spec, load_rows(spec, split)[0]


def fit_save_reload(spec_path, tmp_path, args, mode="score"):
    spec, rows = rows_of(spec_path)
    test = load_rows(spec, "test")[0]
    model = make_model(Task.from_spec(spec), args, FAST).fit(rows)
    before = model.predict(test, mode)
    model.save(tmp_path / "saved")
    after = load_model(tmp_path / "saved").predict(test, mode)
    return model, before, after


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("head", ["classify", "generate"])
def test_decoder_heads_save_and_reload_identically(request, toy, tmp_path, which, head):
    path = request.getfixturevalue(which)
    model, before, after = fit_save_reload(toy, tmp_path, ModelArgs(model=path, head=head))
    assert before.probs.shape == (8, 2) and np.allclose(before.probs.sum(1), 1)
    np.testing.assert_array_equal(before.probs, after.probs)
    assert len(model.loss_log) == 3 and all(np.isfinite(model.loss_log))


def test_classify_head_is_saved_with_the_adapter(tiny_qwen2, toy, tmp_path):
    fit_save_reload(toy, tmp_path, ModelArgs(model=tiny_qwen2, head="classify"))
    from safetensors.torch import load_file
    keys = load_file(tmp_path / "saved" / "adapter" / "adapter_model.safetensors").keys()
    assert any("score" in k for k in keys), sorted(keys)[:5]


def test_generate_mode_parses_or_falls_back(tiny_llama, toy, tmp_path):
    _, before, after = fit_save_reload(toy, tmp_path, ModelArgs(model=tiny_llama, head="generate"), "generate")
    assert set(before.decided) <= {"generate", "fallback"}
    assert before.stats["fallback_rows"] == before.decided.count("fallback")
    # a random tiny model rarely answers a clean label: the fallback rows get label scores
    assert len(before.answers) == 8
    np.testing.assert_array_equal(before.probs, after.probs)


def test_full_fine_tune_without_lora(tiny_llama, toy, tmp_path):
    _, before, after = fit_save_reload(toy, tmp_path, ModelArgs(model=tiny_llama, head="classify", lora_r=0))
    np.testing.assert_array_equal(before.probs, after.probs)


def test_embedded_encoder_classify(toy, tmp_path):
    _, before, after = fit_save_reload(toy, tmp_path, ModelArgs(model="minilm", head="classify"))
    np.testing.assert_array_equal(before.probs, after.probs)


def test_encoder_has_no_generative_head(toy):
    from kit.core.errors import KitError
    spec, rows = rows_of(toy)
    with pytest.raises(KitError, match="has no generative head"):
        make_model(Task.from_spec(spec), ModelArgs(model="minilm", head="generate"), FAST).fit(rows)


def test_tfidf_save_and_reload(toy, tmp_path):
    _, before, after = fit_save_reload(toy, tmp_path, ModelArgs(model="tfidf"))
    np.testing.assert_array_equal(before.probs, after.probs)


TWO_EPOCHS = TrainArgs(max_steps=6, batch_size=8, lr=5e-3, checkpoint_every=0)   # 24 rows: each seen twice


def frozen_and_full_logs(path, spec, rows, head, monkeypatch, train_args=TWO_EPOCHS, **fit_options):
    """Loss logs of the same run with and without the frozen-bottom cache."""
    logs = []
    for frozen in (True, False):
        real = train.fit
        monkeypatch.setattr(train, "fit", lambda *a, **k: real(*a, **{**k, "frozen_bottom": frozen, **fit_options}))
        # fp32 states: kept exactly, so the two roads must agree to rounding
        model = make_model(Task.from_spec(spec), ModelArgs(model=path, head=head, lora_layers=1, frozen_states="fp32"),
                           train_args)
        logs.append(model.fit(rows).loss_log)
        monkeypatch.undo()
    return logs


@pytest.mark.parametrize("head", ["classify", "generate"])
def test_frozen_bottom_trains_exactly_like_the_full_pass(tiny_llama, toy, head, monkeypatch, caplog):
    """LoRA on the top block only: caching the lower blocks must not change a single step."""
    spec, rows = rows_of(toy)
    cached, full = frozen_and_full_logs(tiny_llama, spec, rows, head, monkeypatch)
    assert "frozen blocks: " not in caplog.text          # the cache was used
    # the loss log is rounded to 5 decimals: one unit there is rounding, not a different step
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5)


def test_over_budget_cache_trains_through_every_block_with_the_same_losses(tiny_llama, toy, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kit")
    spec, rows = rows_of(toy)
    tiny_budget = TrainArgs(max_steps=6, batch_size=8, lr=5e-3, checkpoint_every=0, frozen_cache_gb=1e-7)
    over, full = frozen_and_full_logs(tiny_llama, spec, rows, "classify", monkeypatch, tiny_budget)
    assert "over the" in caplog.text and "budget" in caplog.text
    within, _ = frozen_and_full_logs(tiny_llama, spec, rows, "classify", monkeypatch)
    np.testing.assert_allclose(over, within, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(over, full, rtol=1e-5, atol=1e-5)


def test_one_pass_over_the_rows_skips_the_cache(tiny_llama, toy, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kit")
    spec, rows = rows_of(toy)
    frozen_and_full_logs(tiny_llama, spec, rows, "classify", monkeypatch, replace(FAST, state_cache=False))
    assert "every row is seen once" in caplog.text


def test_prefix_cache_gives_the_same_scores(tiny_qwen2, toy):
    spec, rows = rows_of(toy)
    model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_qwen2, head="generate"), FAST)
    ids, _ = model.encode(rows)
    base = model._load_base().eval()
    firsts = [a[0] for a in model.answers]
    assert PrefixCache(base, ids).length > 5        # the template + instruction is shared
    with_cache = score_labels(base, ids, firsts, model.tokenizer.pad_token_id, 8, True)
    without = score_labels(base, ids, firsts, model.tokenizer.pad_token_id, 8, False)
    np.testing.assert_allclose(with_cache, without, atol=1e-5)


def test_truncation_cuts_the_input_only(tiny_llama, tmp_path):
    from conftest import write_toy_competition
    spec_path = write_toy_competition(tmp_path)
    spec = load_spec(spec_path)
    spec.max_length = 48
    model = make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama, head="generate"), FAST)
    long = load_rows(spec)[0].subset([0])
    long.texts = ["word " * 500]
    ids, stats = model.encode(long)
    assert len(ids[0]) == 48 and stats["truncated_rows"] == 1
    assert ids[0][:len(model.encoder.prefix)] == model.encoder.prefix       # instruction intact
    assert ids[0][-len(model.encoder.tail):] == model.encoder.tail          # answer slot intact


def test_class_weights_change_the_loss(tiny_llama, toy):
    """Inverse-frequency weights: the rare class counts more, so the loss differs from unweighted."""
    spec, rows = rows_of(toy)
    rows = rows.subset([i for i in range(len(rows)) if rows.labels[i] == 0 or i < 6])   # imbalanced
    losses = []
    for weighted in (False, True):
        args = TrainArgs(max_steps=2, batch_size=8, checkpoint_every=0, class_weights=weighted)
        losses.append(make_model(Task.from_spec(spec), ModelArgs(model=tiny_llama), args).fit(rows).loss_log)
    assert losses[0] != losses[1]
