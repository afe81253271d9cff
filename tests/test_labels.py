"""Labels of any length: label words that share first tokens are scored by their whole answers,
in score and generate modes; distinct first tokens keep the one-pass fast path."""
import numpy as np
import pytest
import torch

from kit.core.settings import ModelArgs, TrainArgs
from kit.engine.inference import answer_scores
from kit.engine.prompts import first_tokens_differ
from kit.inputs.data import load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.registry import make_model

WORDS = {"digits": ["1", "12"], "english": ["positive", "positively"], "chinese": ["消极评论。", "积极评论。"]}


@pytest.mark.parametrize("kind", list(WORDS))
def test_whole_answer_scores_equal_a_plain_forward_pass(tiny_llama, toy, kind):
    spec = load_spec(toy)
    model = make_model(Task(spec.instruction, WORDS[kind], 64), ModelArgs(model=tiny_llama, head="generate"),
                       TrainArgs())
    rows = load_rows(spec, "test")[0]
    ids, _ = model.encode(rows)
    if kind == "digits":
        assert not first_tokens_differ(model.answers)     # "12" starts with the token of "1"
    base = model._load_base().eval()
    got = answer_scores(base, ids, model.answers, model.tokenizer.pad_token_id, batch_size=4)
    expected = []
    with torch.no_grad():
        for prompt in ids:                     # one row, one label at a time, no padding at all
            logs = []
            for answer in model.answers:
                logits = base(input_ids=torch.tensor([prompt + answer])).logits[0].float()
                logprobs = torch.log_softmax(logits, -1)
                logs.append(sum(float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(answer)))
            expected.append(torch.softmax(torch.tensor(logs), -1).numpy())
    np.testing.assert_allclose(got, np.array(expected), atol=1e-5)


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_labels_sharing_first_tokens_train_and_predict(tiny_llama, toy, mode):
    spec = load_spec(toy)
    model = make_model(Task(spec.instruction, WORDS["digits"], 64), ModelArgs(model=tiny_llama, head="generate"),
                       TrainArgs(max_steps=2, batch_size=8, checkpoint_every=0)).fit(load_rows(spec)[0])
    prediction = model.predict(load_rows(spec, "test")[0], mode)
    assert prediction.probs.shape == (8, 2)
    np.testing.assert_allclose(prediction.probs.sum(1), 1, rtol=1e-6)
    if mode == "generate":
        assert set(prediction.decided) <= {"generate", "fallback"}
