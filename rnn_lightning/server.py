"""``python cli.py serve``: a trained model over HTTP, with a page that shows which words decided.

POST /predict {"texts": [...]}     -> {"model": {...}, "predictions": [the task's decision per text, ...]}
POST /explain {"text": ..., "class": optional}  -> the prediction and one attribution score per word read
GET  /health (503 until the model is loaded), GET /info, GET / (the page)

FastAPI + uvicorn, one process: the model is loaded once and runs in one thread (its ops use every core), fed
by ``Batcher``, which merges the requests that arrive while the model is busy or within ``batch_window_ms``.
LitServe was the other candidate: it runs the model in worker processes behind a queue (one more hop and a
second copy of the model on a 2-core machine) and has no body limit by default; what it adds (batching,
health) is a few lines here. Imports no Lightning: start-up is torch, tokenizers and the web stack.

One bad text never costs another request its answer: texts are checked as they enter (a lone surrogate
cannot be tokenized), and a batch that fails is run again request by request (``Batcher``). Slow clients
are bounded by ``timeout_s`` in every phase: a connection's wait for a request's headers (``Connection``),
the body (408) and the answer (504); at most ``max_connections`` are open at once (503 past it).
"""

import argparse
import asyncio
import errno
import hmac
import json
import logging
import math
import os
import resource
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from rnn_lightning import __version__, checkpoint, page
from rnn_lightning.errors import InputError, said
from rnn_lightning.explain import METHOD, explain_ids
from rnn_lightning.inference import Predictor
from rnn_lightning.serving import ExportedPredictor
from rnn_lightning.signals import exit_on_stop
from rnn_lightning.text.readers import EMPTY
from rnn_lightning.text.tokenizer import length, text_chars
from rnn_lightning.text.tokenizer import tail as text_tail

API_KEY_ENV = "RNN_LIGHTNING_API_KEY"  # set: every endpoint but / and /health needs "Authorization: Bearer <key>"
FILES_BESIDE_CONNECTIONS = 128  # open files the process needs besides one per connection (model, threads, logs)


def _limit(default, low, high, what: str):
    """A limit's default, its range [low, high] (checked by ``Limits``) and what it bounds (the option's help)."""
    return field(default=default, metadata={"range": (low, high), "help": what})


