"""`kit serve`: an OpenAI-compatible server for a trained run, started in-process on a free
127.0.0.1 port (uvicorn in a background thread) and called with the official openai client
and its HTTP client. Runs are trained in the test: TF-IDF (fast) and a tiny random Llama."""
import math
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import uvicorn
from click.testing import CliRunner
from openai import AuthenticationError, BadRequestError, NotFoundError, OpenAI

try:
    import httpx2 as httpx  # what this openai release is built on
except ImportError:               # pragma: no cover - older openai releases use httpx
    import httpx

from conftest import write_toy_competition
from test_export import plain_probs
from test_states import PREDICT_GAP

from kit.commands import serving as serving_commands
from kit.commands.main import main
from kit.commands.serving import serve
from kit.core.settings import ModelArgs, TrainArgs
from kit.evaluation.metrics import decide
from kit.inputs.data import Rows, load_rows
from kit.inputs.spec import load_spec
from kit.inputs.tasks import Task
from kit.models.base import Prediction
from kit.models.registry import load_model
from kit.outputs.serve import MAX_BODY, bind, create_app
from kit.runs.folder import load_run
from kit.workflows.fit import train_run
from kit.workflows.predict import predict_split

KEY = "test-key"
LONG = ("the cat sleeps on the mat and the dog barks " * 3000)[:100_000]


class Served:
    """uvicorn serving `app` on 127.0.0.1 in a daemon thread; stopped on exit."""

    def __init__(self, app, sock=None):
        sock = sock or bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_):
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"

    def openai(self, key=KEY):
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def http(self, key=KEY):
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"} if key else {},
                            timeout=60)


class Trained:
    """A run trained in the test, its spec, its loaded model and the test split's rows."""

    def __init__(self, directory, model_args, train_args):
        self.spec = load_spec(write_toy_competition(directory))
        self.runs = directory / "runs"
        folder, _ = train_run(self.spec, model_args, train_args, runs=self.runs)
        self.run = load_run(folder.name, self.runs)
        self.model = load_model(self.run.model_dir)
        self.rows, _ = load_rows(self.spec, "test")
        self.name = self.run.name

    def app(self, **options):
        return create_app(self.model, self.name, self.spec.labels, **{"api_key": KEY, **options})


@pytest.fixture(scope="module")
def tfidf(tmp_path_factory):
    return Trained(tmp_path_factory.mktemp("serve-tfidf"), ModelArgs(model="tfidf"), TrainArgs())


@pytest.fixture(scope="module")
def tfidf_server(tfidf):
    with Served(tfidf.app()) as served:
        yield served


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_llama):
    return Trained(tmp_path_factory.mktemp("serve-llama"), ModelArgs(model=tiny_llama),
                   TrainArgs(max_steps=1, batch_size=8))


def classify(client, model, texts):
    return client.post("/classify", body={"model": model, "input": texts}, cast_to=object)


def probabilities(answer, labels):
    return np.array([[row["probabilities"][label] for label in labels] for row in answer["data"]])


def predictions_file(trained, tmp_path):
    """`kit predict`'s per-row probabilities for the test split (rounded to 6 places there)."""
    predict_split(trained.spec, "test", trained.name, out=tmp_path / "submit.csv", runs=trained.runs)
    frame = pd.read_csv(trained.run.predictions("test"), dtype={"label": str})
    return frame[[f"p_{label}" for label in trained.spec.labels]].to_numpy(), frame["label"].tolist()


# -- the endpoints -----------------------------------------------------------------------------------

