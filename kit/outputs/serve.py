"""`kit serve`: an OpenAI-compatible HTTP server for one trained run, on one machine.

    GET  /v1/models             the run's name, the one model id (OpenAI list format)
    POST /v1/chat/completions   the last user message in, the label word the kit decides out
                                (stream=True: the same answer as server-sent chunks, then [DONE])
    POST /v1/classify, /classify {"model", "input": [texts, or objects of a row's fields, rendered through
                                the run's input template]} -> every label's probability per text
                                (vLLM's response shape: data[].label, probs, num_classes)

Requests join an asyncio queue; one worker takes the rows that arrived within --batch-window-ms
(at most --max-batch) and runs the model's predict on them in a thread, so the event loop keeps
accepting requests while the model computes. The rows go through the same
`model.predict(Rows(...), mode)` as `kit predict`: the same prompt, the same truncation to the
spec's max_length, the same probabilities.

Everything a client can get wrong is a 4xx with an OpenAI-style JSON error naming the field (an
empty text, n > 1, and fields that would change the answer's meaning or shape: response_format,
tools, logit_bias, ...; sampling fields such as temperature are accepted: a label does not depend
on them)
({"error": {"message", "type", "param", "code"}}); the server binds 127.0.0.1 unless told
otherwise, and --api-key (or KIT_API_KEY) asks for `Authorization: Bearer <key>`.

The run learned from rows rendered through the spec's input template. When that template has
literal text around its fields ("title:{title},abstract:{abstract}") and a request's text lacks
it (in its order), the answer is still given, with a `warning` field in the JSON body, an
`X-Kit-Warning` header and a log line: such a text is not what the model saw in training, and its
probabilities are not the ones `kit predict` gives for the row.
"""
import asyncio
import collections
import functools
import hmac
import ipaddress
import json
import math
import socket
import string
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kit.core.errors import KitError
from kit.core.logs import log
from kit.evaluation.metrics import decide
from kit.inputs.data import Rows
from kit.inputs.spec import render_template, template_fields

MAX_BODY = 1 << 20          # bytes in a request body (1 MiB): a 100,000-character text fits 10 times
DRAIN_LIMIT = 16 << 20      # a refused body up to this size is read before the answer (see _refuse)
MAX_INPUTS = 2048           # texts per /v1/classify request (OpenAI's limit for embeddings inputs)
QUEUED_BATCHES = 64         # rows waiting beyond max_batch * this are refused with 503, not queued
LOGPROB_FLOOR = -9999.0     # log(0) as OpenAI writes it: JSON has no -Infinity
OPEN_PATHS = ("/health",)   # answered without the API key (load balancers, readiness checks)
WARNING_HEADER = "X-Kit-Warning"


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
    n: Optional[int] = None
    stream: Optional[bool] = None
    stream_options: Optional[dict] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    # fields that would change what the answer is or how it is shaped: refused when set, never ignored
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    logit_bias: Any = None

    @field_validator("n")
    @classmethod
    def _one_answer(cls, value):
        if value not in (None, 1):
            raise ValueError(f"{value} answers asked for; this server gives one per request (a classifier's label is "
                             "the same every time): send n=1 or leave it out")
        return value


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
        for i, item in enumerate(value):
            if isinstance(item, dict):
                bad = next((k for k, v in item.items() if not isinstance(v, str)), None)
                if bad is not None:
                    raise ValueError(f"item {i} field {bad!r} is {type(item[bad]).__name__}, not a string (as the "
                                     "CSV holds it)")
            elif not isinstance(item, str):
                raise ValueError(f"item {i} is {type(item).__name__}, not a string or an object of the row's fields")
            elif not item.strip():
                raise ValueError(f"item {i} is empty: there is no text to classify")
        return value


# (field, the values that ask for nothing this server cannot do, why it is refused otherwise)
UNSUPPORTED = (
    ("response_format", ({"type": "text"},), "the answer is one label word, not JSON: parse the label instead"),
    ("tools", ([],), "the model classifies; it does not call tools"),
    ("tool_choice", ("none",), "the model classifies; it does not call tools"),
    ("functions", ([],), "the model classifies; it does not call functions"),
    ("function_call", ("none",), "the model classifies; it does not call functions"),
    ("audio", (), "the answer is text"),
    ("modalities", (["text"],), "the answer is text"),
    ("prediction", (), "predicted outputs do not apply to a label"),
    ("logit_bias", ({},), "the label is decided from the run's probabilities as kit predict decides it"),
)