@dataclass(frozen=True)
class Limits:
    """What the server allows; each is a command-line option of the same name, refused in one line outside its range."""

    max_body_bytes: int = _limit(1 << 20, 1, 1 << 30, "bytes of a request body (413 past it)")
    max_texts: int = _limit(256, 1, 1 << 16, "texts per /predict request (413 past it)")
    # the longest IMDB review has 14,282 characters
    max_chars: int = _limit(20_000, 1, 1 << 24, "characters per text (413 past it)")
    timeout_s: float = _limit(10.0, 0.01, 3600.0, "seconds a connection waits for a request's headers, and a "
                              "request from its headers to its answer: 408 while its body arrives, 504 after")  # fmt: skip
    batch_window_ms: float = _limit(2.0, 0.0, 1000.0, "milliseconds a lone request waits for others to share its "
                                    "batch (below timeout_s)")  # fmt: skip
    max_batch: int = _limit(512, 1, 1 << 16, "texts per forward pass")
    max_connections: int = _limit(256, 1, 1 << 16, "connections open at once (503 past it), and clients waiting "
                                  "to be accepted")  # fmt: skip

    def __post_init__(self) -> None:
        for f in fields(self):
            value, (low, high) = getattr(self, f.name), f.metadata["range"]
            if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
                raise InputError(f"{f.name}: {value}; expected a number from {low} to {high}")
        if self.batch_window_ms >= 1e3 * self.timeout_s:
            raise InputError(f"batch_window_ms: {self.batch_window_ms:g}; expected less than timeout_s "
                             f"({self.timeout_s:g} s), or every lone request waits past its timeout")  # fmt: skip


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a one-line reason (the JSON body's ``error``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ServedModel:
    """A checkpoint (prediction and explanation) or an export folder (prediction only), read once."""

    def __init__(self, path: str) -> None:
        self.name = Path(path).name
        if Path(path).is_dir():
            self.predictor = ExportedPredictor(path)
            self.net = None
        else:
            self.predictor = Predictor.from_checkpoint(path)
            self.net = self.predictor.net
        self.tokenizer, self.class_names = self.predictor.tokenizer, self.predictor.class_names
        self.task = self.predictor.task
        self.max_len = length(self.tokenizer)

    def info(self) -> dict:
        return {
            "model": self.name,
            "class_names": self.class_names,
            "task": self.predictor.task.state(),
            "vocab_size": self.tokenizer.get_vocab_size(),
            "max_len": self.max_len,
            "explain": self.net is not None,
            "explain_method": METHOD if self.net is not None else None,
            "version": __version__,
        }

    def predict(self, texts: list[str]) -> list[dict]:
        with torch.inference_mode():
            return self.predictor(texts)

    def explain(self, text: str, target: str | None) -> dict:
        """The prediction and, for ``target`` (the predicted class when None), each read word's
        ``{"token", "start", "end", "score"}`` (character offsets in ``text``)."""
        tail = text_tail(text, text_chars(self.max_len))  # the part encode() reads (tokenizer.encode)
        shift = len(text) - len(tail)
        enc = self.tokenizer.encode(tail)
        ids = torch.tensor([enc.ids], dtype=torch.long)
        targets = None if target is None else [self.class_names.index(target)]
        (row,) = explain_ids(self.net, ids, self.predictor.task, targets)
        words = [
            {"token": enc.tokens[p], "start": enc.offsets[p][0] + shift, "end": enc.offsets[p][1] + shift, "score": s}
            for p, s in zip(row.pop("positions"), row.pop("scores"), strict=True)
        ]
        return {**row, "words": words, "method": METHOD}


class Batcher:
    """Runs ``run`` (texts -> one result each) in one thread on the texts of every request waiting, in
    arrival order, at most ``max_batch`` at a time; a lone request waits ``window_s`` for company. A batch
    that raises is run again one request at a time, so only the request that fails gets the exception."""

    def __init__(self, run, executor: ThreadPoolExecutor, window_s: float, max_batch: int) -> None:
        self.run, self.executor, self.window_s, self.max_batch = run, executor, window_s, max_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def submit(self, texts: list[str]) -> list:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((texts, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        held = None  # a request that would have made the last batch larger than max_batch: it starts the next
        while True:
            jobs = [held or await self.queue.get()]
            held, n, deadline = None, len(jobs[0][0]), loop.time() + self.window_s
            while n < self.max_batch:
                try:
                    job = (
                        self.queue.get_nowait()
                        if self.queue.qsize()
                        else await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                    )
                except (TimeoutError, ValueError):
                    break
                if n + len(job[0]) > self.max_batch:
                    held = job
                    break
                jobs.append(job)
                n += len(job[0])
            jobs = [(texts, f) for texts, f in jobs if not f.done()]  # those timed out are gone
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run, [t for texts, _ in jobs for t in texts])
            except Exception as e:
                if len(jobs) == 1:
                    _settle(jobs[0][1], error=e)
                    continue
                for texts, f in jobs:
                    if not f.done():
                        try:
                            _settle(f, await loop.run_in_executor(self.executor, self.run, texts))
                        except Exception as alone:
                            _settle(f, error=alone)
                continue
            start = 0
            for texts, f in jobs:
                _settle(f, results[start : start + len(texts)])
                start += len(texts)

    def close(self) -> None:
        self.task.cancel()


def _settle(future: asyncio.Future, result=None, error: Exception | None = None) -> None:
    """Give ``future`` its result or exception, unless its request has gone (timed out) meanwhile."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Connection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the two bounds on slow clients its Config has no option for
    (uvicorn 0.55; the subclass relies on H11Protocol's ``connections``, ``cycle`` and ``transport``).

    - A connection that uvicorn's ``limit_concurrency`` would refuse (the same count: the open connections,
      itself included) is answered 503 and closed as it is accepted: uvicorn checks only once a request's
      headers have arrived, so connections that never send them would hold every file the process may
      open, and each accept() past that logs a traceback.
    - A connection with no request in progress is closed ``timeout_keep_alive`` seconds after it opened or
      was answered: uvicorn times only an idle keep-alive connection, and any byte restarts its wait, so
      headers sent a byte at a time would hold the connection for ever.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.limit_concurrency is not None and len(self.connections) >= self.limit_concurrency:
            body = b'{"error": "the server has max_connections connections open; retry later"}'
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            transport.close()
            return
        self._arm_idle()

    def handle_events(self) -> None:
        super().handle_events()
        if self._busy() and self._idle is not None:  # headers read: the app's timeout_s bounds the rest
            self._idle.cancel()

    def on_response_complete(self) -> None:
        self._arm_idle()
        super().on_response_complete()  # starts a request pipelined behind this one, if any

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        super().connection_lost(exc)

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self.timeout_keep_alive, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self._busy():
            self.transport.close()


def out_of_files(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The event loop's exception handler: accept() out of open files (asyncio stops accepting for a second,
    then retries) is one warning line, not a traceback a second; anything else goes to asyncio's handler."""
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
        logging.getLogger("uvicorn.error").warning(
            "accept(): %s; new connections wait a second (open connections: see --max_connections)", error.strerror
        )
    else:
        loop.default_exception_handler(context)


def create_app(
    model_path: str, limits: Limits = Limits(), api_key: str | None = None, on_fail=None, model_class=None
) -> FastAPI:
    """The application serving the model at ``model_path``, loaded in a thread once the app starts
    (``/health`` says 503 until then). ``on_fail(message)`` is called if it cannot be loaded. ``model_class``
    (default ``ServedModel``) reads it: the benchmark serves its linear baseline through the same app."""
    state: dict = {"model": None, "error": None}
    executor = ThreadPoolExecutor(1, thread_name_prefix="model")  # one model call at a time; torch uses the cores

    def load() -> None:
        try:
            state["model"] = (model_class or ServedModel)(model_path)
        except Exception as e:  # any failure is said in /health and by the process, never a silent "loading"
            state["error"] = str(e) if isinstance(e, InputError) else (
                f"ckpt_path: {model_path!r} could not be loaded ({type(e).__name__}: {said(e, 200)})"
            )  # fmt: skip
            if on_fail is not None:
                on_fail(state["error"])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        handler = loop.get_exception_handler()
        loop.set_exception_handler(out_of_files)
        threading.Thread(target=load, name="load-model", daemon=True).start()
        state["batcher"] = Batcher(lambda texts: state["model"].predict(texts), executor, limits.batch_window_ms / 1e3,
                                   limits.max_batch)  # fmt: skip
        yield
        state["batcher"].close()
        executor.shutdown(wait=True)
        loop.set_exception_handler(handler)

    app = FastAPI(title="rnn-lightning", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    html, script_hash = page.render(auth=api_key is not None)

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError) -> JSONResponse:
        close = {"connection": "close"} if e.status == 408 else None  # the rest of the body is not waited for
        return JSONResponse({"error": e.message}, status_code=e.status, headers=close)

    @app.exception_handler(Exception)
    async def failed(request: Request, e: Exception) -> JSONResponse:  # logged by uvicorn; the caller gets one line
        return JSONResponse({"error": f"internal error ({type(e).__name__}); the server keeps serving"}, 500)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:  # 404, 405: JSON like the others
        return JSONResponse({"error": f"{request.method} {request.url.path}: {e.detail}"}, status_code=e.status_code)

    def ready(request: Request) -> ServedModel:
        if api_key is not None:
            given = request.headers.get("authorization", "").encode("latin-1")  # the header's bytes, as sent
            if not hmac.compare_digest(given, f"Bearer {api_key}".encode("ascii")):
                raise RequestError(401, "authorization: expected 'Bearer <key>' with the key the server was given")
        if state["model"] is None:
            raise RequestError(503, state["error"] or "the model is still loading; retry when /health says 200")
        return state["model"]

    def deadline() -> float:
        """When a request that has just arrived (its headers read) is answered 504 at the latest."""
        return asyncio.get_running_loop().time() + limits.timeout_s

    async def answer(job, what: str, by: float):
        try:
            async with asyncio.timeout_at(by):
                return await job
        except TimeoutError:
            raise RequestError(504, f"{what} took longer than the server's timeout_s={limits.timeout_s:g}") from None

    @app.get("/health")
    async def health() -> JSONResponse:
        if state["model"] is not None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "failed" if state["error"] else "loading", "error": state["error"]}, 503)

    @app.get("/info")
    async def info(request: Request) -> dict:
        return {**ready(request).info(), "limits": asdict(limits)}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        """Each text's decision, in order; an empty or whitespace-only text gets ``error`` (as ``predict``'s)
        and the decision's fields as None, without reaching the model. ``thresholds`` (a multi-label
        model's: one number or one per label) decide this request's labels instead of the model's."""
        model, by = ready(request), deadline()
        body = await _json_body(request, limits.max_body_bytes, by, limits.timeout_s, allowed=("texts", "thresholds"))
        texts, task = _field(body, "texts", list), model.task
        if body.get("thresholds") is not None:  # this request's decisions with other thresholds (multi-label)
            try:
                task = task.with_thresholds(body["thresholds"], "thresholds")
            except InputError as e:
                raise RequestError(422, str(e)) from None
        if not texts:
            raise RequestError(422, f"texts: empty list; expected 1 to {limits.max_texts} texts")
        if len(texts) > limits.max_texts:
            raise RequestError(413, f"texts: {len(texts)} texts; at most {limits.max_texts} a request")
        for i, text in enumerate(texts):
            _check_text(text, f"texts[{i}]", limits.max_chars, empty_ok=True)
        read = [t for t in texts if t.strip()]  # what predict calls empty is answered without the model
        found = iter(await answer(state["batcher"].submit(read), f"predicting {len(read)} texts", by) if read else ())
        predictions = [next(found) if t.strip() else {"error": EMPTY, **task.no_decision()} for t in texts]
        if task is not model.task:
            predictions = [
                row if row.get("probs") is None else task.decision(list(row["probs"].values())) for row in predictions
            ]
        for i, row in enumerate(predictions):
            _check_finite(row, f"texts[{i}]")
        return {"model": _identity(model), "predictions": predictions}

    @app.post("/explain")
    async def explain(request: Request) -> dict:
        model = ready(request)
        if model.net is None:
            raise RequestError(501, f"explain: {model.name} is an export (model.pt2), which has no gradients; "
                                    "serve the checkpoint to explain")  # fmt: skip
        by = deadline()
        body = await _json_body(request, limits.max_body_bytes, by, limits.timeout_s, allowed=("text", "class"))
        text = _check_text(_field(body, "text", str), "text", limits.max_chars)
        target = body.get("class")
        if target is not None and target not in model.class_names:
            raise RequestError(422, f"class: {str(target)[:100]!r} is not one of {', '.join(model.class_names)}")
        loop = asyncio.get_running_loop()
        found = await answer(loop.run_in_executor(executor, model.explain, text, target), "explaining the text", by)
        _check_finite(found, "text")
        return {"model": _identity(model), **found}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers=page.headers(script_hash))

    return app


