"""`kit serve`: an OpenAI-compatible HTTP server for one trained run, on one machine.

    GET  /v1/models             the run's name, the one model id (OpenAI list format)
    POST /v1/chat/completions   the last user message in, the label word the kit decides out
    POST /v1/classify           {"model", "input": [texts]} -> every label's probability per text

Requests join an asyncio queue; one worker takes the rows that arrived within --batch-window-ms
(at most --max-batch) and runs the model's predict on them in a thread, so the event loop keeps
accepting requests while the model computes. The rows go through the same
`model.predict(Rows(...), mode)` as `kit predict`: the same prompt, the same truncation to the
spec's max_length, the same probabilities.

Everything a client can get wrong is a 4xx with an OpenAI-style JSON error naming the field
({"error": {"message", "type", "param", "code"}}); the server binds 127.0.0.1 unless told
otherwise, and --api-key (or KIT_API_KEY) asks for `Authorization: Bearer <key>`.
"""
import asyncio
import collections
import functools
import hmac
import ipaddress
import math
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import click
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .cli import _friendly, _spec_option
from .errors import KitError
from .logs import log

MAX_BODY = 1 << 20          # bytes in a request body (1 MiB): a 100,000-character text fits 10 times
DRAIN_LIMIT = 16 << 20      # a refused body up to this size is read before the answer (see _refuse)
MAX_INPUTS = 2048           # texts per /v1/classify request (OpenAI's limit for embeddings inputs)
QUEUED_BATCHES = 64         # rows waiting beyond max_batch * this are refused with 503, not queued
LOGPROB_FLOOR = -9999.0     # log(0) as OpenAI writes it: JSON has no -Infinity
OPEN_PATHS = ("/health",)   # answered without the API key (load balancers, readiness checks)


# -- errors ------------------------------------------------------------------------------------

class ApiError(Exception):
    """A request the server refuses, as an HTTP status and an OpenAI-style error body."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status, message, param=None, code=None):
    kind = "server_error" if status >= 500 else (
        "authentication_error" if status == 401 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _field(loc):
    """('body', 'messages', 0, 'content') -> 'messages.0.content'."""
    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    return ".".join(str(p) for p in parts) or None


def validation_message(errors):
    """FastAPI's validation errors -> (one line naming the field, the field)."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    param = _field(first.get("loc", ()))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "is required"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if not param:    # the body as a whole: not an object, or not sent as JSON
        return f"the request body must be a JSON object, sent as Content-Type: application/json ({message})", None
    return f"{param}: {message}{more}", param


# -- request bodies (OpenAI's shapes; fields this server does not use are ignored) ----------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Any = None

    @field_validator("content")
    @classmethod
    def _text(cls, value):
        """A string, or OpenAI's list of {"type": "text", "text": ...} parts (joined)."""
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                           and isinstance(p.get("text"), str) for p in value):
            return "\n".join(p["text"] for p in value)
        raise ValueError("must be a string or a list of {\"type\": \"text\", \"text\": ...} parts")


class ChatRequest(_Body):
    model: str
    messages: list[Message] = Field(min_length=1)
    # accepted and validated for compatibility; a classifier's answer does not depend on them
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, ge=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    n: Optional[int] = Field(None, ge=1, le=1)
    stream: Optional[bool] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class ClassifyRequest(_Body):
    model: str
    input: Any

    @field_validator("input")
    @classmethod
    def _texts(cls, value):
        """A string or a non-empty list of strings, as OpenAI's embeddings input."""
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ValueError(f"must be a string or a list of strings, not {type(value).__name__}")
        if not value:
            raise ValueError("must hold at least one text")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} texts per request, got {len(value)}")
        bad = next((i for i, text in enumerate(value) if not isinstance(text, str)), None)
        if bad is not None:
            raise ValueError(f"item {bad} is {type(value[bad]).__name__}, not a string")
        return value


