"""Popularity baseline: score = training interaction count of the candidate.

    make_reasoner("popularity", item_stats=ItemStats.from_sequences(train_sequences, n_items))

Reads only Query.candidate_ids; the text is ignored. Item codes unknown to the stats score 0.
"""

from __future__ import annotations

import numpy as np

from minivz.reason.base import ItemStats, Prediction, Query, require_item_stats


class PopularityReasoner:
    name = "popularity"

    def __init__(self, item_stats: ItemStats | None = None) -> None:
        self.stats = require_item_stats(item_stats, self.name)

    def predict(self, queries: list[Query]) -> list[Prediction]:
        counts = self.stats.counts
        out = []
        for q in queries:
            ids = q.candidate_ids.astype(np.int64)
            known = (ids >= 0) & (ids < self.stats.n_items)
            scores = np.zeros(len(ids), dtype=np.float64)
            scores[known] = counts[ids[known]]
            out.append(Prediction.from_scores(scores))
        return out
