"""Item-kNN baseline: score(c) = sum over history events h of cosine(h, c).

    make_reasoner("knn", item_stats=stats)                 # self-similarity excluded
    make_reasoner("knn:include_self=true", item_stats=stats)  # a candidate seen in the history gets +1

cosine(i, j) = cooc[i, j] / sqrt(cooc[i, i] * cooc[j, j]): the cosine between the items' binary user
vectors (columns of the training user x item matrix), i.e. between their co-occurrence patterns.
Repeated history events count once each. Unknown item codes contribute nothing.
"""

from __future__ import annotations

import numpy as np

from minivz.reason.base import ItemStats, Prediction, Query, require_item_stats


class ItemKNNReasoner:
    name = "knn"

    def __init__(self, item_stats: ItemStats | None = None, include_self: bool = False) -> None:
        stats = require_item_stats(item_stats, self.name)
        self.n_items = stats.n_items
        self.include_self = include_self
        diag = stats.cooc_diagonal()
        inv = np.zeros_like(diag)
        np.divide(1.0, np.sqrt(diag), out=inv, where=diag > 0)
        cooc = stats.cooc
        if hasattr(cooc, "multiply"):  # scipy.sparse: D^-1/2 C D^-1/2 stays sparse
            import scipy.sparse as sp

            d = sp.diags(inv)
            sim = (d @ cooc @ d).tocsr()
            if not include_self:
                sim.setdiag(0.0)
                sim.eliminate_zeros()
        else:
            sim = cooc * inv[:, None] * inv[None, :]
            if not include_self:
                np.fill_diagonal(sim, 0.0)
        self.sim = sim

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Element-wise cosine sim(a[k], b[k]) as float64 (K,)."""
        if len(a) == 0:
            return np.zeros(0, dtype=np.float64)
        vals = self.sim[a, b]
        return np.asarray(vals, dtype=np.float64).ravel()

    def predict(self, queries: list[Query]) -> list[Prediction]:
        # One vectorized lookup of all (history, candidate) pairs of the batch, then per-query sums.
        pair_h, pair_c, owner = [], [], []
        for qi, q in enumerate(queries):
            hist = q.history_ids.astype(np.int64)
            hist = hist[(hist >= 0) & (hist < self.n_items)]
            cand = q.candidate_ids.astype(np.int64)
            pair_h.append(np.repeat(hist, len(cand)))
            pair_c.append(np.tile(cand, len(hist)))
            owner.append(np.tile(np.arange(len(cand)), len(hist)))
        h = np.concatenate(pair_h) if pair_h else np.zeros(0, np.int64)
        c = np.concatenate(pair_c) if pair_c else np.zeros(0, np.int64)
        ok = (c >= 0) & (c < self.n_items)
        vals = np.zeros(len(h), dtype=np.float64)
        vals[ok] = self.similarity(h[ok], c[ok])
        out, start = [], 0
        for qi, q in enumerate(queries):
            n = len(pair_h[qi])
            scores = np.bincount(owner[qi], weights=vals[start : start + n], minlength=len(q.candidate_ids))
            start += n
            out.append(Prediction.from_scores(scores.astype(np.float64)))
        return out
