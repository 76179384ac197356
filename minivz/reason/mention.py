"""Mention oracle: a fast CPU reasoner that READS the text.

    make_reasoner("mention", item_stats=ItemStats.from_sequences(seqs, n_items, titles=catalog_titles))

Titles named in the context are resolved against the catalog (``TitleMatcher``, one trie regex, also
used by minivz.audit: with or without the year, "Usual Suspects, The" as "The Usual Suspects"), and
candidates are ranked by item-kNN from those items (minivz.reason.knn). So a verbalization is
rewarded for keeping the items that tell most about the user and dropping the noise, and it gains
nothing from the raw log format.
A text naming no catalog title scores every candidate 0: the random floor, under the metrics' tie rule.

Like any text-reading oracle it can be gamed by naming titles that are not in the history (e.g. the
candidates): watch the audit's hallucination rate and penalize it in the reward when training.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from minivz.reason.base import ItemStats, Prediction, Query, require_item_stats
from minivz.reason.knn import ItemKNNReasoner

_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_ARTICLE = re.compile(r"^(.*),\s*(the|a|an|les|la|le|il|el|das|der|die)$", re.IGNORECASE)
_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, single spaces, ’ as ': the form in which titles are matched."""
    return _WS.sub(" ", text.replace("\u2019", "'").lower()).strip()


def title_variants(title: str, year: int | None = None) -> set[str]:
    """Normalized spellings of one title (lowercase, single spaces)."""
    t = normalize(title)
    out = {t}
    bare = _YEAR.sub("", t).strip()
    out.add(bare)
    m = _ARTICLE.match(bare)
    if m:
        out.add(f"{m.group(2)} {m.group(1)}".strip())
    if year is not None:
        out |= {f"{v} ({int(year)})" for v in list(out)}
    return {v for v in out if v}


def _trie_pattern(words: list[str]) -> str:
    """A regex matching exactly ``words``, shaped as a character trie so the engine does one
    branch per character instead of trying thousands of alternatives at every position."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True  # end of a word

    def build(node: dict) -> str:
        end = "" in node
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch != ""]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        # Greedy optional: the longer title is tried first, the shorter one is the fallback.
        return (f"(?:{body})?" if len(alts) > 1 or len(alts[0]) > 1 else f"{body}?") if end else body

    return build(trie)


class TitleMatcher:
    """Finds catalog titles in text: one compiled trie regex over all spellings of all titles."""

    def __init__(self, catalog_titles: list[str], min_chars: int = 4) -> None:
        self.min_chars = min_chars
        self.variant_to_titles: dict[str, set[int]] = {}
        for i, t in enumerate(catalog_titles):
            if t is None:
                continue
            for v in title_variants(str(t)):
                if len(v) >= min_chars:
                    self.variant_to_titles.setdefault(v, set()).add(i)
        self.catalog_titles = list(catalog_titles)
        words = sorted(self.variant_to_titles)
        # (?<!\w) / (?!\w) rather than \b: titles may start or end with punctuation, "(1995)".
        self._re = re.compile(rf"(?<!\w)(?:{_trie_pattern(words)})(?!\w)") if words else None

    def find(self, text: str) -> list[str]:
        """Normalized title spellings mentioned in ``text``, in order (non-overlapping)."""
        if self._re is None or not text:
            return []
        return [m.group(0) for m in self._re.finditer(normalize(text))]


class MentionReasoner:
    name = "mention"

    def __init__(self, item_stats: ItemStats | None = None, min_chars: int = 4) -> None:
        stats = require_item_stats(item_stats, self.name)
        if stats.titles is None:
            raise ValueError("the mention oracle needs catalog titles: ItemStats.from_sequences(..., titles=...) "
                             "(minivz.evaluate.item_stats_for(data) fills them)")
        self.knn = ItemKNNReasoner(item_stats=stats)
        self.matcher = TitleMatcher(stats.titles, min_chars=min_chars)
        self.n_unresolved = 0  # contexts that named no catalog title

    def mentioned(self, text: str) -> np.ndarray:
        """Item codes of the catalog titles named in ``text`` (in order of mention)."""
        codes: list[int] = []
        for v in self.matcher.find(text):
            codes.extend(sorted(self.matcher.variant_to_titles.get(v, ())))
        return np.asarray(codes, dtype=np.int32)

    def predict(self, queries: list[Query]) -> list[Prediction]:
        resolved = []
        for q in queries:
            ids = self.mentioned(q.context)
            self.n_unresolved += int(len(ids) == 0)
            resolved.append(replace(q, history_ids=ids))
        return self.knn.predict(resolved)
