"""The HTTP service end to end: a real uvicorn subprocess on 127.0.0.1, the real SmolLM2 GGUF.

    pytest tests/test_serve.py                 # ~1-2 min on 2 CPU cores
    pytest tests/test_serve.py -m "not slow"   # skips the 50-client and GGUF-verbalizer tests

Every server is started on a free loopback port and terminated in its fixture's finalizer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("llama_cpp")

from minivz.serve import MAX_BODY_BYTES, MAX_CANDIDATES, MAX_HISTORY, is_loopback  # noqa: E402

HISTORY = [
    {"ts": "1997-12-04T15:55:00Z", "item": "Toy Story", "year": 1995, "interaction": "rate", "rating": 4,
     "genres": ["Animation", "Comedy"]},
    {"ts": 881250949, "item": "Heat", "year": 1995, "interaction": "rate", "rating": 5.0,
     "genres": ["Action", "Crime"]},
    {"ts": "1997-12-06 10:00", "item": 1234, "interaction": "play", "duration_s": 5400},
]
CANDIDATES = ["Casino (1995)", "Jumanji (1995)", "GoldenEye (1995)", "Babe (1995)"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(*args: str, timeout: float = 180.0, reasoner: bool = True):
    from minivz.models import default_gguf

    port = _free_port()
    cmd = [sys.executable, "-m", "minivz", "serve", *(["--reasoner", default_gguf()] if reasoner else []),
           "--host", "127.0.0.1", "--port", str(port), "--n-ctx", "1024", "--n-threads", "2", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("loaded"):
                return proc, url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not come up in {timeout}s:\n{proc.stdout.read()}")


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server():
    proc, url = _start_server("--verbalizer", "template")
    yield proc, url
    _stop(proc)


@pytest.fixture(scope="module")
def url(server) -> str:
    return server[1]


def _post(url: str, body, **kw):
    kw.setdefault("timeout", 120)
    return httpx.post(f"{url}/v1/recommend", json=body, **kw)


def test_recommend_ranks_every_candidate(url):
    r = _post(url, {"history": HISTORY, "candidates": CANDIDATES, "k": len(CANDIDATES)})
    assert r.status_code == 200, r.text
    out = r.json()
    ranking = out["ranking"]
    assert sorted(x["candidate"] for x in ranking) == sorted(CANDIDATES)
    scores = [x["score"] for x in ranking]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    assert [x["rank"] for x in ranking] == list(range(1, len(CANDIDATES) + 1))
    lines = out["verbalization"].splitlines()  # template: one line per event, oldest first
    assert len(lines) == 3 and "Toy Story (1995)" in lines[0] and "1234" in lines[2]
    t = out["timings"]
    assert t["total_ms"] >= t["rank_ms"] > 0 and t["verbalize_ms"] >= 0


def test_top_k_ids_and_empty_history(url):
    r = _post(url, {"history": [], "candidates": [7, 8, "Heat (1995)"], "k": 2})
    assert r.status_code == 200, r.text
    ranking = r.json()["ranking"]
    assert len(ranking) == 2 and {type(x["candidate"]) for x in ranking} <= {int, str}
    assert r.json()["verbalization"] == ""


def test_same_request_same_scores(url):
    body = {"history": HISTORY, "candidates": CANDIDATES, "k": 4}
    a, b = _post(url, body).json()["ranking"], _post(url, body).json()["ranking"]
    assert a == b  # the shared-prefix KV cache must not leak state between requests


def test_returning_user_reuses_kv_with_bitwise_equal_scores(url):
    """A user whose history grows by one event per request, interleaved with another user: the
    server reuses the earlier prompts' KV (health counts the reused tokens) and answers exactly what
    a server that re-reads every prompt answers; a repeated history skips the verbalizer."""
    base = [{"ts": 881250000 + 3600 * i, "item": t, "year": 1995, "interaction": "rate", "rating": 4}
            for i, t in enumerate(["Heat", "Casino", "Babe", "Jumanji", "Sabrina", "Clueless", "Twister",
                                   "Fargo", "Evita", "Scream", "Titanic", "Contact", "Alien", "Vertigo"] * 2)]
    other = [dict(e, item=e["item"] + " II") for e in base]
    bodies = [{"history": h[:n], "candidates": CANDIDATES, "k": 4} for n in (20, 24, 28) for h in (base, other)]
    got = [_post(url, b).json()["ranking"] for b in bodies[:2]]  # first visits
    before = httpx.get(f"{url}/health").json()
    got += [_post(url, b).json()["ranking"] for b in bodies[2:] + bodies[-1:]]  # returning users
    after = httpx.get(f"{url}/health").json()
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] > 0.5 * (
        after["prompt_tokens"] - before["prompt_tokens"])
    assert after["verbalizations_cached"] == before["verbalizations_cached"] + 1  # the repeated last body
    proc, fresh_url = _start_server("--verbalizer", "template", "--no-reuse-kv")
    try:
        want = [_post(fresh_url, b).json()["ranking"] for b in bodies]
        assert httpx.get(f"{fresh_url}/health").json()["prompt_tokens_reused"] == 0
    finally:
        _stop(proc)
    assert got[:-1] == want and got[-1] == want[-1]  # scores equal to the last bit


@pytest.mark.parametrize("content", [b"{not json", b'{"history": [], "candidates": ["a"],', b""])
def test_bad_json_is_400(url, content):
    r = httpx.post(f"{url}/v1/recommend", content=content, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert "detail" in r.json()


@pytest.mark.parametrize("body", [
    {"history": HISTORY, "candidates": CANDIDATES, "k": "3"},                           # k as string
    {"history": HISTORY, "candidates": CANDIDATES, "k": 0},                             # k out of bounds
    {"history": "Toy Story", "candidates": CANDIDATES},                                 # not a list
    {"history": [{**HISTORY[0], "rating": "5"}], "candidates": CANDIDATES},             # rating as string
    {"history": [{**HISTORY[0], "rating": 11}], "candidates": CANDIDATES},              # rating out of bounds
    {"history": [{"item": "Heat"}], "candidates": CANDIDATES},                          # missing ts
    {"history": [{**HISTORY[0], "ts": "yesterday"}], "candidates": CANDIDATES},         # bad timestamp
    {"history": HISTORY, "candidates": [True, False]},                                  # bools are not ids
    {"history": HISTORY, "candidates": []},                                             # no candidates
    {"history": HISTORY, "candidates": ["Heat", "Heat"]},                               # duplicates
    {"history": HISTORY, "candidates": ["x" * 301]},                                    # title too long
    {"history": HISTORY},                                                               # missing field
    [1, 2, 3],                                                                          # not an object
])
def test_wrong_types_are_422(url, body):
    r = _post(url, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("body", [
    {"history": HISTORY, "candidates": CANDIDATES, "user": "u1"},
    {"history": [{**HISTORY[0], "colour": "red"}], "candidates": CANDIDATES},
])
def test_unknown_fields_are_422(url, body):
    r = _post(url, body)
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "extra_forbidden"


def test_oversize_history_and_candidates_are_422(url):
    ev = {"ts": 0, "item": "x"}
    assert _post(url, {"history": [ev] * (MAX_HISTORY + 1), "candidates": ["a"]}).status_code == 422
    cands = [f"c{i}" for i in range(MAX_CANDIDATES + 1)]
    assert _post(url, {"history": [ev], "candidates": cands}).status_code == 422


def test_oversize_body_is_413(url):
    big = json.dumps({"history": [], "candidates": ["a"], "pad": "x" * MAX_BODY_BYTES}).encode()
    r = httpx.post(f"{url}/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the limit must hold for a streamed body too
        for _ in range(MAX_BODY_BYTES // 8192 + 2):
            yield b" " * 8192

    r = httpx.post(f"{url}/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


HEAVY = {"history": HISTORY, "candidates": [f"{i:03d} " + "a long made-up title " * 14 for i in range(100)], "k": 1}


def test_heavy_request_is_413_before_any_model_work(url):
    """D6: 100 candidates of ~300 characters (~7,000 reasoner tokens) is over the default budget."""
    t0 = time.monotonic()
    r = _post(url, HEAVY)
    assert r.status_code == 413 and "--max-request-tokens 8192" in r.json()["detail"]
    assert time.monotonic() - t0 < 10
    assert httpx.get(f"{url}/health").json()["too_large"] >= 1


def test_missing_content_type_gets_a_hint(url):
    r = httpx.post(f"{url}/v1/recommend", content=json.dumps({"history": [], "candidates": ["a"]}).encode())
    assert r.status_code == 422 and "content-type: application/json" in r.json()["hint"]


def test_truncated_context_is_flagged(url):
    short = _post(url, {"history": HISTORY, "candidates": CANDIDATES}).json()
    assert short["truncated"] is False
    long = [{"ts": 881250949 + i, "item": f"Movie number {i} " + "with a long title " * 10} for i in range(150)]
    r = _post(url, {"history": long, "candidates": CANDIDATES}).json()
    assert r["truncated"] is True and len(r["ranking"]) == 4


@pytest.mark.slow
def test_deadline_and_client_disconnect_stop_a_heavy_request():
    """D6: a heavy request (allowed by a raised budget) stops at its deadline with 503 + Retry-After, and
    stops at once when its client goes away, so the next light request is answered in seconds."""
    proc, url = _start_server("--verbalizer", "template", "--max-request-tokens", "100000",
                              "--request-timeout", "10")
    try:
        t0 = time.monotonic()
        r = _post(url, HEAVY, timeout=60)
        took = time.monotonic() - t0
        assert r.status_code == 503 and "deadline is 10 s" in r.json()["detail"], r.text
        assert int(r.headers["retry-after"]) >= 1 and 9 < took < 16, took
        with pytest.raises(httpx.ReadTimeout):
            _post(url, HEAVY, timeout=1.0)  # the client gives up after 1 s
        t0 = time.monotonic()
        r = _post(url, {"history": HISTORY, "candidates": CANDIDATES}, timeout=60)
        assert r.status_code == 200 and time.monotonic() - t0 < 6, time.monotonic() - t0
        # one heavy request beside 50 light clients: every client gets an answer (200, or 503 with
        # Retry-After once its own deadline passed) within its deadline plus one request, none hangs
        def light(i: int):
            t = time.monotonic()
            r = _post(url, {"history": HISTORY[: 1 + i % 3], "candidates": CANDIDATES[:2], "k": 1}, timeout=60)
            return r.status_code, "retry-after" in r.headers, time.monotonic() - t

        with ThreadPoolExecutor(max_workers=51) as pool:
            heavy = pool.submit(_post, url, HEAVY, timeout=60)
            time.sleep(0.5)
            answers = list(pool.map(light, range(50)))
            assert heavy.result().status_code == 503
        assert all(code == 200 or (code == 503 and retry) for code, retry, _ in answers), answers
        assert max(t for *_, t in answers) < 10 + 6
        h = httpx.get(f"{url}/health").json()
        assert h["queued"] == 0 and h["errors"] == 0 and h["stopped"] >= 3 and proc.poll() is None
        assert _post(url, {"history": HISTORY, "candidates": CANDIDATES}).status_code == 200
    finally:
        _stop(proc)


def test_bare_serve_runs_the_embedded_default():
    """`minivz serve` with no model flags: the packaged SmolLM2 GGUF as reasoner, the template verbalizer."""
    from minivz.models import default_gguf

    proc, url = _start_server(reasoner=False)
    try:
        h = httpx.get(f"{url}/health").json()
        assert h["reasoner"] == default_gguf() and h["verbalizer"] == "template"
        assert _post(url, {"history": HISTORY, "candidates": CANDIDATES}).status_code == 200
    finally:
        _stop(proc)
    assert "serving the embedded default" in proc.stdout.read()


def test_health_and_openapi(url, server):
    h = httpx.get(f"{url}/health").json()
    assert h["loaded"] is True and h["status"] == "ok" and h["reasoner"].endswith(".gguf")
    assert h["verbalizer"] == "template" and h["uptime_s"] >= 0
    spec = httpx.get(f"{url}/openapi.json").json()
    assert "/v1/recommend" in spec["paths"] and "RecommendRequest" in spec["components"]["schemas"]
    assert httpx.get(f"{url}/docs").status_code == 200
    assert server[0].poll() is None  # all the bad requests above did not kill it


@pytest.mark.slow
def test_50_concurrent_clients(url, server):
    def one(i: int) -> int:
        body = {"history": HISTORY[: 1 + i % 3], "candidates": CANDIDATES[: 2 + i % 3], "k": 2}
        return _post(url, body).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:  # bounded: 50 clients, loopback only
        codes = list(pool.map(one, range(50)))
    assert codes == [200] * 50
    h = httpx.get(f"{url}/health").json()
    assert h["errors"] == 0 and h["queued"] == 0 and server[0].poll() is None


@pytest.mark.slow
def test_gguf_rewrite_verbalizer():
    from minivz.models import default_gguf

    proc, url = _start_server("--verbalizer", default_gguf(), "--max-new-tokens", "16")
    try:
        r = _post(url, {"history": HISTORY, "candidates": CANDIDATES[:3], "k": 3})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["verbalization"].strip() and out["timings"]["verbalize_ms"] > 0
        assert len(out["ranking"]) == 3
        assert httpx.get(f"{url}/health").json()["verbalizer"].endswith(".gguf")
    finally:
        _stop(proc)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")


def test_line_reader_is_served_with_the_run_data_statistics(tmp_path):
    """--reasoner-scoring answer=line,... + --data: the candidates are listed in the prompt with the
    training statistics and each is scored at its own line, exactly as the llamacpp line reader scores
    the same query (same GGUF, same n_batch); unknown titles are listed with 0 viewers."""
    import numpy as np

    pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")
    from minivz.config import DataConfig, resolve
    from minivz.dataset import PreparedData
    from minivz.evaluate import item_stats_for
    from minivz.examples import prepare
    from minivz.reason import Query, make_reasoner

    data_dir = tmp_path / "data"
    prepare(resolve(DataConfig, recipe="tiny-cpu"), data_dir)
    scoring = "answer=line,order=popularity,viewers=true,match=true"
    cands = ["Star Wars (1977)", "Fargo (1996)", "Casino (1995)", "Not A Movie (2042)"]
    bad = subprocess.run([sys.executable, "-m", "minivz", "serve", "--reasoner-scoring", scoring],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--data" in bad.stderr  # the statistics it prints need the data dir
    proc, url = _start_server("--verbalizer", "template", "--reasoner-scoring", scoring, "--data", str(data_dir),
                              "--n-batch", "128")
    try:
        out = _post(url, {"history": HISTORY, "candidates": cands, "k": len(cands)}).json()
    finally:
        _stop(proc)
    got = {x["candidate"]: x["score"] for x in out["ranking"]}
    data = PreparedData.load(data_dir)
    codes = {data.item_text(i): i for i in range(data.n_items)}
    ids = np.array([codes.get(c, -1) for c in cands])
    assert (ids[:3] >= 0).all() and ids[3] == -1
    ref = make_reasoner(f"llamacpp:{scoring},n_ctx=1024,n_batch=128,n_threads=2", item_stats=item_stats_for(data))
    q = Query(context=out["verbalization"], candidates=cands, candidate_ids=ids)
    _, lines, _ = ref.candidate_list.lines(q)
    assert "A. Star Wars (1977) | " in lines and "Not A Movie (2042) | 0 viewers | match" in lines
    want = ref.predict([q])[0].scores
    np.testing.assert_allclose([got[c] for c in cands], want, rtol=0, atol=1e-6)
