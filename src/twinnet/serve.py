"""HTTP service over a saved model (FastAPI): embed, verify, health, model card.

A thin face over the library: every answer comes from the same ``embed`` / ``score`` / calibration code as
the Python API, so the service decides exactly as ``twinnet verify`` does. Concurrent requests are
micro-batched: a single worker thread runs the model, and requests that arrive while it is busy are
encoded together in its next forward pass (up to ``max_batch`` inputs, waiting at most ``max_wait_ms``
for company).

Errors are JSON: ``{"error": {"status": 422, "message": "...", "item": 3}}``; ``item`` names the
offending input (its index in ``inputs`` or ``pairs``) whenever there is one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import signal
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from twinnet.errors import TwinnetError
from twinnet.index import VectorIndex
from twinnet.scoring import PairScorer, cosine_rows

access_log = logging.getLogger("twinnet.access")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
API_KEY_ENV = "TWINNET_API_KEY"
FORWARD_BATCH = 64

Item = Union[str, dict[str, Union[str, int, float, None]]]


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching for the service.

    max_items: inputs per request (pairs count as one item each) -> 413 beyond it.
    max_chars: characters per input (all attribute values together for a record) -> 413 beyond it.
    max_batch: inputs per forward pass when micro-batching (1 turns micro-batching off).
    max_wait_ms: how long the first waiting request holds the pass open for others.
    """

    max_items: int = 256
    max_chars: int = 4096
    max_batch: int = 128
    max_wait_ms: float = 5.0
    max_body_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_items", "max_chars", "max_batch", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise TwinnetError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise TwinnetError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


