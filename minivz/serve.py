"""HTTP recommendation service: verbalize a history, then rank candidates, in one call.

    minivz serve --reasoner exports/reasoner/model-q4_k_m.gguf --verbalizer template
    minivz serve --reasoner R.gguf --verbalizer exports/verbalizer/model-q8_0.gguf --n-gpu-layers 99
    python -m minivz serve --reasoner R.gguf --port 8000            # the same command as a module

    curl -s localhost:8000/v1/recommend -H 'content-type: application/json' \\
         -d '{"history": [{"ts": "2024-01-03T21:10:00Z", "item": "Heat (1995)", "rating": 5}],
              "candidates": ["Casino (1995)", "Toy Story (1995)"], "k": 2}'

Endpoints: POST /v1/recommend, GET /health, GET /openapi.json, GET /docs.

Why FastAPI + uvicorn and not llama.cpp's own server: a recommendation is two model calls that
must happen together (the verbalizer generates text, then the reasoner scores C candidates by
log-likelihood on a shared KV prefix). llama.cpp's server exposes completion/chat endpoints, so a
client would have to make the verbalizer call, build the reasoner prompt itself and then do C
scoring calls (or one call per candidate with echo logprobs), re-reading the prompt each time and
duplicating minivz's prompt logic in every client. One Python process with minivz's own backends
keeps the exact prompts the models were trained with, reuses the KV prefix, validates input with
strict pydantic models (extra fields, types, bounds, body size -> 4xx, never a crash) and gets an
OpenAPI schema for free. The price is the GIL-bound Python glue (~1 ms per request), small next
to model time.

Concurrency: llama.cpp contexts are not thread-safe, so every model call runs on ONE worker thread
(a single-thread executor: models are also loaded on it); request handlers are async and await
that queue. At most ``max_queue`` requests wait; more get 503. Models load once at startup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Optional, Union

from fastapi import Request  # module level: FastAPI resolves the handlers' annotations here
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from minivz.config import ServeConfig  # noqa: F401 -- the server's settings, re-exported
from minivz.envinfo import passive_omp
from minivz.install import LLAMA_CPP_CUDA

MAX_HISTORY = 200
MAX_CANDIDATES = 100
MAX_TITLE = 300
MAX_GENRES = 20
MAX_BODY_BYTES = 256 * 1024

Title = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE)]
ItemRef = Union[Title, Annotated[int, Field(ge=0)]]  # a title, or an item id


# ---------------------------------------------------------------------------------------------
# Request / response schema (strict: no coercion of "5" to 5, unknown fields rejected)


class Event(BaseModel):
    """One interaction. ``ts``: ISO 8601 string (naive = UTC) or epoch seconds."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # Strict everywhere except the timestamp: FastAPI validates the parsed JSON (Python objects),
    # where a strict datetime would refuse every ISO string.
    ts: Union[Annotated[datetime, Field(strict=False)], Annotated[float, Field(ge=0, le=1e11)]]
    item: ItemRef
    interaction: Optional[Annotated[str, StringConstraints(min_length=1, max_length=32)]] = None
    duration_s: Optional[Annotated[float, Field(ge=0, le=1e7)]] = None
    rating: Optional[Annotated[float, Field(ge=0, le=10)]] = None
    genres: Optional[Annotated[list[Annotated[str, StringConstraints(max_length=64)]],
                               Field(max_length=MAX_GENRES)]] = None
    year: Optional[Annotated[int, Field(ge=1800, le=2200)]] = None


class RecommendRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{
            "history": [{"ts": "1997-12-04T15:55:00Z", "item": "Toy Story", "year": 1995,
                         "interaction": "rate", "rating": 4, "genres": ["Animation", "Comedy"]}],
            "candidates": ["Heat (1995)", "Jumanji (1995)", "Casino (1995)"], "k": 3}]},
    )

    history: Annotated[list[Event], Field(max_length=MAX_HISTORY)]
    candidates: Annotated[list[ItemRef], Field(min_length=1, max_length=MAX_CANDIDATES)]
    k: Annotated[int, Field(ge=1, le=MAX_CANDIDATES)] = 10

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, v: list) -> list:
        if len({str(c) for c in v}) != len(v):
            raise ValueError("candidates must be distinct")
        return v