def refuse_unsupported(body):
    """A 400 naming the first field set to something this server would otherwise have to ignore."""
    for name, harmless, why in UNSUPPORTED:
        value = getattr(body, name)
        if value is not None and value not in harmless:
            raise ApiError(400, f"{name}: not supported by kit serve: {why}", param=name, code="unsupported_field")


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
    if not last.content.strip():
        raise ApiError(400, f"{where}.content: is empty: there is no text to classify", param=f"{where}.content")
    return last.content


def render_fields(template, fields, where):
    """A row sent as its fields ({"title": ..., "abstract": ...}), rendered through the run's input
    template exactly as kit predict renders a CSV row."""
    if not template:
        raise ApiError(400, f"{where}: this run records no input template to render fields with; send the text",
                       param=where)
    missing = [name for name in template_fields(template) if name not in fields]
    if missing:
        raise ApiError(400, f"{where}: missing field(s) {missing} of the input template {template!r}", param=where)
    text = render_template(template, fields)
    if not text.strip():
        raise ApiError(400, f"{where}: the fields render to an empty text", param=where)
    return text


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
    rows = Rows(list(range(len(texts))), list(texts))
    # transformers: the encoding predict would make, reused for usage (a fold ensemble's models
    # encode their own: with few-shot examples each fold's prompt differs)
    encoded = model.encode(rows)
    if encoded:
        prediction = model.predict(rows, mode, encoded=encoded)
        tokens = [len(ids) for ids in encoded[0]]
    else:
        prediction = model.predict(rows, mode)
        tokens = [len(text.split()) for text in texts]
    parsed = None if prediction.parsed is None else np.asarray(prediction.parsed)
    return Output(np.asarray(prediction.probs, dtype=np.float64), parsed, tokens)


# -- the input template's shape ---------------------------------------------------------------------

def template_literals(template):
    """The literal text around an input template's fields, in order (fields + 1 pieces, "" where
    there is none); None when there is nothing to compare (no field, or no literal text)."""
    if not template:
        return None
    pieces, current = [], ""
    for literal, name, _, _ in string.Formatter().parse(template):   # {{ and }} come back as braces
        current += literal
        if name is not None:
            pieces.append(current)
            current = ""
    pieces.append(current)
    return pieces if len(pieces) > 1 and any(pieces) else None


def fits_template(text, pieces):
    """Whether text has the template's shape: its first literal piece at the start, its last at the
    end and the others in order between them (each field any text, empty included)."""
    first, *middle, last = pieces
    if not text.startswith(first):
        return False
    at = len(first)
    for piece in middle:
        found = text.find(piece, at)       # leftmost is enough: fields match any text
        if found < 0:
            return False
        at = found + len(piece)
    return len(text) - at >= len(last) and text.endswith(last)