def _identity(model: ServedModel) -> dict:
    return {"name": model.name, "class_names": model.class_names}


async def _json_body(
    request: Request, limit: int, by: float, timeout_s: float, allowed: tuple[str, ...] = ("texts",)
) -> dict:
    """The request's JSON object, read up to ``limit`` bytes (413 past it, before reading more) by the
    event loop's time ``by`` (408 past it: the request's ``timeout_s`` covers its body)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(413, f"body: {declared} bytes; at most {limit} (the server's max_body_bytes)")
    body = bytearray()
    try:
        async with asyncio.timeout_at(by):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise RequestError(413, f"body: over {limit} bytes (the server's max_body_bytes)")
    except TimeoutError:
        raise RequestError(408, f"body: {len(body)} bytes received within the server's timeout_s={timeout_s:g}; "
                                "expected the whole body by then") from None  # fmt: skip
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(400, f"body: not UTF-8 (byte {e.start}); expected a JSON object in UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"body: not JSON ({str(e)[:120]}); expected a JSON object") from None
    if not isinstance(value, dict):
        raise RequestError(422, f"body: a JSON {type(value).__name__}; expected an object with {allowed[0]!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise RequestError(422, f"{unknown[0][:100]}: unknown field; expected {', '.join(allowed)}")
    return value


def _field(body: dict, name: str, kind: type):
    if name not in body:
        raise RequestError(422, f"{name}: missing")
    if not isinstance(body[name], kind):
        what = {list: "a list of strings", str: "a string"}[kind]
        raise RequestError(422, f"{name}: {type(body[name]).__name__}; expected {what}")
    return body[name]


def _check_text(text, where: str, max_chars: int, empty_ok: bool = False) -> str:
    if not isinstance(text, str):
        raise RequestError(422, f"{where}: {type(text).__name__}; expected a string")
    if not empty_ok and not text.strip():
        raise RequestError(422, f"{where}: empty; expected text to classify")
    if len(text) > max_chars:
        raise RequestError(413, f"{where}: {len(text)} characters; at most {max_chars} (the server's max_chars)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's \ud800 escapes decode to lone surrogates, which no tokenizer reads
        raise RequestError(422, f"{where}: a lone surrogate (U+{ord(text[e.start]):04X}) at character {e.start}; "
                                "expected Unicode text") from None  # fmt: skip
    return text


def _check_finite(answer: dict, where: str) -> None:
    """A NaN or an infinity anywhere in an answer (damaged weights) is a 500 for its request, never a 200."""
    if not _finite(answer):
        raise RequestError(
            500, f"{where}: the model's output is not finite (NaN or infinity); its weights may be damaged"
        )


def _finite(value) -> bool:
    """No NaN or infinity in ``value`` (numbers, strings and None, in lists and dicts)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rnn-lightning serve", allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--ckpt_path", required=True, help="a checkpoint, an export folder, or last/best of --runs_dir")
    p.add_argument("--runs_dir", default="lightning_logs", help="where last/best are looked for")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only; 0.0.0.0: every interface")
    p.add_argument("--port", type=int, default=8000)
    for f in fields(Limits):
        low, high = f.metadata["range"]
        p.add_argument(f"--{f.name}", type=f.type, default=f.default,
                       help=f"{f.metadata['help']}; {low} to {high} (default {f.default})")  # fmt: skip
    return p.parse_args(argv)