def last_user_text(messages):
    """The input text: the last message, which must be the user's (system messages are ignored:
    the model answers the spec's instruction it was fine-tuned on)."""
    last = messages[-1]
    where = f"messages.{len(messages) - 1}"
    if last.role != "user":
        raise ApiError(400, f"{where}.role: the last message must be the user's (the text to classify), "
                            f"not {last.role!r}", param=f"{where}.role")
    if last.content is None:
        raise ApiError(400, f"{where}.content: is required", param=f"{where}.content")
    return last.content


# -- the model, called on a batch of texts (in the worker's thread) --------------------------------

@dataclass
class Output:
    """The model's answer for some rows."""
    probs: np.ndarray             # (rows, labels)
    parsed: Optional[np.ndarray]  # generate mode: the label each answer parsed to, -1 if none
    tokens: list                  # prompt tokens per row (words for TF-IDF)

    def rows(self, start, stop):
        return Output(self.probs[start:stop], None if self.parsed is None else self.parsed[start:stop],
                      self.tokens[start:stop])

    @staticmethod
    def join(parts):
        parsed = None if parts[0].parsed is None else np.concatenate([p.parsed for p in parts])
        return Output(np.concatenate([p.probs for p in parts]), parsed, sum((p.tokens for p in parts), []))


def predict_texts(model, texts, mode):
    """What `kit predict` computes for these texts: model.predict(Rows(...), mode)."""
    from .data import Rows
    rows = Rows(list(range(len(texts))), list(texts))
    if hasattr(model, "encode"):   # transformers: the encoding predict would make, reused for usage
        encoded = model.encode(rows)
        prediction = model.predict(rows, mode, encoded=encoded)
        tokens = [len(ids) for ids in encoded[0]]
    else:
        prediction = model.predict(rows, mode)
        tokens = [len(text.split()) for text in texts]
    parsed = None if prediction.parsed is None else np.asarray(prediction.parsed)
    return Output(np.asarray(prediction.probs, dtype=np.float64), parsed, tokens)


# -- batching --------------------------------------------------------------------------------------

@dataclass(eq=False)
class Job:
    texts: list
    mode: str
    future: asyncio.Future
    arrived: float
    parts: list = field(default_factory=list)
    done: int = 0


class Batcher:
    """Concurrent requests -> one predict call per batch. The first row waiting opens a window of
    `window_s`; the batch closes when the window ends or `max_batch` rows are waiting. Under load
    the rows that arrived during the last predict are already late, so the next batch starts at
    once. A request larger than the room left is split across batches."""

    def __init__(self, predict, window_s=0.01, max_batch=64, max_queued=None):
        self.predict, self.window, self.max_batch = predict, window_s, max_batch
        self.max_queued = max_queued or max_batch * QUEUED_BATCHES
        self.queue = None          # created in the server's event loop (start)
        self.pending = collections.deque()   # [job, first row not yet predicted]
        self.queued = 0            # rows submitted and not yet answered
        self.batches = self.rows = 0
        self.task = None

    def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self):
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        jobs = [job for job, _ in self.pending]
        while self.queue is not None and not self.queue.empty():
            jobs.append(self.queue.get_nowait())
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "the server is shutting down", code="shutting_down"))

    async def submit(self, texts, mode):
        """Wait for these texts' predictions (an Output in their order)."""
        if self.queued + len(texts) > self.max_queued:
            raise ApiError(503, f"the server is busy ({self.queued} rows queued); retry shortly", code="server_busy")
        loop = asyncio.get_running_loop()
        job = Job(list(texts), mode, loop.create_future(), loop.time())
        self.queued += len(texts)
        # every way a job ends (answered, failed, or its client gone) frees its rows
        job.future.add_done_callback(lambda _: self._release(len(job.texts)))
        self.queue.put_nowait(job)
        return await job.future

    def _release(self, count):
        self.queued -= count

    async def run(self):
        """The one consumer: gather a batch, predict it in a thread, hand the rows back; forever."""
        while True:
            await self._gather()
            batch = self._take()
            if batch:
                await self._predict(batch)

    def _waiting(self):
        return sum(len(job.texts) - start for job, start in self.pending)

    def _drain_queue(self):
        while not self.queue.empty():
            self.pending.append([self.queue.get_nowait(), 0])

    async def _gather(self):
        if not self.pending:
            self.pending.append([await self.queue.get(), 0])
        loop = asyncio.get_running_loop()
        deadline = self.pending[0][0].arrived + self.window
        self._drain_queue()
        while self._waiting() < self.max_batch and (timeout := deadline - loop.time()) > 0:
            try:
                self.pending.append([await asyncio.wait_for(self.queue.get(), timeout), 0])
            except TimeoutError:
                break
            self._drain_queue()

    def _take(self):
        """Up to max_batch rows of the first waiting job's mode, in arrival order."""
        mode, room = self.pending[0][0].mode, self.max_batch
        batch, kept = [], collections.deque()
        for job, start in self.pending:
            if job.future.done():                 # its client went away: nothing to compute
                continue
            if job.mode != mode or not room:
                kept.append([job, start])
                continue
            count = min(room, len(job.texts) - start)
            batch.append((job, start, count))
            room -= count
            if start + count < len(job.texts):
                kept.append([job, start + count])
        self.pending = kept
        return batch

    async def _predict(self, batch):
        texts = [text for job, start, count in batch for text in job.texts[start:start + count]]
        try:
            output = await asyncio.to_thread(self.predict, texts, batch[0][0].mode)
        except Exception as error:     # the model failed: these requests get a 500, the server lives on
            log(f"serve: predict failed on {len(texts)} rows: {type(error).__name__}: {error}")
            failure = ApiError(500, f"prediction failed: {type(error).__name__}: {error}", code="prediction_failed")
            for job, _, _ in batch:
                if not job.future.done():
                    job.future.set_exception(failure)
            self.pending = collections.deque(p for p in self.pending if not p[0].future.done())
            return
        self.batches, self.rows = self.batches + 1, self.rows + len(texts)
        at = 0
        for job, start, count in batch:
            job.parts.append(output.rows(at, at + count))
            job.done, at = job.done + count, at + count
            if job.done == len(job.texts) and not job.future.done():
                job.future.set_result(Output.join(job.parts))


