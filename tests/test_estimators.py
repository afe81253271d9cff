"""The estimator contract, in the spirit of scikit-learn's estimator checks: every kind in the
registry, the keyword roads included, must pass the same checks (fit / predict / save / load,
the prediction codec every caller joins chunks and folds with, and the defaults callers rely on
instead of asking what they hold), so CV, predict and ensembles never branch on the kind."""
import json

import numpy as np
import pytest
from test_targets import write_paper_spec, write_papers

from kit.core.settings import ModelArgs, TrainArgs
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import KeywordTask, Task
from kit.models.base import NotFittedError, Prediction
from kit.models.keywords import KeywordPrediction, KeywordWriter, make_keyword_model
from kit.models.registry import REGISTRY, kind_of, load_model, make_model
from kit.tasks.columns import column_of

FAST = TrainArgs(max_steps=2, batch_size=8, lr=5e-3, checkpoint_every=0)
LABEL_CASES = {  # name -> (fixture holding the model path or None, ModelArgs keywords)
    "tfidf": (None, {"model": "tfidf"}),
    "llama-classify": ("tiny_llama", {"head": "classify"}),
    "llama-generate": ("tiny_llama", {"head": "generate"}),
    "qwen2-classify-full-ft": ("tiny_qwen2", {"head": "classify", "lora_r": 0}),
    "minilm-classify": (None, {"model": "minilm", "head": "classify"}),
}
KEYWORD_CASES = {  # the roads of a [targets] keyword column
    "keywords-tfidf": (None, {"model": "tfidf"}),
    "keywords-minilm": (None, {"model": "minilm"}),
    "keywords-llama": ("tiny_llama", {}),
}
CASES = {**{name: ("label", *case) for name, case in LABEL_CASES.items()},
         **{name: ("keywords", *case) for name, case in KEYWORD_CASES.items()}}


def test_every_registered_kind_is_covered():
    label = {kind_of(ModelArgs(**kw | ({"model": "x"} if fixture else {}))) for fixture, kw in LABEL_CASES.values()}
    keywords = {make_keyword_kind(kw) for _, kw in KEYWORD_CASES.values()}
    assert label | keywords == set(REGISTRY)


def make_keyword_kind(keywords):
    """The class the registry picks for a keyword task, without building a transformer."""
    if keywords.get("model") in ("tfidf", "minilm"):
        return make_keyword_model(KeywordTask("x"), ModelArgs(**keywords), FAST).kind
    return KeywordWriter.kind


@pytest.fixture(params=list(CASES))
def estimator(request, toy, tmp_path):
    """(an unfitted estimator, its training rows, rows to predict)."""
    task, fixture, keywords = CASES[request.param]
    if fixture:
        keywords = {**keywords, "model": request.getfixturevalue(fixture)}
    if task == "label":
        spec = load_spec(toy)
        (train, _), (test, _) = load_rows(spec, "train"), load_rows(spec, "test")
        return make_model(Task.from_spec(spec), ModelArgs(**keywords), FAST), train, test
    write_papers(tmp_path)
    column = column_of(load_spec(write_paper_spec(tmp_path)), "Keywords")
    (train, frame), (test, _) = column.rows("train"), column.rows("test")
    return make_model(column.estimator_task(frame), ModelArgs(**keywords), FAST), train, test


def test_not_fitted_is_a_clear_error(estimator, tmp_path):
    model, _, test = estimator
    with pytest.raises(NotFittedError, match="call fit"):
        model.predict(test)
    with pytest.raises(NotFittedError, match="call fit"):
        model.save(tmp_path / "saved")


def test_fit_predict_save_load(estimator, tmp_path):
    model, train, test = estimator
    assert model.fit(train) is model
    assert model.model_id
    before = model.predict(test)
    assert isinstance(before, model.prediction_type)
    assert len(before.decided) == len(test)
    if isinstance(before, Prediction):
        assert before.probs.shape == (len(test), len(model.task.words))
        np.testing.assert_allclose(before.probs.sum(1), 1, atol=1e-6)
    else:
        assert len(before.keywords) == len(test) and all(isinstance(k, list) for k in before.keywords)
    model.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    assert type(again) is type(model) and again.model_id == model.model_id
    assert again.predict(test).to_record() == before.to_record()


def test_the_prediction_codec_round_trips_joins_and_takes(estimator):
    """What resumable prediction, CV folds and ranks' shares rely on: a JSON record reads back
    as the same prediction, parts join in order, and take picks rows by index."""
    model, train, test = estimator
    whole = model.fit(train).predict(test)
    record = json.loads(json.dumps(whole.to_record()))
    assert model.prediction_type.from_record(record).to_record() == whole.to_record()
    half = len(test) // 2
    parts = [model.predict(test.subset(range(half))), model.predict(test.subset(range(half, len(test))))]
    joined = model.prediction_type.join(parts)
    if not model.whole_split:        # an extractor weighs phrases over the split it is given
        for name in model.prediction_type.ROW_FIELDS:   # batches of other sizes: fp round-off only
            got, want = getattr(joined, name), getattr(whole, name)
            if name in model.prediction_type.ARRAYS and want is not None:
                np.testing.assert_allclose(got, want, atol=1e-6)
            else:
                assert got == want, name
    backwards = list(range(len(test)))[::-1]
    assert joined.take(backwards).take(backwards).to_record() == {**joined.to_record(), "stats": joined.stats}
    assert joined.take(backwards).decided == joined.decided[::-1]
    assert joined.stats.get("rows", len(test)) == len(test)


def test_the_defaults_callers_rely_on(estimator):
    """No caller asks what it holds: every estimator answers these, with defaults where a kind has nothing."""
    model, train, _ = estimator
    assert model.loss_log == [] and model.train_stats == {} and model.on_step is None
    encoded = model.encode(train)
    assert encoded is None or len(encoded[0]) == len(train)
    model.check_levers(False, False)                     # nothing asked: never refused
    assert model.prediction_type in (Prediction, KeywordPrediction) and model.whole_split in (True, False)