class TemplateCheck:
    """The warning for texts that lack the run's input template's literal text (None: all fit)."""

    def __init__(self, template):
        self.template, self.pieces = template, template_literals(template)
        self.seen = 0                      # requests warned about (the log says the 1st, 10th, 100th, ...)

    def warning(self, texts, where):
        """(the warning for the body, the header's ASCII text) or (None, None); where(i) names text i."""
        if self.pieces is None:
            return None, None
        bad = [i for i, text in enumerate(texts) if not fits_template(text, self.pieces)]
        if not bad:
            return None, None
        names = ", ".join(where(i) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        message = (f"{names} {'does' if len(bad) == 1 else 'do'} not match the run's input template "
                   f"{self.template!r}: the model learned from rows rendered from it, so these probabilities "
                   "are not what kit predict gives for the row; send the rendered text")
        self.seen += 1
        if math.log10(self.seen).is_integer():
            log(f"serve: warning: {message} (request {self.seen} with such texts)")
        header = (f"{len(bad)} input(s) do not match the run's input template "
                  f"{json.dumps(self.template)}; see the warning field")
        return message, header


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

def create_app(model, model_id, labels=None, api_key=None, batch_window_ms=10.0, max_batch=64, mode="score",
               template=None):
    """The ASGI app serving a loaded estimator (or a run's fold ensemble). `labels`: the spec's
    labels in their CSV form (the keys of /v1/classify's probabilities; default the model's label
    words); `mode`: how chat completions are decided (score, or generate for a generative head);
    `template`: the run's input template, whose literal text each request's text is checked for."""

    from fastapi import FastAPI, Response
    from fastapi.responses import StreamingResponse

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
    answer_tokens = model.answer_tokens          # a generative head's label-word token ids
    shape = TemplateCheck(template)

    def warned(body, response, texts, where):
        """body with the template warning added (and its header set) when a text lacks the shape."""
        message, header = shape.warning(texts, where)
        if message:
            response.headers[WARNING_HEADER] = header
            body["warning"] = message
        return body

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
    async def chat(body: ChatRequest, response: Response):
        check_model(body.model)
        refuse_unsupported(body)
        text = last_user_text(body.messages)
        out = await batcher.submit([text], mode)
        label = _decided(out)[0]
        completion = len(answer_tokens[label]) if answer_tokens else 1
        logprobs = _logprobs(out.probs[0], words, label, body.top_logprobs) if body.logprobs else None
        answer = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                  "model": model_id,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": words[label]},
                               "finish_reason": "stop", "logprobs": logprobs}],
                  "usage": {"prompt_tokens": out.tokens[0], "completion_tokens": completion,
                            "total_tokens": out.tokens[0] + completion}}
        answer = warned(answer, response, [text], lambda _: f"messages.{len(body.messages) - 1}.content")
        if not body.stream:
            return answer
        usage = bool((body.stream_options or {}).get("include_usage"))
        warning = {WARNING_HEADER: response.headers[WARNING_HEADER]} if WARNING_HEADER in response.headers else None
        return StreamingResponse(stream_chunks(answer, usage), media_type="text/event-stream", headers=warning)

    @app.post("/v1/classify")
    @app.post("/classify")                       # vLLM's path for the same request
    async def classify(body: ClassifyRequest, response: Response):
        check_model(body.model)
        texts = [render_fields(template, item, f"input.{i}") if isinstance(item, dict) else item
                 for i, item in enumerate(body.input)]
        out = await batcher.submit(texts, "score")
        decided = _decided(out)
        # vLLM's shape (id, created, data[].label/probs/num_classes, usage), plus the kit's probabilities by label
        data = [{"object": "classification", "index": i, "label": labels[decided[i]], "probs": [float(p) for p in row],
                 "num_classes": len(labels), "probabilities": {label: float(p) for label, p in zip(labels, row)}}
                for i, row in enumerate(out.probs)]
        answer = {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                  "model": model_id, "data": data,
                  "usage": {"prompt_tokens": sum(out.tokens), "total_tokens": sum(out.tokens), "completion_tokens": 0,
                            "prompt_tokens_details": None}}
        sent = [i for i, item in enumerate(body.input) if isinstance(item, str)]   # rendered ones fit by construction
        return warned(answer, response, [texts[i] for i in sent], lambda j: f"input.{sent[j]}")

    app.add_middleware(Guard, api_key=api_key)
    return app


def _chat_mode(model, mode):
    """generate needs a generative head; anything else answers from its label scores."""
    if mode == "generate" and not model.generates:
        log("serve: --mode generate needs a generate-head run (a fold ensemble answers from its models' averaged "
            "label probabilities); this one answers from its label probabilities")
        return "score"
    return mode


def _decided(out):
    """Label index per row, as `kit predict` decides it (a parsed answer wins; binary: P >= 0.5)."""
    if not np.isfinite(out.probs).all():
        raise ApiError(500, "the model returned non-finite probabilities", code="prediction_failed")
    return [int(i) for i in decide(out.probs, out.parsed, 0.5, positive=1)]


def stream_chunks(answer, usage=False):
    """A finished chat completion as OpenAI's server-sent chunks: the role and the whole label word,
    then the finish reason (then the usage, when stream_options asks for it), then [DONE]."""
    head = {key: answer[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = answer["choices"][0]
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", **choice["message"]},
                                    "logprobs": choice["logprobs"], "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}]
    if usage:
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    for chunk in chunks:
        if "warning" in answer:
            chunk["warning"] = answer["warning"]
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def _logprobs(probs, words, label, top=None):
    """OpenAI's logprobs for the one answer token: the chosen word, and the `top` most probable label
    words below it (every label word when top is not given)."""
    def entry(word, p):
        value = max(math.log(p), LOGPROB_FLOOR) if p > 0 else LOGPROB_FLOOR
        return {"token": word, "logprob": value, "bytes": list(word.encode("utf-8"))}
    ranked = sorted(range(len(words)), key=lambda i: -probs[i])
    return {"content": [{**entry(words[label], float(probs[label])),
                         "top_logprobs": [entry(words[i], float(probs[i])) for i in ranked[:top]]}],
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