class RankedItem(BaseModel):
    candidate: Union[str, int]
    score: float  # mean log-probability of the candidate's tokens (higher = more likely next)
    rank: int  # 1 = best


class Timings(BaseModel):
    verbalize_ms: float
    rank_ms: float
    total_ms: float  # model time + time waiting in the queue


class RecommendResponse(BaseModel):
    verbalization: str
    ranking: list[RankedItem]  # the top k, best first
    timings: Timings
    # the reasoner's context window could not hold the whole verbalization: its oldest part was cut
    truncated: bool = False


# ---------------------------------------------------------------------------------------------
# The models


class TooLarge(ValueError):
    """The request would make the reasoner decode more than ``max_request_tokens`` tokens."""


@dataclass
class Ticket:
    """One request's bounds, shared by its handler (sets ``cancelled``) and the model worker (checks)."""

    deadline: float  # time.monotonic()
    cancelled: threading.Event

    def stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline


def _gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class Engine:
    """The loaded verbalizer + reasoner; every method runs on the single worker thread."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.verbalizer = None
        self.reasoner = None
        self.device = "cpu"
        from collections import OrderedDict

        self._texts: OrderedDict[str, str] = OrderedDict()  # history (JSON) -> verbalization, LRU
        self.stats = {"verbalizations_cached": 0, "prompt_tokens": 0, "prompt_tokens_reused": 0}

    def load(self) -> None:
        passive_omp()  # before llama_cpp is first imported
        from minivz.reason.llamacpp import LlamaCppReasoner

        cfg = self.cfg
        gpu = {}
        if cfg.n_gpu_layers:
            if not _gpu_offload_supported():
                print(f"WARNING: --n-gpu-layers {cfg.n_gpu_layers} asked, but this llama-cpp-python build has no "
                      f"GPU backend: every layer runs on the CPU. Rebuild with {LLAMA_CPP_CUDA}", file=sys.stderr)
            else:
                self.device = f"gpu ({cfg.n_gpu_layers} layers offloaded)"
            gpu = {"n_gpu_layers": cfg.n_gpu_layers}
        self.reasoner = LlamaCppReasoner(model=cfg.reasoner, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
                                         n_batch=cfg.n_batch, kv_slots=cfg.kv_slots if cfg.reuse_kv else 0,
                                         item_stats=self._item_stats(), **cfg.scoring_options(), **gpu)
        if cfg.verbalizer.endswith(".gguf"):
            from minivz.verbalize import RewriteVerbalizer

            gen = self._generator_cls()(cfg.verbalizer, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads or None, **gpu)
            self.verbalizer = RewriteVerbalizer(model=cfg.verbalizer, backend="llama", generator=gen,
                                                max_new_tokens=cfg.max_new_tokens, n_ctx=cfg.n_ctx)
        else:
            from minivz.verbalize import make_verbalizer

            self.verbalizer = make_verbalizer(cfg.verbalizer)
        self.warmup()

    def _item_stats(self):
        """The training item statistics the scoring prints (``--data``; None without), and the
        catalog's item texts -> item codes that ``candidate_codes`` looks request titles up in."""
        self._codes: dict[str, int] = {}
        if not self.cfg.data:
            return None
        from minivz.dataset import PreparedData
        from minivz.evaluate import item_stats_for

        data = PreparedData.load(self.cfg.data)
        # a request's candidates are the titles the reasoner was trained on (PreparedData.item_text)
        self._codes = {data.item_text(i): i for i in range(data.n_items)}
        return item_stats_for(data)

    def candidate_codes(self, candidates: list[str]):
        """Item codes of the request's candidate titles (-1 = not in --data's catalog: 0 viewers, no
        match); positions 0..C-1 when the server has no catalog."""
        import numpy as np

        if not self._codes:
            return np.arange(len(candidates))
        return np.array([self._codes.get(c, -1) for c in candidates], dtype=np.int64)

    @staticmethod
    def _generator_cls():
        from minivz.verbalize.generate import LlamaCppGenerator

        return LlamaCppGenerator

    def warmup(self) -> None:
        """One tiny request so the first user request does not pay for lazy initialisation."""
        self.recommend([{"ts": 0.0, "title": "warm up", "interaction": "play"}], ["a", "b"])

    def recommend(self, history: list[dict], candidates: list[str], ticket: Ticket | None = None
                  ) -> tuple[str, list[float], float, float, bool]:
        """(verbalization, scores, verbalize ms, rank ms, context truncated). Raises TooLarge before any
        model work for a request over the token budget, Cancelled when ``ticket`` says stop."""

        from minivz.reason import Query
        from minivz.reason.llamacpp import Cancelled

        if ticket is not None and ticket.stop():
            raise Cancelled("the request's deadline passed while it waited in the queue")
        t0 = time.perf_counter()
        if not self.cfg.reuse_kv:
            self.reasoner.reset()
        text = self._verbalize(history)
        t1 = time.perf_counter()
        q = Query(context=text, candidates=candidates, candidate_ids=self.candidate_codes(candidates))
        cut0 = self.reasoner.n_truncated
        if self.reasoner.answer == "line":  # the candidates listed in the prompt, one decode
            prefix, order, positions = self.reasoner.prepare_lines(q)
            need = len(prefix)
        else:
            prefix, cands = self.reasoner.prepare(q)
            need = len(prefix) + sum(max(len(c) - 1, 0) for c in cands)
        if need > self.cfg.max_request_tokens:
            raise TooLarge(f"this request needs {need} tokens of reasoner work (prompt {len(prefix)} + candidates), "
                           f"over the server's --max-request-tokens {self.cfg.max_request_tokens}: send fewer or "
                           "shorter candidates, or split it")
        self.reasoner.should_stop = ticket.stop if ticket is not None else None
        reused0 = self.reasoner.reused_tokens
        try:  # what predict() does, on the tokens prepared above (prepare once per request)
            scores = (self.reasoner.score_lines(prefix, order, positions) if self.reasoner.answer == "line"
                      else self.reasoner.score_shared(prefix, cands))
        finally:
            self.reasoner.should_stop = None
        self.stats["prompt_tokens"] += len(prefix)
        self.stats["prompt_tokens_reused"] += self.reasoner.reused_tokens - reused0
        truncated = self.reasoner.n_truncated > cut0
        t2 = time.perf_counter()
        return text, [float(s) for s in scores], (t1 - t0) * 1e3, (t2 - t1) * 1e3, truncated

    def _verbalize(self, history: list[dict]) -> str:
        import json

        size = self.cfg.verbalization_cache
        key = json.dumps(history, default=str, sort_keys=True) if size else ""
        if size and key in self._texts:
            self._texts.move_to_end(key)
            self.stats["verbalizations_cached"] += 1
            return self._texts[key]
        text = self.verbalizer.verbalize([history])[0]
        if size:
            self._texts[key] = text
            if len(self._texts) > size:
                self._texts.popitem(last=False)
        return text

    def close(self) -> None:
        if self.reasoner is not None:
            self.reasoner.close()


