"""The paper's baseline verbalization: one line per interaction, log fields concatenated.

    >>> template_line({"ts": datetime(1997, 12, 4, 15, 55, tzinfo=timezone.utc), "interaction": "rate",
    ...                "title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"], "rating": 4.0})
    '1997-12-04 15:55 | rate | Toy Story (1995) | Animation, Comedy | 4.0 stars'

Streaming events render as ``2024-01-03 21:10 | play | Stranger Things S1E1 | Drama | 2840s``.
Deterministic, pure Python; the LLM verbalizers read this text as their input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

_YEAR_SUFFIX = re.compile(r"\(\d{4}\)\s*$")


def format_ts(ts: Any) -> str:
    """Render a timestamp as ``YYYY-MM-DD HH:MM`` (UTC).

    Accepts ``datetime`` (naive is taken as UTC), pandas ``Timestamp``, ``numpy.datetime64`` and
    epoch seconds (int/float); ``None`` renders as ``?``.
    """
    if ts is None:
        return "?"
    if isinstance(ts, (int, float)):
        ts = datetime.fromtimestamp(float(ts), tz=timezone.utc)
    elif not isinstance(ts, datetime):
        if hasattr(ts, "to_pydatetime"):  # pandas Timestamp
            ts = ts.to_pydatetime()
        elif type(ts).__name__ == "datetime64":  # numpy, without importing numpy here
            ts = datetime.fromtimestamp(ts.astype("datetime64[s]").astype("int64").item(), tz=timezone.utc)
        else:
            return str(ts)
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc)
    return ts.strftime("%Y-%m-%d %H:%M")


def display_title(event: dict, *, with_year: bool = True) -> str:
    """Title as a person would write it: ``Toy Story (1995)`` or ``Stranger Things S1E1``.

    Episodes get ``S{season}E{episode}`` and no year (the year of a series says little); a title that
    already ends in ``(YYYY)`` (some MovieLens exports) is not given a second year.
    """
    title = str(event.get("title") or event.get("item_id") or "?").strip()
    season, episode = event.get("season"), event.get("episode")
    if event.get("series_id") is not None or episode is not None:
        tag = ""
        if season is not None:
            tag += f"S{int(season)}"
        if episode is not None:
            tag += f"E{int(episode)}"
        return f"{title} {tag}" if tag and not title.endswith(tag) else title
    year = event.get("year")
    if with_year and year is not None and not _YEAR_SUFFIX.search(title):
        return f"{title} ({int(year)})"
    return title


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and x != x)  # NaN from Arrow/pandas nulls


def template_line(event: dict) -> str:
    """One interaction as ``ts | interaction | title | genres | duration | rating``.

    Empty fields are left out (MovieLens has no duration, the synthetic log may have no rating),
    so every field that is shown carries information.
    """
    parts = [format_ts(event.get("ts")), str(event.get("interaction") or "?"), display_title(event)]
    genres = event.get("genres")
    if genres is not None and len(genres) > 0:
        parts.append(", ".join(str(g) for g in genres))
    duration = event.get("duration_s")
    if not _is_missing(duration):
        parts.append(f"{float(duration):.0f}s")
    rating = event.get("rating")
    if not _is_missing(rating):
        parts.append(f"{float(rating):.1f} stars")
    return " | ".join(parts)


def template_text(history: list[dict], max_events: int | None = None) -> str:
    """The whole history, oldest first, one ``template_line`` per event (the most recent ``max_events``)."""
    if max_events is not None:
        history = history[-max_events:] if max_events > 0 else []
    return "\n".join(template_line(e) for e in history)


@dataclass
class TemplateVerbalizer:
    """Baseline verbalizer. ``make_verbalizer("template:max_events=20")``."""

    max_events: int | None = None
    name: str = "template"
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_events is not None and self.max_events < 1:
            raise ValueError(f"max_events={self.max_events} must be >= 1 (or unset for the whole history)")
        self.stats = {"histories": 0, "events": 0}

    @property
    def metadata(self) -> dict:
        return {"verbalizer": self.name, "max_events": self.max_events}

    def verbalize(self, histories: list[list[dict]]) -> list[str]:
        out = [template_text(h, self.max_events) for h in histories]
        self.stats["histories"] += len(histories)
        self.stats["events"] += sum(len(h) if self.max_events is None else min(len(h), self.max_events)
                                    for h in histories)
        return out
