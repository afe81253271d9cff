"""The frozen lower blocks' state cache (kit/engine/states.py): one pass per CV run shared by every fold
and by prediction, the same OOF probabilities as per-fold computation, never reused across a
changed prompt, max length or base model, corrupt shards recomputed, the size budget."""
import logging

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kit.commands.main import main
from kit.core.settings import ModelArgs, TrainArgs
from kit.engine import states
from kit.engine.frozen import FrozenBottom
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.registry import make_model
from kit.workflows.cv import cross_validate

PREDICT_GAP = 2e-3       # README: kit predict (fp16 states) against kit serve / the export (fp32 pass)


def two_epochs(**changes):
    """A fresh TrainArgs per model: tests change a model's settings in place."""
    return TrainArgs(max_steps=6, batch_size=8, lr=5e-3, checkpoint_every=0, **changes)


def oof_probs(runs, scores):
    oof = pd.read_csv(runs / scores["config"]["name"] / "oof.csv")
    return oof[["p_0", "p_1"]].to_numpy()


def lora_top(path, **options):
    return ModelArgs(model=path, head="classify", lora_layers=1, **{"frozen_states": "fp32", **options})


def test_shared_cache_cv_equals_per_fold_computation(tiny_llama, toy, tmp_path):
    """3 folds, LoRA on the top block: the cached run computes each row's lower states once
    (training rows in fold 1, its held-out rows at its prediction, nothing after) and gives the
    OOF probabilities of the per-fold run (each fold its own pass, held-out rows through every block)."""
    spec = load_spec(toy)
    scores, oof = {}, {}
    for cached in (True, False):
        scores[cached] = cross_validate(spec, lora_top(tiny_llama), two_epochs(state_cache=cached), folds=3,
                                        runs=tmp_path / f"runs-{cached}")
        oof[cached] = oof_probs(tmp_path / f"runs-{cached}", scores[cached])
    np.testing.assert_allclose(oof[True], oof[False], atol=1e-5)
    rows = len(load_rows(spec, "train")[0])
    assert scores[True]["frozen"]["rows_computed"] == rows
    assert scores[True]["frozen"]["rows_reused"] == 3 * rows - rows      # 3 fits + 3 predictions of rows/3
    assert scores[False]["frozen"]["rows_computed"] == 3 * rows * 2 // 3   # each fold's own training rows


def test_half_precision_states_stay_close(tiny_llama, toy, tmp_path):
    spec = load_spec(toy)
    probs = []
    for frozen in ("fp32", "fp16"):
        scores = cross_validate(spec, lora_top(tiny_llama, frozen_states=frozen), two_epochs(), folds=3,
                                runs=tmp_path / frozen)
        probs.append(oof_probs(tmp_path / frozen, scores))
    np.testing.assert_allclose(probs[0], probs[1], atol=2e-3)


def base_with_lora(path, spec, rows, **options):
    model = make_model(Task.from_spec(spec), lora_top(path, **options), two_epochs())
    ids, _ = model.encode(rows)
    peft = model._add_lora(model._load_base())
    return model, peft, ids


def computed(model, peft, ids):
    source = model.state_source()
    source.states(peft, FrozenBottom.trainable_split(peft), ids)
    return source.last["computed"], source.last["reused"]


def test_changed_prompt_max_length_or_base_is_never_reused(tiny_llama, tiny_qwen2, toy):
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    model, peft, ids = base_with_lora(tiny_llama, spec, rows)
    assert computed(model, peft, ids) == (len(ids), 0)
    assert computed(model, peft, ids) == (0, len(ids))          # the same rows: all reused
    spec.instruction = "Another instruction entirely."
    model, peft, ids = base_with_lora(tiny_llama, spec, rows)
    assert computed(model, peft, ids) == (len(ids), 0)
    spec.max_length = max(map(len, ids)) - 2                  # cuts the longest rows
    model, peft, short = base_with_lora(tiny_llama, spec, rows)
    new = {tuple(s) for s in short} - {tuple(s) for s in ids}     # cut rows (some alike once cut)
    assert new and computed(model, peft, short) == (len(new), len(ids) - len(new))
    distinct = len({tuple(s) for s in short})                 # rows alike once cut are computed once
    model, peft, ids = base_with_lora(tiny_qwen2, spec, rows)  # another base model, the same tokens
    assert ids == short and computed(model, peft, ids) == (distinct, len(ids) - distinct)
    model, peft, ids = base_with_lora(tiny_llama, spec, rows, frozen_states="int8")   # another pass
    assert computed(model, peft, ids) == (distinct, len(ids) - distinct)


def test_corrupt_or_foreign_shards_are_recomputed(tiny_llama, toy, caplog, private_state_cache):
    caplog.set_level(logging.INFO, logger="kit")
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    model, peft, ids = base_with_lora(tiny_llama, spec, rows)
    computed(model, peft, ids)
    states._VERIFIED.clear()                                   # a new process
    data = next(private_state_cache.rglob("*.bin"))
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert computed(model, peft, ids) == (len(ids), 0)
    assert "corrupt or foreign" in caplog.text
    meta = next(private_state_cache.rglob("*.json"))
    meta.write_text('{"format": 1, "rows": "not a row index"}')
    assert computed(model, peft, ids) == (len(ids), 0)