def load_api_keys(key_file: str | os.PathLike[str] | None = None) -> set[str]:
    """API keys from ``key_file`` (one per line, ``#`` comments) or the ``TWINNET_API_KEY`` env var
    (comma-separated)."""
    if key_file is not None:
        path = Path(key_file)
        if not path.exists():
            raise TwinnetError("API key file not found", file=path)
        keys = {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
        if not keys:
            raise TwinnetError("API key file holds no key", file=path)
        return keys
    return {k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()}


def check_bind(host: str, *, auth: bool, keys: set[str]) -> None:
    """Refuse to serve without a key, except on a loopback address with auth explicitly off."""
    if not auth and host not in LOOPBACK_HOSTS:
        raise TwinnetError(f"--no-auth is only allowed on a loopback address ({', '.join(LOOPBACK_HOSTS)}); "
                           f"got --host {host}")
    if auth and not keys:
        raise TwinnetError(f"no API key configured: set {API_KEY_ENV} or pass --api-key-file "
                           f"(or --no-auth on 127.0.0.1 for local use)")


# ---------------------------------------------------------------------------------------------- schemas
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedRequest(_Strict):
    inputs: list[Item] = Field(description="Texts, or records as attribute maps.",
                               examples=[["sony bravia kdl-40v5100", {"name": "sony kdl40v5100", "price": 999}]])


class Pair(_Strict):
    left: Item
    right: Item


class VerifyRequest(_Strict):
    pairs: list[Pair] = Field(examples=[[{"left": "sony bravia kdl-40v5100", "right": "sony kdl40v5100 40 lcd"}]])
    threshold: float | None = Field(None, description="Override the stored threshold.")
    fmr: float | None = Field(None, ge=0, le=1, description="Threshold for this validation false-match rate.")


class SearchRequest(_Strict):
    queries: list[Item] | None = Field(None, description="Query texts or records.",
                                       examples=[["sony bravia kdl-40v5100"]])
    ids: list[str] | None = Field(None, description="Or: ids of records already in the index.")
    k: int = Field(10, ge=1, le=1000, description="Hits per query.")


class Hit(BaseModel):
    id: str
    score: float
    probability: float | None
    metadata: dict[str, Any] | None = None


class Truncated(BaseModel):
    item: int
    side: str | None = None
    tokens_cut: int


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimension: int
    truncated: list[Truncated]


class VerifyResult(BaseModel):
    same: bool
    score: float
    probability: float | None


class VerifyResponse(BaseModel):
    results: list[VerifyResult]
    threshold: float
    truncated: list[Truncated]


class SearchResponse(BaseModel):
    results: list[list[Hit]]
    truncated: list[Truncated]


class ApiError(Exception):
    def __init__(self, status: int, message: str, item: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.item = status, message, item


# ---------------------------------------------------------------------------------------------- batching
class MicroBatcher:
    """Queue requests' inputs and encode them together in one worker thread."""

    def __init__(self, model: PairScorer, *, max_batch: int, max_wait_ms: float) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[tuple[list[Any], asyncio.Future]] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twinnet-model")
        self.task: asyncio.Task | None = None
        self.carried: tuple[list[Any], asyncio.Future] | None = None  # too big for the last pass; leads the next
        self.passes = 0
        self.inputs_encoded = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.worker.shutdown(wait=True)

    async def embed(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of ``inputs`` and the tokens cut from each."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((inputs, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [self.carried or await self.queue.get()]
            self.carried = None
            size = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    nxt = self.queue.get_nowait() if self.max_wait == 0 else await asyncio.wait_for(
                        self.queue.get(), timeout=max(deadline - loop.time(), 0))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + len(nxt[0]) > self.max_batch:
                    self.carried = nxt
                    break
                batch.append(nxt)
                size += len(nxt[0])
            joined = [x for inputs, _ in batch for x in inputs]
            try:
                emb, cut = await loop.run_in_executor(self.worker, self._encode, joined)
            except Exception as exc:  # hand the failure to every waiting request
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.passes += 1
            self.inputs_encoded += len(joined)
            start = 0
            for inputs, future in batch:
                end = start + len(inputs)
                if not future.done():
                    future.set_result((emb[start:end], cut[start:end]))
                start = end

    def _encode(self, inputs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        # One pass may join many requests' inputs; the model sorts them by length and runs them in slices of
        # FORWARD_BATCH, so short inputs are not padded to the longest of the whole pass.
        emb = self.model._embed_inputs(inputs, batch_size=min(self.max_batch, FORWARD_BATCH))
        return emb, self.model.last_tokens_cut


# ---------------------------------------------------------------------------------------------- app
def check_servable(model: Any) -> None:
    """Refuse a model the service cannot answer for: requests carry records as JSON strings, and for an image
    model those would be paths opened on the server, letting any client probe the server's files."""
    if model.input_modality != "text":
        raise TwinnetError(f"the service answers text models; this model encodes {model.input_modality}s (verify "
                           "and embed them with the CLI or the Python API)")


def create_app(model: PairScorer, *, api_keys: set[str] | None = None,
               settings: ServeSettings | None = None, model_folder: str | os.PathLike[str] | None = None,
               backend: str = "torch", index: VectorIndex | None = None) -> FastAPI:
    """The FastAPI application. ``api_keys=None`` (or empty) serves without authentication; with ``index``
    (built with this model: checked by fingerprint) it also answers ``POST /v1/search``."""
    settings = settings or ServeSettings()
    check_servable(model)
    if index is not None:
        index.check_model(model)
    keys = set(api_keys or ())
    card = _model_card(model, model_folder, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(model, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms)
        batcher.start()
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="twinnet", version=card["twinnet_version"], lifespan=lifespan,
                  description="Siamese matcher: embed records, verify pairs with the calibrated threshold.")

    app.add_middleware(GuardAndLog, keys=keys, settings=settings)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.item)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        item = next((int(p) for p in loc[1:2] if p.isdigit()), None)
        return _error(422, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}", item)

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        batcher = _batcher(app)
        return {"status": "ok", "backend": backend, "passes": batcher.passes,
                "inputs_encoded": batcher.inputs_encoded, "queued": batcher.queue.qsize()}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return card

    @app.post("/v1/embed", response_model=EmbedResponse)
    async def embed(body: EmbedRequest, request: Request) -> dict[str, Any]:
        inputs = _checked_inputs(model, body.inputs, settings, request)
        emb, cut = await _batcher(app).embed(inputs)
        return {"embeddings": emb.tolist(), "dimension": int(emb.shape[1]) if emb.ndim == 2 else 0,
                "truncated": [{"item": i, "tokens_cut": int(c)} for i, c in enumerate(cut) if c > 0]}

    @app.post("/v1/verify", response_model=VerifyResponse)
    async def verify(body: VerifyRequest, request: Request) -> dict[str, Any]:
        request.state.items = len(body.pairs)
        _check_count(len(body.pairs), settings)
        lefts = _checked_inputs(model, [p.left for p in body.pairs], settings, request, side="left")
        rights = _checked_inputs(model, [p.right for p in body.pairs], settings, request, side="right")
        try:
            threshold = model.decision_threshold(body.threshold, fmr=body.fmr)
        except TwinnetError as exc:
            raise ApiError(409 if model.calibration_ is None else 422, str(exc)) from None
        emb, cut = await _batcher(app).embed(lefts + rights)
        n = len(lefts)
        scores = cosine_rows(emb[:n], emb[n:], normalized=model.normalize)
        decisions = model.decide(scores, threshold=threshold)
        truncated = [{"item": i % n, "side": "left" if i < n else "right", "tokens_cut": int(c)}
                     for i, c in enumerate(cut) if c > 0]
        return {"results": [{"same": d.same, "score": d.score,
                             "probability": None if math.isnan(d.probability) else d.probability}
                            for d in decisions],
                "threshold": threshold, "truncated": truncated}

    @app.post("/v1/search", response_model=SearchResponse)
    async def search(body: SearchRequest, request: Request) -> dict[str, Any]:
        if index is None:
            raise ApiError(404, "no index is loaded; start the service with --index DIR")
        if (body.queries is None) == (body.ids is None):
            raise ApiError(422, "give either 'queries' or 'ids'")
        cut: list[int] = []
        if body.ids is not None:
            request.state.items = len(body.ids)
            _check_count(len(body.ids), settings)
            unknown = next((i for i, x in enumerate(body.ids) if x not in index), None)
            if unknown is not None:
                raise ApiError(404, f"id {body.ids[unknown]!r} is not in the index", unknown)
            vectors = index.reconstruct(body.ids)
        else:
            inputs = _checked_inputs(model, body.queries, settings, request)
            vectors, cut = await _batcher(app).embed(inputs)
        found = index.search(vectors, body.k)
        scores = np.nan_to_num(found.scores.ravel()).astype(np.float64)
        probabilities = model.predict_proba_scores(scores).reshape(found.scores.shape)
        results = []
        for q in range(len(found)):
            hits = []
            for j, hit in enumerate(found.hits(q)):
                p = probabilities[q, j]
                meta = None
                if index.metadata is not None and hit["id"] in index.metadata.index:
                    meta = {str(c): v for c, v in index.metadata.loc[hit["id"]].items()}
                hits.append({"id": hit["id"], "score": hit["score"],
                             "probability": None if math.isnan(p) else float(p), "metadata": meta})
            results.append(hits)
        return {"results": results,
                "truncated": [{"item": i, "tokens_cut": int(c)} for i, c in enumerate(cut) if c > 0]}

    return app


class GuardAndLog:
    """Pure ASGI middleware: body-size and API-key checks before the request is read, then one JSON access-log
    line per request. (Starlette's ``@app.middleware("http")`` wraps every response in an extra task and stream,
    which costs a noticeable share of a small request's time.)"""

    def __init__(self, app, *, keys: set[str], settings: ServeSettings) -> None:
        self.app, self.keys, self.settings = app, keys, settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex[:16]
        status = 500

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        refusal = _precheck(scope["path"], headers, self.keys, self.settings)
        try:
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            access_log.info(json.dumps({
                "ts": round(time.time(), 3), "request_id": request_id, "method": scope.get("method"),
                "path": scope["path"], "status": status, "ms": round((time.perf_counter() - started) * 1000, 2),
                "client": client[0] if client else None, "items": scope.get("state", {}).get("items")}))


def _precheck(path: str, headers: dict[str, str], keys: set[str], settings: ServeSettings) -> JSONResponse | None:
    """Body size and API key, answered before the request is read."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        return _error(413, f"request body is {int(length)} bytes; the limit is {settings.max_body_bytes}")
    if keys and path.startswith("/v1/") and path != "/v1/health":
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            return _error(401, "missing or wrong API key (send 'X-API-Key: KEY' or 'Authorization: Bearer KEY')")
    return None


def _batcher(app: FastAPI) -> MicroBatcher:
    """The running micro-batcher; 503 when the app's lifespan has not started it (e.g. a TestClient used
    outside ``with``), rather than an AttributeError deep in a handler."""
    batcher = getattr(app.state, "batcher", None)
    if batcher is None:
        raise ApiError(503, "the service has not started: run it under uvicorn (twinnet serve), or enter "
                            "`with TestClient(app)` so that its startup runs")
    return batcher


def _check_count(count: int, settings: ServeSettings) -> None:
    if count == 0:
        raise ApiError(422, "the request holds no items")
    if count > settings.max_items:
        raise ApiError(413, f"the request holds {count} items; the limit is {settings.max_items} per request")


def _checked_inputs(model: PairScorer, items: Sequence[Any], settings: ServeSettings, request: Request,
                    side: str | None = None) -> list[Any]:
    """Serialise items, naming the first bad one: empty, NaN, lone surrogates, or over the size limit."""
    if side is None:
        request.state.items = len(items)
        _check_count(len(items), settings)
    where = f"{side} of pair" if side else "item"
    for i, item in enumerate(items):
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            if isinstance(value, float) and not math.isfinite(value):
                raise ApiError(422, f"{where} {i} holds {value!r}; values must be finite", i)
            if isinstance(value, str) and any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
                raise ApiError(422, f"{where} {i} holds a lone surrogate (not valid Unicode text)", i)
    try:
        inputs = model.to_inputs(list(items), what=where)
    except TwinnetError as exc:
        message = str(exc)
        index = next((int(tok) for tok in message.split(":")[0].split() if tok.isdigit()), None)
        raise ApiError(422, message, index) from None
    for i, text in enumerate(inputs):
        if isinstance(text, str) and not text.strip():
            raise ApiError(422, f"{where} {i} is empty (after stripping whitespace)", i)
        if isinstance(text, str) and len(text) > settings.max_chars:
            raise ApiError(413, f"{where} {i} has {len(text)} characters; the limit is {settings.max_chars}", i)
    return inputs


def _error(status: int, message: str, item: int | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": status, "message": message}
    if item is not None:
        body["item"] = item
    return JSONResponse({"error": body}, status_code=status)


def _model_card(model: PairScorer, folder: str | os.PathLike[str] | None, backend: str) -> dict[str, Any]:
    from twinnet import __version__

    config = model.config() if hasattr(model, "config") and callable(model.config) else getattr(model, "config_", {})
    calibration = model.calibration_.to_dict() if model.calibration_ is not None else None
    if calibration:
        calibration.pop("validation_curve", None)  # thousands of numbers; the operating point says enough
    readme = Path(folder) / "README.md" if folder else None
    return {"twinnet_version": __version__, "backend": backend, "config": config, "calibration": calibration,
            "training": getattr(model, "card_", {}), "model_card": readme.read_text() if readme and readme.exists()
            else None}


def run(app: FastAPI, *, host: str, port: int, workers_log_level: str = "info") -> None:
    """Serve with uvicorn; SIGINT/SIGTERM stop accepting, finish in-flight requests, then exit."""
    import sys

    import uvicorn

    if not access_log.handlers:  # one JSON object per line on stdout, whatever the root logger does
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_level=workers_log_level,
                                           timeout_graceful_shutdown=30))

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    # uvicorn installs its own SIGINT/SIGTERM handlers only once startup is under way; a signal before that went
    # to asyncio's runner, which cancelled a startup step and left the server running. Until uvicorn's handlers
    # take over, a signal just asks the server to stop (uvicorn checks this right after startup).
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
