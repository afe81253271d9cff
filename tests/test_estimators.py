"""The estimator contract, in the spirit of scikit-learn's estimator checks: every kind in the
registry must pass the same checks, so CV, predict and ensembles never branch on the kind."""
import numpy as np
import pytest

from kit.data import load_rows
from kit.models import REGISTRY, KeywordExtractor, KeywordWriter, ModelArgs, NotFittedError, Task, kind_of, load_model, make_model
from kit.spec import load_spec
from kit.train import TrainArgs

FAST = TrainArgs(max_steps=2, batch_size=8, lr=5e-3, checkpoint_every=0)
CASES = {  # name -> (fixture holding the model path or None, ModelArgs keywords)
    "tfidf": (None, {"model": "tfidf"}),
    "llama-classify": ("tiny_llama", {"head": "classify"}),
    "llama-generate": ("tiny_llama", {"head": "generate"}),
    "qwen2-classify-full-ft": ("tiny_qwen2", {"head": "classify", "lora_r": 0}),
    "minilm-classify": (None, {"model": "minilm", "head": "classify"}),
}


def test_every_registered_kind_is_covered():
    kinds = {kind_of(ModelArgs(**CASES[name][1] | ({"model": "x"} if CASES[name][0] else {}))) for name in CASES}
    # keyword estimators predict lists, not probabilities: their contract is in tests/test_targets.py
    assert kinds == set(REGISTRY) - {KeywordExtractor.kind, KeywordWriter.kind}


@pytest.fixture(params=list(CASES))
def estimator(request, toy):
    fixture, keywords = CASES[request.param]
    if fixture:
        keywords = {**keywords, "model": request.getfixturevalue(fixture)}
    spec = load_spec(toy)
    return make_model(Task.from_spec(spec), ModelArgs(**keywords), FAST), spec


def test_not_fitted_is_a_clear_error(estimator, tmp_path):
    model, spec = estimator
    rows = load_rows(spec, "test")[0]
    with pytest.raises(NotFittedError, match="call fit"):
        model.predict(rows)
    with pytest.raises(NotFittedError, match="call fit"):
        model.save(tmp_path / "saved")


def test_fit_predict_save_load(estimator, tmp_path):
    model, spec = estimator
    train, test = load_rows(spec, "train")[0], load_rows(spec, "test")[0]
    assert model.fit(train) is model
    assert model.model_id
    before = model.predict(test)
    assert before.probs.shape == (len(test), len(spec.labels))
    np.testing.assert_allclose(before.probs.sum(1), 1, atol=1e-6)
    assert len(before.decided) == len(test)
    model.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    assert type(again) is type(model) and again.model_id == model.model_id
    np.testing.assert_array_equal(again.predict(test).probs, before.probs)