def test_models_lists_the_run_behind_the_api_key(tfidf, tfidf_server):
    assert [m.id for m in tfidf_server.openai().models.list()] == [tfidf.name]
    assert tfidf_server.openai().models.retrieve(tfidf.name).owned_by == "kit"
    with pytest.raises(AuthenticationError) as wrong:
        tfidf_server.openai(key="wrong").models.list()
    assert wrong.value.status_code == 401 and wrong.value.body["code"] == "invalid_api_key"
    with tfidf_server.http(key=None) as http:
        missing = http.get("/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200       # readiness checks need no key


def test_chat_completion_answers_the_label_word_the_kit_decides(tfidf, tfidf_server):
    client = tfidf_server.openai()
    texts = tfidf.rows.texts[:4]
    expected = tfidf.model.predict(Rows(list(range(len(texts))), texts))
    for i, text in enumerate(texts):
        answer = client.chat.completions.create(
            model=tfidf.name, temperature=0, max_tokens=5, logprobs=True,
            messages=[{"role": "system", "content": "ignored: the run has its own instruction"},
                      {"role": "user", "content": [{"type": "text", "text": text}]}])
        label = decide(expected.probs[i:i + 1], None, 0.5)[0]
        assert answer.choices[0].message.content == tfidf.model.task.words[label]
        assert answer.model == tfidf.name and answer.object == "chat.completion"
        top = {t.token: t.logprob for t in answer.choices[0].logprobs.content[0].top_logprobs}
        assert set(top) == set(tfidf.model.task.words)
        for j, word in enumerate(tfidf.model.task.words):
            assert math.exp(top[word]) == pytest.approx(expected.probs[i, j], abs=1e-6)
        usage = answer.usage
        assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_gives_the_same_answer_in_chunks_then_done(tfidf, tfidf_server):
    client = tfidf_server.openai()
    plain = client.chat.completions.create(model=tfidf.name, messages=_user(), logprobs=True)
    chunks = list(client.chat.completions.create(model=tfidf.name, messages=_user(), logprobs=True, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, "stop"]
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens          # include_usage: the last chunk
    assert chunks[0].choices[0].logprobs.content[0].logprob == plain.choices[0].logprobs.content[0].logprob
    with tfidf_server.http() as http:                                          # the raw events end with [DONE]
        events = http.post("/v1/chat/completions", json={"model": tfidf.name, "messages": _user(), "stream": True})
        assert events.headers["content-type"].startswith("text/event-stream")
        assert events.text.rstrip().endswith("data: [DONE]") and events.text.count("data: ") == 3


def test_the_official_client_sees_unsupported_fields_refused_and_sends_fields_to_render(tfidf):
    with Served(tfidf.app(template=tfidf.spec.input_template)) as served:
        client = served.openai()
        for extra, field in (({"response_format": {"type": "json_object"}}, "response_format"),
                             ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
                             ({"n": 2}, "n")):
            with pytest.raises(BadRequestError) as refused:
                client.chat.completions.create(model=tfidf.name, messages=_user(), **extra)
            assert refused.value.body["param"] == field and field in refused.value.message
        fields = [{"text": text} for text in tfidf.rows.texts[:3]]
        by_fields = client.post("/classify", body={"model": tfidf.name, "input": fields}, cast_to=object)
        by_text = classify(client, tfidf.name, tfidf.rows.texts[:3])
        assert [row["probs"] for row in by_fields["data"]] == [row["probs"] for row in by_text["data"]]


def test_top_logprobs_gives_that_many_label_words(tfidf, tfidf_server):
    client = tfidf_server.openai()
    for top in (0, 1, 2):
        answer = client.chat.completions.create(model=tfidf.name, messages=_user(), logprobs=True, top_logprobs=top)
        listed = answer.choices[0].logprobs.content[0].top_logprobs
        assert len(listed) == top
        if top:
            assert listed[0].token == answer.choices[0].message.content      # the most probable is the answer


def test_classify_equals_kit_predict(tfidf, tfidf_server, tmp_path):
    answer = classify(tfidf_server.openai(), tfidf.name, tfidf.rows.texts)
    served = probabilities(answer, tfidf.spec.labels)
    direct = tfidf.model.predict(tfidf.rows).probs
    np.testing.assert_allclose(served, direct, atol=1e-6, rtol=0)
    file_probs, file_labels = predictions_file(tfidf, tmp_path)
    np.testing.assert_allclose(served, file_probs, atol=1e-6, rtol=0)
    assert [row["label"] for row in answer["data"]] == file_labels
    assert [row["index"] for row in answer["data"]] == list(range(len(tfidf.rows)))


def test_classify_takes_a_rows_fields_and_answers_on_vllms_path_in_its_shape(tfidf):
    with Served(tfidf.app(template=tfidf.spec.input_template)) as served, served.http() as http:
        fields = pd.read_csv(tfidf.spec.split_path("test"), dtype=str).drop(columns=["id"]).to_dict("records")
        by_fields = http.post("/classify", json={"model": tfidf.name, "input": fields}).json()
        by_text = http.post("/v1/classify", json={"model": tfidf.name, "input": tfidf.rows.texts}).json()
        assert by_fields["id"].startswith("classify-") and by_fields["usage"]["completion_tokens"] == 0
        assert all(row["num_classes"] == 2 and len(row["probs"]) == 2 for row in by_fields["data"])
        assert [row["probs"] for row in by_fields["data"]] == [row["probs"] for row in by_text["data"]]
        assert "warning" not in by_fields
        missing = http.post("/classify", json={"model": tfidf.name, "input": [{"title": "a cat"}]})
        assert missing.status_code == 400
        assert "input.0: missing field(s) ['text'] of the input template" in missing.json()["error"]["message"]
        number = http.post("/classify", json={"model": tfidf.name, "input": [{"text": 5}]})
        assert number.status_code == 400 and "field 'text' is int, not a string" in number.json()["error"]["message"]


# -- what a client can get wrong ---------------------------------------------------------------------

def _user(text="a dog barks"):
    return [{"role": "user", "content": text}]


MALFORMED = {   # name: (path, request keywords, status, what the message names)
    "missing input": ("/v1/classify", {"json": {"model": "{model}"}}, 400, "input"),
    "missing model": ("/v1/chat/completions", {"json": {"messages": _user()}}, 400, "model"),
    "input of numbers": ("/v1/classify", {"json": {"model": "{model}", "input": [1, 2]}}, 400, "input"),
    "input an object": ("/v1/classify", {"json": {"model": "{model}", "input": {"a": 1}}}, 400, "input"),
    "model a number": ("/v1/classify", {"json": {"model": 5, "input": ["x"]}}, 400, "model"),
    "messages a string": ("/v1/chat/completions", {"json": {"model": "{model}", "messages": "hi"}}, 400, "messages"),
    "content a number": ("/v1/chat/completions",
                         {"json": {"model": "{model}", "messages": [{"role": "user", "content": 5}]}},
                         400, "messages.0.content"),
    "temperature a word": ("/v1/chat/completions",
                           {"json": {"model": "{model}", "messages": _user(), "temperature": "hot"}},
                           400, "temperature"),
    "empty input list": ("/v1/classify", {"json": {"model": "{model}", "input": []}}, 400, "input"),
    "no messages": ("/v1/chat/completions", {"json": {"model": "{model}", "messages": []}}, 400, "messages"),
    "last message not the user's": ("/v1/chat/completions",
                                    {"json": {"model": "{model}", "messages": _user() + [
                                        {"role": "assistant", "content": "1"}]}}, 400, "messages.1.role"),
    "json answers": ("/v1/chat/completions", {"json": {"model": "{model}", "messages": _user(),
                                                        "response_format": {"type": "json_object"}}},
                     400, "response_format: not supported by kit serve"),
    "tools": ("/v1/chat/completions", {"json": {"model": "{model}", "messages": _user(),
                                                 "tools": [{"type": "function", "function": {"name": "f"}}]}},
              400, "tools: not supported"),
    "logit bias": ("/v1/chat/completions", {"json": {"model": "{model}", "messages": _user(), "logit_bias": {"5": 9}}},
                   400, "logit_bias"),
    "empty text": ("/v1/chat/completions", {"json": {"model": "{model}", "messages": _user("  ")}},
                   400, "messages.0.content: is empty"),
    "empty input text": ("/v1/classify", {"json": {"model": "{model}", "input": ["a cat", ""]}}, 400,
                         "item 1 is empty"),
    "unknown model": ("/v1/classify", {"json": {"model": "gpt-4o", "input": ["x"]}}, 404, "model"),
    "not JSON": ("/v1/classify", {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
                 400, "JSON"),
    "JSON but not an object": ("/v1/classify", {"json": ["x"]}, 400, "JSON object"),
    "no JSON content type": ("/v1/classify", {"content": b'{"model": "m", "input": ["x"]}'}, 400, "Content-Type"),
    "two choices": ("/v1/chat/completions", {"json": {"model": "{model}", "messages": _user(), "n": 2}}, 400,
                    "n: 2 answers asked for; this server gives one per request"),
    "body over 1 MB": ("/v1/classify", {"json": {"model": "{model}", "input": ["x" * (MAX_BODY + 10)]}},
                       413, "bytes"),
    "chunked body over 1 MB": ("/v1/classify", {"content": "chunks"}, 413, "bytes"),
    "wrong api key": ("/v1/classify", {"json": {"model": "{model}", "input": ["x"]}, "key": "nope"},
                      401, "API key"),
    "unknown path": ("/v1/embeddings", {"json": {"model": "{model}", "input": ["x"]}}, 404, "Not Found"),
}


def _request(kwargs, model):
    """The test case's request keywords, with the run's name in place of {model}."""
    kwargs = dict(kwargs)
    kwargs.pop("key", None)
    if kwargs.get("content") == "chunks":          # no Content-Length: the server has to count
        kwargs["content"] = (b"x" * 100_000 for _ in range(MAX_BODY // 100_000 + 2))
    if isinstance(kwargs.get("json"), dict) and kwargs["json"].get("model") == "{model}":
        kwargs["json"] = {**kwargs["json"], "model": model}
    return kwargs


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_a_4xx_json_error(tfidf, tfidf_server, case):
    path, kwargs, status, named = MALFORMED[case]
    with tfidf_server.http(key=kwargs.get("key", KEY)) as http:
        response = http.post(path, **_request(kwargs, tfidf.name))
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert named in response.json()["error"]["message"]
    with tfidf_server.http() as http:              # and the server still answers
        assert http.post("/v1/classify", json={"model": tfidf.name, "input": ["a cat"]}).status_code == 200


def test_openai_client_sees_errors_as_its_own_exceptions(tfidf, tfidf_server):
    client = tfidf_server.openai()
    with pytest.raises(NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=_user())
    assert unknown.value.body["param"] == "model"
    with pytest.raises(BadRequestError) as bad:
        client.chat.completions.create(model=tfidf.name, messages=[{"role": "assistant", "content": "hi"}])
    assert "user" in bad.value.message


def test_a_100000_character_input_is_cut_like_training_data(tfidf, tfidf_server, llama):
    answer = classify(tfidf_server.openai(), tfidf.name, [LONG])
    assert sum(answer["data"][0]["probabilities"].values()) == pytest.approx(1)
    with Served(llama.app()) as served:
        answer = classify(served.openai(), llama.name, [LONG, "a cat"])
        chat = served.openai().chat.completions.create(model=llama.name, messages=_user(LONG))
    assert answer["usage"]["prompt_tokens"] <= 2 * llama.spec.max_length     # cut to max_length each
    direct = llama.model.predict(Rows([0, 1], [LONG, "a cat"])).probs
    np.testing.assert_allclose(probabilities(answer, llama.spec.labels), direct, atol=1e-6, rtol=0)
    assert chat.choices[0].message.content in llama.model.task.words
    assert chat.usage.prompt_tokens <= llama.spec.max_length


class Echo:
    """A stand-in estimator: P(second label) = len(text) / 100; it records each predict call's
    size and fails on a batch holding the text "boom"."""

    def __init__(self):
        self.task, self.calls = Task("x", ["no", "yes"]), []

    generates, answer_tokens = False, None     # scores only, like TF-IDF

    def encode(self, rows):
        return None               # no tokens: like TF-IDF

    def predict(self, rows, mode="score"):
        if "boom" in rows.texts:
            raise RuntimeError("boom")
        self.calls.append(len(rows))
        p = np.array([min(len(text), 100) / 100 for text in rows.texts])
        return Prediction(np.stack([1 - p, p], 1), [mode] * len(rows))


def test_batches_split_large_requests_and_survive_a_failing_model():
    model = Echo()
    texts = ["x" * (10 * i) or " x " for i in range(10)]         # the first: 3 characters, not empty
    with Served(create_app(model, "echo", ["0", "1"], max_batch=4)) as served, served.http() as http:
        answer = http.post("/v1/classify", json={"model": "echo", "input": texts}).json()
        failed = http.post("/v1/classify", json={"model": "echo", "input": ["boom"]})
        chat = served.openai().chat.completions.create(model="echo", messages=_user("x" * 90))
    assert max(model.calls) <= 4 and sum(model.calls) >= len(texts)           # split, in batches of 4
    assert [row["probabilities"]["1"] for row in answer["data"]] == pytest.approx([0.03] + [i / 10 for i in range(1, 10)])
    assert [row["label"] for row in answer["data"]] == ["0"] * 5 + ["1"] * 5    # the spec's labels ...
    assert chat.choices[0].message.content == "yes"                             # ... and the model's words
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "prediction_failed"


# -- a transformer run -------------------------------------------------------------------------------

def test_tiny_llama_serves_what_kit_predict_computes(llama, tmp_path):
    texts = llama.rows.texts
    with Served(llama.app(batch_window_ms=50, max_batch=8)) as served:
        client = served.openai()
        # four clients at once: their rows share batches (and prefix caches) with each other's
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda t: classify(client, llama.name, [t]), texts))
        chat = client.chat.completions.create(model=llama.name, messages=_user(texts[0]), logprobs=True)
        batches = served.server.config.app.state.batcher.batches
    served_probs = np.concatenate([probabilities(a, llama.spec.labels) for a in answers])
    np.testing.assert_allclose(served_probs, llama.model.predict(llama.rows).probs, atol=1e-6, rtol=0)
    file_probs, file_labels = predictions_file(llama, tmp_path)
    np.testing.assert_allclose(served_probs, file_probs, atol=1e-6, rtol=0)
    assert [a["data"][0]["label"] for a in answers] == file_labels
    assert chat.choices[0].message.content == llama.model.task.words[llama.spec.labels.index(file_labels[0])]
    assert batches < len(texts) + 1, "concurrent requests were never batched together"


def test_generate_head_answers_in_generate_mode(tmp_path, tiny_llama):
    trained = Trained(tmp_path, ModelArgs(model=tiny_llama, head="generate"), TrainArgs(max_steps=1, batch_size=8))
    text = trained.rows.texts[0]
    expected = trained.model.predict(Rows([0], [text]), "generate")
    word = trained.model.task.words[decide(expected.probs, expected.parsed, 0.5)[0]]
    with Served(trained.app(mode="generate")) as served:
        answer = served.openai().chat.completions.create(model=trained.name, messages=_user(text))
    assert answer.choices[0].message.content == word
    assert answer.usage.completion_tokens >= 1


# -- under load --------------------------------------------------------------------------------------

def test_load_8_clients_x_50_requests(tfidf, tfidf_server):
    texts = [f"{text} {i}" for i, text in enumerate(tfidf.rows.texts * 50)]
    batcher = tfidf_server.server.config.app.state.batcher
    batches_before, rows_before = batcher.batches, batcher.rows

    def client(worker):
        latencies, errors = [], 0
        with tfidf_server.http() as http:
            for i in range(50):
                started = time.perf_counter()
                try:
                    response = http.post("/v1/classify", json={"model": tfidf.name, "input": [texts[worker * 50 + i]]})
                    errors += response.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - started)
        return latencies, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    seconds = time.perf_counter() - started
    latencies = sorted(sum((r[0] for r in results), []))
    errors = sum(r[1] for r in results)
    batches = batcher.batches - batches_before
    direct_started = time.perf_counter()
    tfidf.model.predict(Rows(list(range(len(texts[:400]))), texts[:400]))
    direct = 400 / (time.perf_counter() - direct_started)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000
    print(f"\nserve load (TF-IDF, 8 clients x 50 requests of 1 row): p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"{len(latencies) / seconds:.0f} rows/s, {errors} errors, {batches} batches "
          f"(mean {(batcher.rows - rows_before) / max(batches, 1):.1f} rows); model.predict alone: {direct:.0f} rows/s")
    assert errors == 0 and len(latencies) == 400
    assert batcher.rows - rows_before == 400


# -- the command -------------------------------------------------------------------------------------

def test_cli_refuses_what_a_user_can_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_toy_competition(tmp_path)
    no_run = CliRunner().invoke(serve, ["--spec", str(spec)])
    assert no_run.exit_code == 2 and "no trained run" in no_run.output
    bad_spec = CliRunner().invoke(serve, ["--spec", str(tmp_path / "missing.toml")])
    assert bad_spec.exit_code == 2 and "error:" in bad_spec.output
    empty_key = CliRunner().invoke(serve, ["--spec", str(spec)], env={"KIT_API_KEY": " "})
    assert empty_key.exit_code == 2 and "empty" in empty_key.output


def test_cli_serves_the_latest_run_of_the_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec_path = write_toy_competition(tmp_path)
    folder, _ = train_run(load_spec(spec_path), ModelArgs(model="tfidf"), TrainArgs())     # into ./runs
    started = {}
    monkeypatch.setattr(serving_commands, "run_server", lambda app, sock: started.update(app=app, sock=sock))
    taken = bind("127.0.0.1", 0)
    try:
        busy = CliRunner().invoke(serve, ["--spec", str(spec_path), "--port", str(taken.getsockname()[1])])
        assert busy.exit_code == 2 and "cannot listen" in busy.output
    finally:
        taken.close()
    result = CliRunner().invoke(serve, ["--spec", str(spec_path), "--port", "0"], env={"KIT_API_KEY": "env-key"})
    assert result.exit_code == 0, result.output
    assert started["sock"].getsockname()[0] == "127.0.0.1"
    with Served(started["app"], started["sock"]) as served:
        assert [m.id for m in served.openai(key="env-key").models.list()] == [folder.name]
        with pytest.raises(AuthenticationError):
            served.openai(key=KEY).models.list()


def test_a_copied_run_predicts_exports_and_serves_the_same_numbers_elsewhere(tmp_path, monkeypatch, tiny_llama):
    """A transformer run (LoRA on the top block: kit predict reads fp16 frozen states) trained in one
    tree, copied to another and used there with no flag: kit predict, kit export and kit serve give
    the same probabilities within the README's stated gaps."""
    here, there = tmp_path / "trained-here", tmp_path / "copied-there"
    here.mkdir()
    spec_path = write_toy_competition(here)
    train_run(load_spec(spec_path), ModelArgs(model=tiny_llama, lora_layers=1), TrainArgs(max_steps=2, batch_size=8),
              runs=here / "runs")
    shutil.copytree(here, there)
    monkeypatch.chdir(there)
    spec = ["--spec", "competition.toml"]
    for args in (["predict", *spec, "--out", "submit.csv"], ["export", *spec, "--out", "exported"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    (run,) = [p for p in (there / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    rows, _ = load_rows(load_spec(there / "competition.toml"), "test")
    predicted = pd.read_csv(run / "predictions-test.csv")[["p_0", "p_1"]].to_numpy()
    exported = plain_probs(there / "exported", rows.texts)[0]
    started = {}
    monkeypatch.setattr(serving_commands, "run_server", lambda app, sock: started.update(app=app, sock=sock))
    result = CliRunner().invoke(serve, [*spec, "--port", "0"])
    assert result.exit_code == 0, result.output
    with Served(started["app"], started["sock"]) as served:
        served_probs = probabilities(classify(served.openai(key="no-auth"), run.name, rows.texts), ["0", "1"])
    np.testing.assert_allclose(served_probs, exported, atol=1e-4, rtol=0)        # both the fp32 full pass
    np.testing.assert_allclose(predicted, served_probs, atol=PREDICT_GAP, rtol=0)  # fp16 states, stated gap
