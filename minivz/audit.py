"""Audit of verbalized histories: how much they compress, whether they invent titles, whether they
aggregate repeated episodes. Written per run next to the metrics.

    report = audit_verbalizations(texts, histories, catalog_titles, template_texts)
    report["hallucination_rate"], report["compression_chars"]["p50"]
    row = audit_one(text, history, template_text, TitleMatcher(catalog_titles))   # per sample

Titles are found with ``minivz.reason.mention.TitleMatcher``, the mention oracle's matcher.

Hallucination: a catalog title named in the text (case-insensitive, whole words, titles shorter
than 4 characters ignored) that is not in that user's history. A text-reading oracle can be gamed
by naming likely targets, so this rate is watched and can be penalized in the reward. Titles are
matched in a few spellings: as given, without a trailing ``(YYYY)``, and MovieLens' ``Usual
Suspects, The`` as ``The Usual Suspects``. At one position the longest title wins ("Toy Story 2"
over "Toy Story"). Caveat: one-word titles that are also words ("Heat", "Crash") are matched
wherever the word appears; compare rates between verbalizers, not against zero.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np

from minivz.reason.mention import TitleMatcher, normalize, title_variants

_NUM_WORDS = "two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|\\d+"
_EPISODE_COUNT = re.compile(rf"\b(?:{_NUM_WORDS})\s+(?:\w+\s+){{0,2}}episodes?\b")
_SERIES_WINDOW = 80  # characters around a series mention in which its episode count must appear


_MATCHERS: OrderedDict[tuple, TitleMatcher] = OrderedDict()


def get_matcher(catalog_titles) -> TitleMatcher:
    """A TitleMatcher, built once per catalog (a small cache; pass a TitleMatcher to skip it)."""
    if isinstance(catalog_titles, TitleMatcher):
        return catalog_titles
    key = tuple(catalog_titles)
    if key not in _MATCHERS:
        _MATCHERS[key] = TitleMatcher(list(key))
        while len(_MATCHERS) > 4:
            _MATCHERS.popitem(last=False)
    return _MATCHERS[key]


def history_title_variants(history: list[dict]) -> set[str]:
    out: set[str] = set()
    for e in history:
        for key in ("title", "series_title"):
            if e.get(key):
                out |= title_variants(str(e[key]), e.get("year") if e.get("series_id") is None else None)
    return out


def series_runs(history: list[dict]) -> dict[str, int]:
    """Series title -> longest run of its episodes (consecutive in one session: same ``session``
    and ``run``), for runs of >= 2 events."""
    runs: dict[tuple, int] = {}
    titles: dict[tuple, str] = {}
    for e in history:
        if e.get("series_id") is None:
            continue
        key = (e.get("series_id"), e.get("session"), e.get("run"))
        runs[key] = runs.get(key, 0) + 1
        titles[key] = str(e.get("series_title") or e.get("title") or e.get("series_id"))
    out: dict[str, int] = {}
    for key, n in runs.items():
        if n >= 2:
            out[titles[key]] = max(out.get(titles[key], 0), n)
    return out


def mentions_series_count(text: str, series_title: str) -> bool:
    """Whether ``text`` names ``series_title`` with an episode count nearby ("5 episodes of X",
    "X (three episodes)")."""
    t, s = normalize(text), normalize(series_title)
    if not s:
        return False
    for m in re.finditer(rf"(?<!\w){re.escape(s)}(?!\w)", t):
        window = t[max(0, m.start() - _SERIES_WINDOW): m.end() + _SERIES_WINDOW]
        if _EPISODE_COUNT.search(window):
            return True
    return False


def audit_one(text: str, history: list[dict], template_text: str, matcher: TitleMatcher) -> dict:
    """Per-example audit fields (JSON-ready) for samples.jsonl."""
    text = text or ""
    chars, tokens = len(text), len(text.split())
    t_chars, t_tokens = len(template_text or ""), len((template_text or "").split())
    mentions = matcher.find(text)
    known = history_title_variants(history)
    hallucinated = [m for m in mentions if m not in known]
    runs = series_runs(history)
    aggregated = [s for s in runs if mentions_series_count(text, s)]
    return {
        "chars": chars, "tokens": tokens, "empty": not text.strip(),
        "compression_chars": chars / t_chars if t_chars else None,
        "compression_tokens": tokens / t_tokens if t_tokens else None,
        "title_mentions": len(mentions), "hallucinated_mentions": len(hallucinated),
        "hallucinated_titles": sorted(set(hallucinated)),
        "series_runs": len(runs), "series_aggregated": len(aggregated),
    }


def _dist(values: list) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "p10": None, "p50": None, "p90": None}
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return {"mean": float(v.mean()), "p10": float(p10), "p50": float(p50), "p90": float(p90)}


def audit_verbalizations(texts: list[str], histories: list[list[dict]], catalog_titles,
                         template_texts: list[str], *, return_examples: bool = False) -> dict:
    """Run-level audit. ``catalog_titles``: all item titles (list of str) or a ``TitleMatcher``.

    Keys: ``n``, ``empty_share``; ``chars`` / ``tokens`` (length of the texts) and
    ``compression_chars`` / ``compression_tokens`` (text / template; tokens = whitespace-split),
    each ``{mean, p10, p50, p90}``; ``title_mentions``, ``hallucinated_mentions``,
    ``hallucination_rate`` (= hallucinated / all mentions, None without mentions),
    ``hallucinated_text_share`` (texts with >= 1); ``series_run_texts`` (histories with a run of >= 2
    episodes) and ``series_aggregation_share`` (of those, texts naming the series with a count).
    ``return_examples=True`` adds ``examples``: the ``audit_one`` rows.
    """
    if not (len(texts) == len(histories) == len(template_texts)):
        raise ValueError(f"texts ({len(texts)}), histories ({len(histories)}) and template_texts "
                         f"({len(template_texts)}) must have one entry per example")
    matcher = get_matcher(catalog_titles)
    rows = [audit_one(t, h, tt, matcher) for t, h, tt in zip(texts, histories, template_texts)]
    n = len(rows)
    mentions = sum(r["title_mentions"] for r in rows)
    halluc = sum(r["hallucinated_mentions"] for r in rows)
    with_runs = [r for r in rows if r["series_runs"]]
    report = {
        "n": n,
        "empty_share": sum(r["empty"] for r in rows) / n if n else None,
        "chars": _dist([r["chars"] for r in rows]),
        "tokens": _dist([r["tokens"] for r in rows]),
        "compression_chars": _dist([r["compression_chars"] for r in rows]),
        "compression_tokens": _dist([r["compression_tokens"] for r in rows]),
        "title_mentions": mentions,
        "hallucinated_mentions": halluc,
        "hallucination_rate": halluc / mentions if mentions else None,
        "hallucinated_text_share": sum(r["hallucinated_mentions"] > 0 for r in rows) / n if n else None,
        "series_run_texts": len(with_runs),
        "series_aggregation_share": (sum(r["series_aggregated"] > 0 for r in with_runs) / len(with_runs)
                                     if with_runs else None),
    }
    if return_examples:
        report["examples"] = rows
    return report