# -- the ASGI guard: API key and body size, before FastAPI reads anything ---------------------------

def _header(scope, name):
    return next((value for key, value in scope.get("headers", []) if key == name), None)


def _authorized(scope, key):
    given = _header(scope, b"authorization") or b""
    scheme, _, token = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())


def _content_length(scope):
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def _read_body(receive, limit):
    """(body, finished): the body, or None once it passes `limit` bytes; finished says whether
    the client has sent all of it (a refused body may still be on its way)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":        # the client went away
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > limit:
            return None, not more
        if not more:
            return b"".join(chunks), True


async def _drain(receive, limit):
    """Read and drop a body's rest, up to `limit` bytes; True when the client has sent it all."""
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return True
        size += len(message.get("body", b""))
    return False


def _replay(body, receive):
    """A receive() that gives the buffered body once, then defers to the server's."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


class Guard:
    """Before any route or parsing: 401 without the right bearer token, 413 for a body over
    MAX_BODY (by its Content-Length, or by counting when it is chunked). The body is buffered
    here, so FastAPI never sees more than the cap."""

    def __init__(self, app, api_key=None, max_body=MAX_BODY):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key and scope["path"] not in OPEN_PATHS and not _authorized(scope, self.api_key):
            return await _refuse(scope, receive, send, 401, "missing or wrong API key: send "
                                 "'Authorization: Bearer <key>'", "invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})
        too_large = f"the request body is over {self.max_body} bytes"
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:       # refused before reading a byte
            return await _refuse(scope, receive, send, 413, too_large, "request_too_large")
        body, finished = await _read_body(receive, self.max_body)   # chunked bodies are counted
        if body is None:
            return await _refuse(scope, receive, send, 413, too_large, "request_too_large", finished=finished)
        await self.app(scope, _replay(body, receive), send)


async def _refuse(scope, receive, send, status, message, code, headers=None, finished=False):
    """Answer with a JSON error. A body still on its way is read (and dropped) first, up to
    DRAIN_LIMIT: closing a socket with unread bytes resets the connection, and the client
    would see a broken pipe instead of this answer."""
    from starlette.responses import JSONResponse
    if not finished and (_content_length(scope) or 0) <= DRAIN_LIMIT:
        finished = await _drain(receive, DRAIN_LIMIT)
    if not finished:                 # too much to read: say so, and let the server close
        headers = {**(headers or {}), "Connection": "close"}
    response = JSONResponse(error_body(status, message, code=code), status_code=status, headers=headers)
    await response(scope, receive, send)


# -- the app ---------------------------------------------------------------------------------------

def create_app(model, model_id, labels=None, api_key=None, batch_window_ms=10.0, max_batch=64, mode="score"):
    """The ASGI app serving a loaded estimator. `labels`: the spec's labels in their CSV form (the
    keys of /v1/classify's probabilities; default the model's label words); `mode`: how chat
    completions are decided (score, or generate for a generative head)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    words = list(model.task.words)
    labels = [str(label) for label in (labels or words)]
    if len(labels) != len(words):
        raise KitError(f"the spec has {len(labels)} labels, the model {len(words)}: serve the run with its own spec")
    mode = _chat_mode(model, mode)
    batcher = Batcher(functools.partial(predict_texts, model), batch_window_ms / 1000, max_batch)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()            # in the server's event loop
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="kit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher
    _add_error_handlers(app)
    card = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "kit"}
    answer_tokens = getattr(model, "answers", None)   # a generative head's label-word token ids

    def check_model(name):
        if name != model_id:
            raise ApiError(404, f"model {name!r} not found: this server serves {model_id!r}", param="model",
                           code="model_not_found")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name}")
    async def model_card(name: str):
        check_model(name)
        return card

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        check_model(body.model)
        if body.stream:
            raise ApiError(400, "stream: streaming is not supported; the answer is one label word", param="stream")
        out = await batcher.submit([last_user_text(body.messages)], mode)
        label = _decided(out)[0]
        completion = len(answer_tokens[label]) if answer_tokens else 1
        choice = {"index": 0, "message": {"role": "assistant", "content": words[label]}, "finish_reason": "stop",
                  "logprobs": _logprobs(out.probs[0], words, label) if body.logprobs else None}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_id, "choices": [choice],
                "usage": {"prompt_tokens": out.tokens[0], "completion_tokens": completion,
                          "total_tokens": out.tokens[0] + completion}}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        check_model(body.model)
        out = await batcher.submit(body.input, "score")
        decided = _decided(out)
        data = [{"object": "classification", "index": i, "label": labels[decided[i]],
                 "probabilities": {label: float(p) for label, p in zip(labels, row)}}
                for i, row in enumerate(out.probs)]
        return {"object": "list", "model": model_id, "data": data,
                "usage": {"prompt_tokens": sum(out.tokens), "total_tokens": sum(out.tokens)}}

    app.add_middleware(Guard, api_key=api_key)
    return app


