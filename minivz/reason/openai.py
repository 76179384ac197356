"""Choice reasoner over any OpenAI-compatible chat endpoint (llama.cpp server, vLLM, a hosted API).

    make_reasoner("openai:url=http://127.0.0.1:8080/v1,model=x,timeout=30")
    make_reasoner("openai:url=https://api.openai.com/v1,model=gpt-4o-mini,constrain=none,top_logprobs=20")

This is how the "strong oracle" of the paper is plugged in. Each query becomes one chat request
(prompt ``reasoner_choice_v1``: the context, the candidates labelled A, B, C, ... (1, 2, ... past
26), "answer with one label"), temperature 0, a couple of output tokens.

Constrained output (``constrain=``):
  auto     both of the next two (the default): llama.cpp's server reads ``grammar`` and ignores
           ``structured_outputs``; vLLM reads ``structured_outputs`` and ignores ``grammar`` (its
           request models allow extra fields and log them), so one spec works on either engine
  grammar  a GBNF grammar ``root ::= "A" | "B" | ...`` (llama.cpp server, llama-cpp-python server)
  choice   ``structured_outputs: {"choice": [...]}`` (vLLM >= 0.10)
  none     plain instruction only (hosted APIs that reject unknown fields)

Thinking: ``chat_template_kwargs: {"enable_thinking": false}`` is sent (vLLM and llama.cpp's server
pass it to the chat template), so a Qwen3 oracle answers with the label instead of opening a
``<think>`` block that a 2-token budget never gets past; ``thinking=true`` leaves it on (then raise
max_tokens), ``constrain=none`` sends neither field.

Scores: with ``logprobs=true`` the first answer token's top_logprobs give score[k] = log p(label k)
(-inf for labels absent from the top list). Without them the parsed answer scores 1, others 0.
An answer that is not a label gives valid=False, choice=-1 (scores then hold whatever logprobs came).

Transport: httpx, ``timeout`` seconds per request, retries with exponential backoff
(``backoff * 2**attempt``, or the server's Retry-After capped at 30 s) on connection errors,
timeouts, HTTP 5xx and 429, up to ``max_retries`` and within ``deadline`` seconds per request; other
HTTP errors fail at once. This is the only retry layer for HTTP oracles (GRPO's reward does not retry
a ReasonerError again). A batch runs on ``concurrency`` threads; when some of its queries fail, the
others' answers are kept (``PartialPredictions``).
``Authorization: Bearer $OPENAI_API_KEY`` is sent when that variable is set.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minivz.install import pip
from minivz.reason.base import PartialPredictions, Prediction, Query, ReasonerError
from minivz.prompt import DEFAULT_CHOICE_PROMPT, candidate_labels, load_prompt

CONSTRAINTS = ("auto", "grammar", "choice", "none")
MAX_RETRY_AFTER_S = 30.0  # a server asking for longer waits at most this per attempt
_ANSWER = re.compile(r"^\W*([A-Za-z]|\d+)(?![A-Za-z0-9])")


def parse_answer(text: str | None, labels: list[str]) -> int:
    """Index of the label the text answers with, -1 when it is not one of them."""
    m = _ANSWER.match(text or "")
    if not m:
        return -1
    ans = m.group(1).upper()
    return labels.index(ans) if ans in labels else -1


def label_scores(logprobs: dict | None, labels: list[str]) -> np.ndarray | None:
    """Per-label log-probabilities from an OpenAI ``choices[0].logprobs`` object, or None.

    Uses the first generated token that is not whitespace; token variants (" A", "a") of one label
    are combined with logaddexp. Labels missing from the top list get -inf."""
    content = (logprobs or {}).get("content") or []
    first = next((t for t in content if (t.get("token") or "").strip()), None)
    if first is None:
        return None
    entries = list(first.get("top_logprobs") or []) + [first]
    scores = np.full(len(labels), -np.inf)
    seen: set[str] = set()
    for e in entries:
        tok, lp = (e.get("token") or ""), e.get("logprob")
        if lp is None or tok in seen:
            continue
        seen.add(tok)
        key = tok.strip().upper()
        if key in labels:
            k = labels.index(key)
            scores[k] = np.logaddexp(scores[k], float(lp))
    return scores if np.isfinite(scores).any() else None


class OpenAIReasoner:
    name = "openai"

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080/v1",
        model: str = "",
        timeout: float = 60.0,
        max_retries: int = 3,
        deadline: float = 180.0,
        backoff: float = 0.5,
        concurrency: int = 4,
        constrain: str = "auto",
        logprobs: bool = True,
        top_logprobs: int = 10,
        max_tokens: int = 2,
        temperature: float = 0.0,
        prompt: str = DEFAULT_CHOICE_PROMPT,
        thinking: bool = False,
    ) -> None:
        try:
            import httpx
        except ImportError as e:
            raise ImportError(
                f"the openai reasoner needs httpx ({e}); install with `{pip('httpx')}`"
            ) from e
        if constrain not in CONSTRAINTS:
            raise ValueError(f"constrain={constrain!r}; use one of {', '.join(CONSTRAINTS)}")
        if max_retries < 0 or concurrency < 1:
            raise ValueError("max_retries must be >= 0 and concurrency >= 1")
        self._httpx = httpx
        self.url = url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.deadline = float(deadline)  # seconds for one request, all attempts and waits together
        self.backoff = backoff
        self.concurrency = concurrency
        self.constrain = constrain
        self.thinking = thinking
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.template = load_prompt(prompt, "reasoner")
        headers = {}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        self._client = httpx.Client(timeout=timeout, headers=headers)

    # -- transport ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        httpx, url = self._httpx, f"{self.url}{path}"
        last = ""
        t_end = time.monotonic() + self.deadline
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * 2**attempt
            try:
                r = self._client.request(method, url, json=payload)
            except httpx.TransportError as e:  # connect/read errors and timeouts
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 429 or r.status_code >= 500:
                    last = f"HTTP {r.status_code}: {r.text[:300]}"
                    retry_after = r.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():  # honoured, but capped
                        delay = min(float(retry_after), MAX_RETRY_AFTER_S)
                elif r.status_code >= 400:
                    raise ReasonerError(f"openai: {method} {url} -> HTTP {r.status_code}: {r.text[:500]}")
                else:
                    try:
                        return r.json()
                    except ValueError:  # a proxy's HTML page, a truncated body: retried like a 5xx
                        last = f"HTTP {r.status_code} but the body is not JSON: {r.text[:200]!r}"
            if attempt < self.max_retries:
                if time.monotonic() + delay >= t_end:
                    last += f" (stopped: the {self.deadline:g} s deadline would pass)"
                    break
                time.sleep(delay)
        raise ReasonerError(
            f"openai: {method} {url} failed after {attempt + 1} attempts "
            f"(max_retries={self.max_retries}, deadline={self.deadline:g} s); last error: {last}. "
            f"Is the server running at {self.url}?"
        )

    def resolve_model(self) -> str:
        """The model name to send: ``model=`` or the first one the server lists at /models."""
        if not self.model:
            data = self._request("GET", "/models").get("data") or []
            if not data:
                raise ReasonerError(f"openai: {self.url}/models lists no model; pass model=NAME")
            self.model = data[0]["id"]
        return self.model

    # -- one query ------------------------------------------------------------------------------

    def request_body(self, query: Query) -> tuple[dict, list[str]]:
        labels = candidate_labels(len(query.candidates))
        cand_lines = "\n".join(f"{lab}. {text}" for lab, text in zip(labels, query.candidates))
        body: dict = {
            "model": self.model,
            "messages": self.template.messages(
                context=query.context, candidates=cand_lines, labels=", ".join(labels)
            ),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if self.constrain in ("auto", "grammar"):
            body["grammar"] = "root ::= " + " | ".join(f'"{lab}"' for lab in labels)
        if self.constrain in ("auto", "choice"):
            body["structured_outputs"] = {"choice": labels}
        if self.constrain != "none" and not self.thinking:
            body["chat_template_kwargs"] = {"enable_thinking": False}
        return body, labels

    def predict_one(self, query: Query) -> Prediction:
        body, labels = self.request_body(query)
        resp = self._request("POST", "/chat/completions", body)
        try:
            choice0 = resp["choices"][0]
            text = (choice0.get("message") or {}).get("content")
        except (KeyError, IndexError, TypeError):
            raise ReasonerError(f"openai: malformed response (no choices[0].message): {str(resp)[:300]}")
        picked = parse_answer(text, labels)
        scores = label_scores(choice0.get("logprobs"), labels) if self.logprobs else None
        if scores is None:
            scores = np.zeros(len(labels))
            if picked >= 0:
                scores[picked] = 1.0
        return Prediction(scores=scores.astype(np.float64), choice=picked, valid=picked >= 0)

    def predict(self, queries: list[Query]) -> list[Prediction]:
        if not queries:
            return []
        self.resolve_model()
        if len(queries) == 1:
            return [self.predict_one(queries[0])]

        def one(q):
            try:
                return self.predict_one(q), None
            except ReasonerError as e:  # already retried at the transport: keep the others' answers
                return None, e

        if self.concurrency == 1:
            got = [one(q) for q in queries]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries))) as pool:
                got = list(pool.map(one, queries))
        errors = [e for _, e in got if e is not None]
        if errors:
            raise PartialPredictions(f"{len(errors)} of {len(queries)} queries failed; first: {errors[0]}",
                                     [p for p, _ in got])
        return [p for p, _ in got]

    def close(self) -> None:
        self._client.close()

