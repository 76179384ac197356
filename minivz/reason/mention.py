"""Mention oracle: a fast CPU reasoner that READS the text.

    make_reasoner("mention", item_stats=ItemStats.from_sequences(seqs, n_items, titles=catalog_titles))

Titles named in the context are resolved against the catalog (minivz.audit's trie matcher: with or
without the year, "Usual Suspects, The" as "The Usual Suspects"), and candidates are ranked by
item-kNN from those items (minivz.reason.knn). So a verbalization is rewarded for keeping the items
that tell most about the user and dropping the noise, and it gains nothing from the raw log format.
A text naming no catalog title scores every candidate 0: the random floor, under the metrics' tie rule.

Like any text-reading oracle it can be gamed by naming titles that are not in the history (e.g. the
candidates): watch the audit's hallucination rate and penalize it in the reward when training.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from minivz.reason.base import ItemStats, Prediction, Query, require_item_stats
from minivz.reason.knn import ItemKNNReasoner


class MentionReasoner:
    name = "mention"

    def __init__(self, item_stats: ItemStats | None = None, min_chars: int = 4) -> None:
        from minivz.audit import TitleMatcher

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
