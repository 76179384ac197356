"""The candidate list of a choice prompt, and where a line reader reads each candidate's score.

Both LLM backends that list the candidates (``hf`` and ``llamacpp``) write them the same way:

    A. Star Wars (1977) | 583 viewers | match 100
    B. Fargo (1996) | 508 viewers | match 41

``order=popularity`` lists them most popular first (training counts, ties by item code),
``viewers`` / ``genres`` print the training statistics (BIGRec: an LLM reads popularity better than
it learns it), ``match`` the item-kNN similarity to the titles the CONTEXT names (the ``mention``
oracle's reading of the text; 100 = the most similar listed candidate). ``answer=line`` scores
candidate j as log p(READOUT | prompt up to the end of j's line): ``line_ends`` finds those
characters in the rendered prompt and ``token_positions`` the tokens covering them.
"""

from __future__ import annotations

import numpy as np

from minivz.prompt import candidate_labels
from minivz.reason.base import ItemStats, Query

READOUT = " yes"  # answer=line: its log-probability at the end of a candidate's line is the score
ORDERS = ("as-is", "popularity")


def needs_item_stats(order: str = "as-is", viewers: bool = False, genres: bool = False, match: bool = False,
                     **_other) -> bool:
    """Whether a list written with these options reads the training item statistics (any other
    reasoner option in ``_other`` is ignored, so a whole option dict can be passed)."""
    return order == "popularity" or viewers or genres or match


class CandidateList:
    def __init__(self, order: str = "as-is", viewers: bool = False, genres: bool = False, match: bool = False,
                 item_stats: ItemStats | None = None) -> None:
        if order not in ORDERS:
            raise ValueError(f"order={order!r}; use one of {', '.join(ORDERS)}")
        if needs_item_stats(order, viewers, genres, match) and item_stats is None:
            raise ValueError(f"order={order}, viewers={viewers}, genres={genres}, match={match} read the training item "
                             "statistics: build the reasoner with make_reasoner(spec, item_stats=ItemStats...) "
                             "(minivz eval does; minivz serve --run reads RUN/data)")
        if genres and item_stats is not None and item_stats.genres is None:
            raise ValueError("genres=true but the item statistics carry no genres (the catalog has no genres column)")
        self.order, self.viewers, self.genres, self.item_stats = order, viewers, genres, item_stats
        self.matcher = None
        if match:  # item-kNN from the titles the context names (the mention oracle's reading of the text)
            from minivz.reason.mention import MentionReasoner

            self.matcher = MentionReasoner(item_stats=item_stats)

    def lines(self, query: Query) -> tuple[list[int], str, str]:
        """(order, candidate lines, labels) of the prompt's list: ``order[k]`` is the query index of the
        k-th listed candidate (labelled ``candidate_labels(C)[k]``)."""
        ids = query.candidate_ids
        k = np.arange(len(ids))
        stats = self.item_stats
        if self.order == "popularity":  # most popular first; ties by item code (deterministic)
            pop = np.array([stats.counts[i] if 0 <= i < len(stats.counts) else 0.0 for i in ids])
            k = np.lexsort((ids, -pop))
        labels = candidate_labels(len(ids))
        match = None
        if self.matcher is not None:  # 0-100, 100 = the candidate most similar to the titles the text names
            sim = self.matcher.predict([query])[0].scores
            top = float(sim.max()) if len(sim) else 0.0
            match = np.rint(100.0 * sim / top).astype(int) if top > 0 else np.zeros(len(ids), dtype=int)
        out = []
        for lab, j in zip(labels, k):
            text = f"{lab}. {query.candidates[j]}"
            i = int(ids[j])
            known = stats is not None and 0 <= i < stats.n_items
            if self.genres:
                text += " | " + (", ".join(stats.genres[i]) if known and stats.genres[i] else "?")
            if self.viewers:
                text += f" | {int(stats.counts[i]) if known else 0} viewers"
            if match is not None:
                text += f" | match {int(match[j])}"
            out.append(text)
        return [int(j) for j in k], "\n".join(out), ", ".join(labels)


def line_ends(text: str, lines: str, prompt_name: str) -> list[int]:
    """The index in ``text`` (the rendered prompt) of each candidate line's last character; the list
    is the last occurrence of ``lines`` (it follows the context)."""
    start = text.rfind(lines)
    if start < 0:
        raise ValueError(f"prompt {prompt_name}: the candidate lines do not appear verbatim in the "
                         "rendered prompt; answer=line needs {candidates} on lines of its own")
    ends, c = [], start
    for line in lines.split("\n"):
        c += len(line)
        ends.append(c - 1)
        c += 1
    return ends


def token_positions(token_starts, ends: list[int], offset: int = 0) -> list[int]:
    """For each character index in ``ends``, the index of the token covering it, given each token's
    first character (``token_starts``, ascending); ``offset`` tokens come before (a BOS)."""
    starts = np.asarray(token_starts)
    return [offset + int(np.searchsorted(starts, e, side="right")) - 1 for e in ends]