def test_states_are_what_block_split_sees(tiny_llama, toy):
    import torch
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    model, peft, ids = base_with_lora(tiny_llama, spec, rows)
    source = model.state_source()
    cached = source.states(peft, 2, ids)
    with torch.no_grad():
        hidden = peft.get_base_model().model(input_ids=torch.tensor([ids[3]], device=peft.device),
                                             output_hidden_states=True)
    expected = hidden.hidden_states[2][0].float().cpu().numpy()
    np.testing.assert_allclose(np.asarray(cached.arrays[3]), expected, atol=1e-5 if peft.device.type == "cpu" else 3e-2)


def test_int8_pass_is_close_to_fp32(tiny_llama, toy):
    import torch
    if torch.cuda.is_available():
        pytest.skip("int8 dynamic quantisation runs on a CPU only")
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    model, peft, ids = base_with_lora(tiny_llama, spec, rows)
    exact = states.MemoryStates(0, "fp32").states(peft, 2, ids)
    int8 = states.MemoryStates(0, "int8").states(peft, 2, ids)
    a, b = np.concatenate(exact.arrays), np.concatenate(int8.arrays)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert not np.array_equal(a, b) and cosine.min() > 0.98


def test_prediction_from_cached_states_equals_the_full_pass(tiny_llama, toy):
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    test_rows, _ = load_rows(spec, "test")
    model = make_model(Task.from_spec(spec), lora_top(tiny_llama), two_epochs()).fit(rows)
    cached = model.predict(test_rows)
    assert cached.stats["frozen_rows_computed"] == len(set(test_rows.texts))   # repeated rows: once
    model.train_args.state_cache = False                      # the full pass with the prefix KV cache
    full = model.predict(test_rows)
    assert "frozen_rows_computed" not in full.stats
    np.testing.assert_allclose(cached.probs, full.probs, atol=1e-5)


def test_prediction_from_fp16_states_stays_within_the_stated_gap(tiny_llama, toy):
    """The default cache stores states in fp16: kit predict then differs from the full fp32 pass
    (kit serve, the export) by rounding; the README states the bound this holds."""
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    test_rows, _ = load_rows(spec, "test")
    model = make_model(Task.from_spec(spec), lora_top(tiny_llama, frozen_states="fp16"), two_epochs()).fit(rows)
    cached = model.predict(test_rows)
    model.train_args.state_cache = False
    full = model.predict(test_rows)
    assert cached.stats["frozen_rows_computed"] == len(set(test_rows.texts))
    np.testing.assert_allclose(cached.probs, full.probs, atol=PREDICT_GAP)
    assert np.abs(cached.probs - full.probs).max() > 1e-7          # fp16 rounding is really in the path


def test_budget_drops_least_recently_used_and_cache_clear(tiny_llama, toy, private_state_cache):
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    model, peft, ids = base_with_lora(tiny_llama, spec, rows)
    computed(model, peft, ids)
    first = {p.name for p in private_state_cache.rglob("*.bin")}
    size = states.cache_size()
    spec.instruction = "Another instruction entirely."
    model, peft, ids = base_with_lora(tiny_llama, spec, rows)
    model.train_args.frozen_cache_gb = 1.5 * size / 2**30    # room for one set of states, not two
    computed(model, peft, ids)
    left = {p.name for p in private_state_cache.rglob("*.bin")}
    assert left and not left & first
    result = CliRunner().invoke(main, ["cache"])
    assert result.exit_code == 0 and "rows" in result.output
    result = CliRunner().invoke(main, ["cache", "--clear"])
    assert result.exit_code == 0 and "deleted" in result.output
    assert states.cache_size() == 0


def test_over_budget_states_run_every_block(tiny_llama, toy, caplog):
    caplog.set_level(logging.INFO, logger="kit")
    spec = load_spec(toy)
    rows, _ = load_rows(spec, "train")
    model = make_model(Task.from_spec(spec), lora_top(tiny_llama), two_epochs(frozen_cache_gb=1e-7))
    model.fit(rows)
    assert "over the" in caplog.text and "frozen_rows_computed" not in model.train_stats
    assert states.cache_size() == 0


@pytest.mark.parametrize("head", ["classify", "generate"])
def test_kit_train_after_cv_reuses_every_state(tiny_llama, toy, tmp_path, head):
    from kit.workflows.fit import train_run
    spec = load_spec(toy)
    args = ModelArgs(model=tiny_llama, head=head, lora_layers=1)
    cross_validate(spec, args, two_epochs(), folds=3, runs=tmp_path / "runs")
    _, stats = train_run(spec, args, two_epochs(), runs=tmp_path / "runs")
    assert stats["frozen_rows_computed"] == 0 and stats["frozen_rows_reused"] == 24