def _chat_mode(model, mode):
    """generate needs a generative head; anything else answers from its label scores."""
    if mode == "generate" and getattr(getattr(model, "args", None), "head", None) != "generate":
        log("serve: --mode generate needs a generate-head run; this one answers from its label probabilities")
        return "score"
    return mode


def _decided(out):
    """Label index per row, as `kit predict` decides it (a parsed answer wins; binary: P >= 0.5)."""
    from .metrics import decide
    if not np.isfinite(out.probs).all():
        raise ApiError(500, "the model returned non-finite probabilities", code="prediction_failed")
    return [int(i) for i in decide(out.probs, out.parsed, 0.5, positive=1)]


def _logprobs(probs, words, label):
    """OpenAI's logprobs for the one answer token: the chosen word, and every label word below it."""
    def entry(word, p):
        value = max(math.log(p), LOGPROB_FLOOR) if p > 0 else LOGPROB_FLOOR
        return {"token": word, "logprob": value, "bytes": list(word.encode("utf-8"))}
    ranked = sorted(range(len(words)), key=lambda i: -probs[i])
    return {"content": [{**entry(words[label], float(probs[label])),
                         "top_logprobs": [entry(words[i], float(probs[i])) for i in ranked]}],
            "refusal": None}


def _add_error_handlers(app):
    """Every error as OpenAI's JSON error body: 400 for a body that does not validate (naming the
    field), the status of an ApiError, 404/405 for unknown paths and methods, 500 otherwise."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def api_error(_request, error):
        return JSONResponse(error_body(error.status, error.message, error.param, error.code), error.status)

    async def invalid(_request, error):
        message, param = validation_message(error.errors())
        return JSONResponse(error_body(400, message, param, "invalid_request"), 400)

    async def http_error(_request, error):
        return JSONResponse(error_body(error.status_code, str(error.detail)), error.status_code,
                            headers=getattr(error, "headers", None))

    async def crashed(_request, error):
        log(f"serve: {type(error).__name__}: {error}")
        return JSONResponse(error_body(500, f"internal error: {type(error).__name__}"), 500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, crashed)


# -- the command -----------------------------------------------------------------------------------

def bind(host, port):
    """A listening socket, made before the model loads so that a taken port fails at once. Its
    protocol is named (IPPROTO_TCP, not 0): asyncio turns Nagle's algorithm off only on sockets
    that say they are TCP, and with it on, every response waits ~40 ms for a delayed ACK."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise KitError(f"--host {host}: cannot listen there: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restart at once after a stop
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise KitError(f"--host {host} --port {port}: cannot listen there: {error.strerror or error}") from None
    return sock