def key_from_env(environ) -> str | None:
    """The key ``API_KEY_ENV`` holds (None: unset), refused in one line if no client could send it."""
    key = environ.get(API_KEY_ENV)
    if key is None:
        return None
    if not key:
        raise InputError(f"{API_KEY_ENV}: set but empty; expected a key, or the variable unset to serve without one")
    if not (key.isascii() and key.isprintable()) or key != key.strip():
        raise InputError(f"{API_KEY_ENV}: holds non-ASCII, control or surrounding space characters; expected "
                         "printable ASCII, which an Authorization header carries as it is")  # fmt: skip
    return key


def allow_open_files(max_connections: int) -> None:
    """Raise this process's soft limit on open files, if need be, to hold ``max_connections`` connections
    (one file each) and twice as many being accepted: asyncio accepts up to the backlog (``max_connections``)
    at a time before ``Connection`` refuses those past the limit, and one such burst may follow another
    before they are closed. Refused in one line when the hard limit is lower."""
    need = 3 * max_connections + FILES_BESIDE_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise InputError(f"max_connections: {max_connections} needs {need} open files; this process may open "
                         f"{hard} (ulimit -Hn)")  # fmt: skip
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def resolve(ckpt_path: str, runs_dir: str) -> str:
    """``last``/``best`` (of the newest run under ``runs_dir``), a path or ``file://`` URL -> a path that exists."""
    if ckpt_path in checkpoint.NAMED:
        return str(checkpoint.find_checkpoint(Path(runs_dir), ckpt_path))
    path = Path(checkpoint.local_path(ckpt_path))
    if not path.exists():
        raise InputError(f"ckpt_path: {str(path)!r} does not exist; expected a checkpoint or an export folder")
    return str(path)


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on ``host:port`` (before the model loads, so a taken port is said at once)."""
    if not 0 <= port < 65536:
        raise InputError(f"port: {port}; expected 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        raise InputError(f"host/port: cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def main(argv: list[str], model_class=None) -> None:
    import uvicorn

    args = parse_args(argv)
    try:
        limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
        key = key_from_env(os.environ)
        allow_open_files(limits.max_connections)
        path = resolve(args.ckpt_path, args.runs_dir)
        sock = listen(args.host, args.port, backlog=limits.max_connections)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    failed: list[str] = []

    def on_fail(message: str) -> None:
        failed.append(message)
        server.should_exit = True

    app = create_app(path, limits, key, on_fail, model_class)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(limits.timeout_s) + 5,
        http=Connection,
        # uvicorn counts the connection asking among the open ones (Connection refuses the one past the
        # limit); requests still running after their client has gone count too
        limit_concurrency=limits.max_connections + 1,
        timeout_keep_alive=limits.timeout_s,  # and Connection's wait for any request's headers
        backlog=limits.max_connections,  # asyncio's listen() again, and how many it accepts at a time
    )
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    print(f"serving {path} on http://{host}:{port}/ (Ctrl+C or SIGTERM: finish the requests in flight, then exit)",
          flush=True)  # fmt: skip
    exit_on_stop()  # uvicorn re-raises a stop signal once it has finished the requests in flight
    server.run(sockets=[sock])
    if failed:
        raise SystemExit(f"error: {failed[0]}")
