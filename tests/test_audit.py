"""Audit of verbalizations: compression, hallucinated titles, series aggregation."""

import json
import random
import string
import time
from datetime import datetime, timezone

import pytest

from minivz.audit import audit_one, audit_verbalizations, mentions_series_count, series_runs
from minivz.reason.mention import TitleMatcher, title_variants

CATALOG = ["Toy Story (1995)", "Toy Story 2 (1999)", "Usual Suspects, The (1995)", "Heat (1995)",
           "Up (2009)", "Fargo (1996)", "Stranger Things", "Dark"]


def ev(title, year=None, **kw):
    base = {"ts": datetime(1997, 12, 4, tzinfo=timezone.utc), "item_id": title, "item_idx": 0, "title": title,
            "year": year, "genres": [], "interaction": "rate", "duration_s": None, "series_id": None,
            "season": None, "episode": None, "session": 0, "run": 0}
    base.update(kw)
    return base


def episode(n, session=0, run=0, title="Stranger Things"):
    return ev(title, series_id="st", season=1, episode=n, session=session, run=run, interaction="play")


def test_title_variants():
    assert title_variants("Usual Suspects, The (1995)") >= {"usual suspects, the (1995)", "usual suspects, the",
                                                             "the usual suspects"}
    assert "toy story (1995)" in title_variants("Toy Story", year=1995)


def test_matcher_whole_words_longest_and_short_titles():
    m = TitleMatcher(CATALOG)
    assert m.find("Loved TOY STORY 2 and toy  story, also The Usual Suspects.") == [
        "toy story 2", "toy story", "the usual suspects"]
    assert m.find("heated debate about heath") == []          # whole words only
    assert m.find("Heat!") == ["heat"]
    assert m.find("Up, up and away") == []                     # "Up" < 4 characters: ignored
    assert m.find("Toy Story (1995) again") == ["toy story (1995)"]
    assert m.find("") == [] and TitleMatcher([]).find("Toy Story") == []


def test_hallucination_counts():
    hist = [ev("Toy Story", 1995), ev("Usual Suspects, The", 1995)]
    text = "Likes Toy Story and The Usual Suspects; would enjoy Fargo and Heat."
    row = audit_one(text, hist, "x " * 10, TitleMatcher(CATALOG))
    assert row["title_mentions"] == 4 and row["hallucinated_mentions"] == 2
    assert row["hallucinated_titles"] == ["fargo", "heat"]
    rep = audit_verbalizations([text, "Toy Story (1995)"], [hist, hist], CATALOG,
                               ["a b c d", "Toy Story (1995)"], return_examples=True)
    assert rep["title_mentions"] == 5 and rep["hallucinated_mentions"] == 2
    assert rep["hallucination_rate"] == pytest.approx(2 / 5)
    assert rep["hallucinated_text_share"] == pytest.approx(0.5)
    assert len(rep["examples"]) == 2
    json.dumps(rep)


def test_compression_and_empty():
    hist = [ev("Toy Story", 1995)]
    tmpl = ["0123456789 0123456789", "abcd efgh", "abcd"]
    texts = ["01234 6789", "", "abcd abcd"]
    rep = audit_verbalizations(texts, [hist] * 3, CATALOG, tmpl)
    assert rep["empty_share"] == pytest.approx(1 / 3)
    # chars: 10/21, 0/9, 9/4 ; tokens: 2/2, 0/2, 2/1
    assert rep["compression_chars"]["p50"] == pytest.approx(10 / 21)
    assert rep["compression_chars"]["mean"] == pytest.approx((10 / 21 + 0 + 9 / 4) / 3)
    assert rep["compression_tokens"]["mean"] == pytest.approx((1 + 0 + 2) / 3)
    assert rep["chars"]["p50"] == 9
    assert rep["hallucination_rate"] is None  # no mentions at all
    row = audit_one("abc", hist, "", TitleMatcher(CATALOG))
    assert row["compression_chars"] is None


def test_series_runs_and_aggregation():
    hist = [episode(1), episode(2), episode(3), ev("Dark", series_id="dk", season=1, episode=1, session=1, run=0),
            episode(4, session=2, run=0)]
    assert series_runs(hist) == {"Stranger Things": 3}
    assert mentions_series_count("Binged 3 episodes of Stranger Things.", "Stranger Things")
    assert mentions_series_count("Stranger Things (three episodes)", "Stranger Things")
    assert not mentions_series_count("Watched Stranger Things a lot.", "Stranger Things")
    assert not mentions_series_count("Stranger Things. " + "x" * 200 + " 3 episodes of Dark", "Stranger Things")
    texts = ["Watched 3 episodes of Stranger Things", "Stranger Things S1E1, Stranger Things S1E2",
             "Toy Story"]
    hists = [hist, hist, [ev("Toy Story", 1995)]]
    rep = audit_verbalizations(texts, hists, CATALOG, ["x"] * 3)
    assert rep["series_run_texts"] == 2
    assert rep["series_aggregation_share"] == pytest.approx(0.5)
    # series names seen in the history are not hallucinations
    assert rep["hallucinated_mentions"] == 0


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="one entry per example"):
        audit_verbalizations(["a"], [], CATALOG, ["a"])


def test_scales_to_catalog_and_many_texts():
    rnd = random.Random(0)
    words = ["".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 9))) for _ in range(3000)]
    titles = [" ".join(rnd.choices(words, k=rnd.randint(1, 4))).title() + f" ({rnd.randint(1930, 1998)})"
              for _ in range(1700)]
    texts = [" ".join(rnd.choices(words, k=200)) for _ in range(2000)]
    hists = [[ev(titles[i % 1700])] for i in range(2000)]
    t0 = time.perf_counter()
    rep = audit_verbalizations(texts, hists, titles, texts)
    assert time.perf_counter() - t0 < 10
    assert rep["n"] == 2000 and rep["compression_chars"]["mean"] == pytest.approx(1.0)