def _event_dict(e: Event) -> dict:
    ts = e.ts
    if isinstance(ts, datetime):
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
    else:
        ts = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    return {"ts": ts, "title": e.item if isinstance(e.item, str) else None,
            "item_id": e.item if isinstance(e.item, int) else None, "interaction": e.interaction,
            "duration_s": e.duration_s, "rating": e.rating, "genres": e.genres, "year": e.year}


# ---------------------------------------------------------------------------------------------
# The app


class BodySizeLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 (Content-Length or streamed)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        body, more = b"", True
        while more:  # buffer (at most limit + one chunk), then replay to the app
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.limit:
                return await self._reject(send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        import json

        payload = json.dumps({"detail": f"request body larger than {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def create_app(cfg: ServeConfig, engine: Engine | None = None):
    """The FastAPI app; models load in its lifespan (on the worker thread) before it serves."""
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    engine = engine or Engine(cfg)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minivz-model")
    # errors: model failures; too_large: 413 for the token budget; stopped: deadline passed or client gone
    state = {"loaded": False, "started": time.time(), "served": 0, "pending": 0, "errors": 0, "too_large": 0,
             "stopped": 0}
    lock = threading.Lock()  # guards the counters (handlers run on the event loop; belt and braces)

    @asynccontextmanager
    async def lifespan(app):
        t0 = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(worker, engine.load)
        state["loaded"] = True
        print(f"minivz serve: models loaded in {time.perf_counter() - t0:.1f}s on {engine.device}; "
              f"verbalizer={cfg.verbalizer} reasoner={cfg.reasoner}", file=sys.stderr, flush=True)
        yield
        await asyncio.get_running_loop().run_in_executor(worker, engine.close)
        worker.shutdown(wait=True)

    app = FastAPI(title="minivz", version="0.1.0", lifespan=lifespan,
                  description="Verbalize a user's interaction history and rank candidate items with an LLM.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()][:20]
        bad_json = any(e["type"] == "json_invalid" for e in errors)
        body = {"detail": errors}
        if "json" not in request.headers.get("content-type", ""):
            body["hint"] = "send the body as JSON with the header content-type: application/json"
        return JSONResponse(body, status_code=400 if bad_json else 422)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok" if state["loaded"] else "loading", "loaded": state["loaded"],
                "verbalizer": cfg.verbalizer, "reasoner": cfg.reasoner, "device": engine.device,
                "n_gpu_layers": cfg.n_gpu_layers, "uptime_s": round(time.time() - state["started"], 1),
                "requests_served": state["served"], "queued": state["pending"], "errors": state["errors"],
                "too_large": state["too_large"], "stopped": state["stopped"], **engine.stats}

    retry = {"Retry-After": str(max(1, round(cfg.request_timeout_s / 4)))}

    @app.post("/v1/recommend", response_model=RecommendResponse)
    async def recommend(req: RecommendRequest, request: Request) -> RecommendResponse:
        from minivz.reason.llamacpp import Cancelled

        if not state["loaded"]:
            raise HTTPException(503, "models are still loading", headers=retry)
        with lock:
            if state["pending"] >= cfg.max_queue:
                raise HTTPException(503, f"server busy: {state['pending']} requests queued; retry later",
                                    headers=retry)
            state["pending"] += 1
        t0 = time.perf_counter()
        ticket = Ticket(deadline=time.monotonic() + cfg.request_timeout_s, cancelled=threading.Event())
        history = sorted((_event_dict(e) for e in req.history), key=lambda d: d["ts"])  # stable: oldest first
        cands = [str(c) for c in req.candidates]
        try:
            fut = asyncio.get_running_loop().run_in_executor(worker, engine.recommend, history, cands, ticket)
            while not fut.done():  # watch the client while the model works: gone = stop the work
                await asyncio.wait({fut}, timeout=0.2)
                if not fut.done() and await request.is_disconnected():
                    ticket.cancelled.set()
            text, scores, v_ms, r_ms, truncated = fut.result()
        except TooLarge as e:
            state["too_large"] += 1
            raise HTTPException(413, str(e)) from None
        except Cancelled as e:
            state["stopped"] += 1
            raise HTTPException(503, f"request stopped after {time.perf_counter() - t0:.1f} s ({e}); the "
                                f"server's deadline is {cfg.request_timeout_s:g} s per request", headers=retry) from None
        except ValueError as e:  # e.g. candidates too long for the context even with no history
            state["errors"] += 1
            raise HTTPException(422, str(e)) from None
        except Exception as e:  # noqa: BLE001 - a model failure is a 500 for this request, not a dead server
            state["errors"] += 1
            raise HTTPException(500, f"{type(e).__name__}: {e}") from None
        finally:
            with lock:
                state["pending"] -= 1
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: req.k]
        ranking = [RankedItem(candidate=req.candidates[i], score=scores[i], rank=r + 1) for r, i in enumerate(order)]
        state["served"] += 1
        return RecommendResponse(verbalization=text, ranking=ranking, truncated=truncated, timings=Timings(
            verbalize_ms=round(v_ms, 2), rank_ms=round(r_ms, 2), total_ms=round((time.perf_counter() - t0) * 1e3, 2)))

    return BodySizeLimit(app)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