def is_loopback(host):
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(app, sock, log_level="info"):
    """uvicorn on an open socket until Ctrl-C (uvicorn handles the signal and shuts down)."""
    import uvicorn
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on",
                                  timeout_graceful_shutdown=10)).run(sockets=[sock])


@click.command("serve")
@_spec_option
@click.option("--run", "run_name", default=None,
              help="Run folder name or path (default: the latest run trained on this spec).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens it to the network (set --api-key then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="KIT_API_KEY", show_envvar=True, default=None,
              help="Require 'Authorization: Bearer <key>' on every /v1 request.")
@click.option("--batch-window-ms", type=click.FloatRange(0, 1000), default=10.0, show_default=True,
              help="How long the first waiting request waits for others to share its batch.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Rows per predict call.")
@click.option("--mode", type=click.Choice(["score", "generate"]), default="score", show_default=True,
              help="Chat completions: score (the most probable label) or generate (a generate-head run "
                   "answers greedily; an answer that is not a label falls back to the scores).")
@click.option("--allow-spec-change", is_flag=True, help="Serve a run trained on another version of the spec.")
@click.option("--trust-remote-code", is_flag=True,
              help="Let the base model's own Python code run (ChatGLM2/3). Taken from this command line only.")
@_friendly
def serve(spec_path, run_name, host, port, api_key, batch_window_ms, max_batch, mode, allow_spec_change,
          trust_remote_code):
    """Serve a trained run over HTTP, OpenAI-compatible: /v1/models, /v1/chat/completions, /v1/classify."""
    from .models import load_model
    from .runs import trained_run
    from .spec import load_spec
    if api_key is not None and not api_key.strip():
        raise KitError("--api-key (or KIT_API_KEY) is empty: give a key, or leave it unset for no auth")
    spec = load_spec(spec_path)
    run = trained_run(spec, run_name, allow_spec_change)
    sock = bind(host, port)
    model = load_model(run.model_dir, trust_remote_code)       # once, before the first request
    if hasattr(model, "train_args"):
        # each request's rows are new: the full pass with the prefix KV cache, nothing written to
        # the frozen-state cache per request
        model.train_args.state_cache = False
    from . import predict
    predict.PROGRESS = False                                   # no progress bar per request
    app = create_app(model, run.name, spec.labels, api_key, batch_window_ms, max_batch, mode)
    shown = f"[{host}]" if ":" in host else host
    log(f"serve: run {run.name} at http://{shown}:{sock.getsockname()[1]}/v1 "
        f"(labels {', '.join(spec.labels)}; batches of up to {max_batch} rows within {batch_window_ms:g} ms; "
        f"{'API key required' if api_key else 'no API key'})")
    if not api_key and not is_loopback(host):
        log(f"serve: warning: listening on {host} without --api-key: anyone who can reach it can use it")
    run_server(app, sock)
