"""Named data sources that come out as canonical tables (an ``IngestResult``), no files of ours needed.

How to run::

    from minivz.sources import load_source
    ml = load_source("movielens-100k")                       # real ratings, read from the recbole wheel
    syn = load_source("synthetic-streaming", n_events=1_000_000, seed=1)

Sources (a registry of plain callables, ``SOURCES``):

- ``movielens-100k``: MovieLens-100K as shipped inside ``recbole==1.2.1`` (install it with
  ``pip install --no-deps recbole==1.2.1``). 100,000 ratings, 943 users, 1,682 items; interaction is
  ``"rate"``, ``duration_s`` null, ``rating`` kept as a float64 metadata column; items have title, genres,
  year. Its license forbids redistribution: it is read from the installed package, never copied.
  Half its rows tie on timestamp within a user; the kernels break ties (docs/data.md, "Ties").
- ``synthetic-streaming``: a SYNTHETIC streaming-service log made up by a seeded generator — no real
  users. It exists to exercise what MovieLens lacks: series with seasons/episodes, binge runs, durations,
  and noise (autoplay, previews, abandoned starts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from minivz.events import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    REJECTS_SCHEMA,
    IngestResult,
    check_catalog,
    events_from_table,
)
from minivz.install import RECBOLE, package_dir, pip

__all__ = [
    "SOURCES",
    "load_source",
    "movielens_100k_dir",
    "load_movielens_100k",
    "generate_streaming",
]

# ------------------------------------------------------------------------------------- MovieLens-100K


def movielens_100k_dir() -> Path:
    """The ``dataset_example/ml-100k`` folder of the installed recbole package (found without importing
    recbole itself: its ``__init__`` may pull torch)."""
    install = pip(RECBOLE, no_deps=True)
    missing = f"MovieLens-100K is read from the recbole package, which is not installed; run: {install}"
    return package_dir("recbole", install, missing) / "dataset_example" / "ml-100k"


def load_movielens_100k() -> IngestResult:
    """MovieLens-100K → canonical events (interaction 'rate', rating metadata) and items.

    Events go through the same validation as any log (``events_from_table``); items are built here
    because the ``.item`` genres are space-separated tokens, not '|' lists.
    """
    import pyarrow.csv as pcsv

    folder = movielens_100k_dir()
    inter, item = folder / "ml-100k.inter", folder / "ml-100k.item"
    for f in (inter, item):
        if not f.exists():
            raise FileNotFoundError(
                f"{f} is missing from the installed recbole package; reinstall it: "
                f"{pip(RECBOLE, no_deps=True, reinstall=True)}"
            )

    def read_tsv(path: Path, types: dict) -> pa.Table:
        # recbole atomic files: tab-separated, header "name:type"; no quoting (titles hold apostrophes).
        with open(path, encoding="utf-8") as fh:
            names = [h.split(":")[0] for h in fh.readline().rstrip("\n").split("\t")]
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(skip_rows=1, column_names=names),
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )

    raw = read_tsv(
        inter,
        {"user_id": pa.string(), "item_id": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()},
    )
    events, rej = events_from_table(
        raw, {"ts": "timestamp"}, ts_unit="s", default_interaction="rate"
    )

    it = read_tsv(
        item,
        {"item_id": pa.string(), "movie_title": pa.string(), "release_year": pa.string(), "class": pa.string()},
    )
    # two known quirks: item 267 has year "unkonwn", item 1412 has year "V" → null years
    is_year = pc.fill_null(pc.match_substring_regex(it["release_year"], r"^\d{4}$"), False)
    year = pc.cast(pc.if_else(is_year, it["release_year"], None), pa.int32())
    genres = pc.split_pattern(pc.fill_null(pc.utf8_trim_whitespace(it["class"]), ""), " ")
    genres = pa.array(
        [[g for g in gs if g] for gs in genres.to_pylist()], pa.list_(pa.string())
    )  # 1,682 rows: a comprehension is fine and drops the empty token of a genre-less item
    n = it.num_rows
    items = pa.table(
        {
            "item_id": it["item_id"],
            "title": it["movie_title"],
            "genres": genres,
            "year": year,
            "series_id": pa.nulls(n, pa.string()),
            "season": pa.nulls(n, pa.int32()),
            "episode": pa.nulls(n, pa.int32()),
            "description": pa.nulls(n, pa.string()),
        },
        schema=ITEMS_SCHEMA,
    )
    rows = np.arange(1, raw.num_rows + 1, dtype=np.int64)
    events = check_catalog(events, items, rej, raw, rows).drop_columns(["_pos"])
    rejects = rej.to_table()
    return IngestResult(events, items, rejects, n_read=raw.num_rows, source="movielens-100k")


# --------------------------------------------------------------------------------- synthetic streaming

GENRES = (
    "Drama", "Comedy", "Thriller", "Crime", "Sci-Fi", "Fantasy", "Documentary", "Romance",
    "Horror", "Animation", "Action", "Mystery", "Family", "Reality",
)  # fmt: skip
_ADJ = (
    "Glass", "Silent", "Crimson", "Hollow", "Northern", "Broken", "Golden", "Last", "Hidden", "Iron",
    "Wild", "Quiet", "Burning", "Paper", "Velvet", "Midnight", "Distant", "Frozen", "Electric", "Lost",
    "Bright", "Secret", "Shattered", "Little", "Endless", "Savage", "Gentle", "Restless", "Winter", "Copper",
    "Scarlet", "Sunken", "Wandering", "Pale", "Salt", "Stone", "Blue", "Black", "Summer", "Second",
)  # fmt: skip
_NOUN = (
    "Harbor", "Kingdom", "Signal", "Garden", "Orchard", "Mirror", "Highway", "Circle", "Station", "River",
    "Empire", "Witness", "Frontier", "Archive", "Lantern", "Verdict", "Island", "Summit", "Tide", "Engine",
    "Protocol", "Horizon", "Estate", "Canyon", "Academy", "Colony", "Parish", "Heist", "Dynasty", "Hotel",
    "Tower", "Forest", "Compass", "Letter", "Kitchen", "Courtroom", "Desert", "Machine", "Choir", "Border",
)  # fmt: skip
_ABOUT = (
    "a family hiding an old secret", "rivals forced to work together", "a detective who cannot forget",
    "strangers stranded far from home", "a heist that goes wrong", "first love in a small town",
    "a crew at the edge of the known world", "a city that never sleeps", "a trial that divides a nation",
    "friends chasing one last summer", "a scientist racing the clock", "a kingdom on the brink of war",
)  # fmt: skip


def _catalog(rng: np.random.Generator, n_series: int, n_movies: int, base_year: int = 2024):
    """Series (seasons × episodes, one item per episode) then movies. Returns (items table, info dict).

    Catalog-sized Python loops are fine here (thousands of rows); the per-event work is all NumPy.
    """
    n_genres = len(GENRES)
    # primary genre round-robin then shuffled: every genre has series and movies to draw from
    s_genre = rng.permutation(np.arange(n_series) % n_genres)
    m_genre = rng.permutation(np.arange(n_movies) % n_genres)
    n_seasons = rng.integers(1, 5, n_series)  # 1..4
    eps_per_season = rng.integers(6, 11, n_series)  # 6..10
    s_len = n_seasons * eps_per_season
    s_runtime = rng.choice([1380.0, 1800.0, 2700.0, 3300.0, 3600.0], n_series)  # 23–60 min episodes
    s_year = base_year - rng.integers(0, 15, n_series)
    m_runtime = rng.uniform(80, 150, n_movies) * 60
    m_year = base_year - rng.integers(0, 40, n_movies)

    combos = rng.permutation(len(_ADJ) * len(_NOUN))

    def name(k: int, prefix: str) -> str:
        c = combos[k % combos.size]
        base = f"{prefix}{_ADJ[c // len(_NOUN)]} {_NOUN[c % len(_NOUN)]}"
        return base if k < combos.size else f"{base} {k // combos.size + 1}"

    series_titles = [name(i, "The ") for i in range(n_series)]
    movie_titles = [name(n_series + i, "") for i in range(n_movies)]

    def extra_genres(primary: np.ndarray) -> list[list[str]]:
        k = rng.integers(0, 3, primary.size)  # 0..2 secondary genres
        sec = rng.integers(0, n_genres, (primary.size, 2))
        out = []
        for p, kk, ss in zip(primary, k, sec):
            gs = [GENRES[p]] + [GENRES[x] for x in ss[:kk] if x != p]
            out.append(list(dict.fromkeys(gs)))
        return out

    s_genres = extra_genres(s_genre)
    m_genres = extra_genres(m_genre)
    about = rng.integers(0, len(_ABOUT), n_series + n_movies)

    item_id, title, genres, year, series_id, season, episode, desc, series_title = ([] for _ in range(9))
    first_ep = np.zeros(n_series, np.int64)
    for s in range(n_series):
        first_ep[s] = len(item_id)
        sid = f"ser{s:05d}"
        d = f"A {s_genres[s][0].lower()} series about {_ABOUT[about[s]]}."
        for season_no in range(1, n_seasons[s] + 1):
            for ep in range(1, eps_per_season[s] + 1):
                item_id.append(f"{sid}-s{season_no:02d}e{ep:02d}")
                title.append(f"{series_titles[s]} S{season_no}E{ep}")
                genres.append(s_genres[s])
                year.append(int(s_year[s]) + season_no - 1)
                series_id.append(sid)
                season.append(season_no)
                episode.append(ep)
                desc.append(d)
                series_title.append(series_titles[s])
    n_episodes = len(item_id)
    for m in range(n_movies):
        item_id.append(f"mov{m:05d}")
        title.append(movie_titles[m])
        genres.append(m_genres[m])
        year.append(int(m_year[m]))
        series_id.append(None)
        season.append(None)
        episode.append(None)
        desc.append(f"A {m_genres[m][0].lower()} film about {_ABOUT[about[n_series + m]]}.")
        series_title.append(None)
    items = pa.table(
        {
            "item_id": item_id,
            "title": title,
            "genres": pa.array(genres, pa.list_(pa.string())),
            "year": pa.array(year, pa.int32()),
            "series_id": pa.array(series_id, pa.string()),
            "season": pa.array(season, pa.int32()),
            "episode": pa.array(episode, pa.int32()),
            "description": desc,
        },
        schema=ITEMS_SCHEMA,
    ).append_column("series_title", pa.array(series_title, pa.string()))
    info = dict(
        s_genre=s_genre, m_genre=m_genre, s_len=s_len, s_first=first_ep, s_runtime=s_runtime,
        m_runtime=m_runtime, n_episodes=n_episodes, item_ids=pa.array(item_id, pa.string()),
    )  # fmt: skip
    return items, info


def _by_genre(genre: np.ndarray, n_genres: int):
    """Members grouped by genre: (order, start, count) so member k of genre g is order[start[g] + k]."""
    order = np.argsort(genre, kind="stable")
    count = np.bincount(genre, minlength=n_genres)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return order, start, count


def _pick(rng, groups, g: np.ndarray, skew: float = 2.0) -> np.ndarray:
    """One member of genre g per row, popularity-skewed (u**skew favours the first members)."""
    order, start, count = groups
    k = np.minimum((rng.random(g.size) ** skew * count[g]).astype(np.int64), count[g] - 1)
    return order[start[g] + k]


def _segment_exclusive_cumsum(values: np.ndarray, seg_start: np.ndarray) -> np.ndarray:
    """Per-segment exclusive cumsum; ``seg_start`` is a bool mask marking the first row of each segment."""
    total = np.cumsum(values)
    excl = total - values
    base = np.maximum.accumulate(np.where(seg_start, excl, 0))  # excl at segment start, carried forward
    return excl - base


def generate_streaming(
    n_users: int = 1000,
    n_events: int = 100_000,
    n_series: int = 300,
    n_movies: int = 2000,
    seed: int = 0,
) -> IngestResult:
    """Generate a SYNTHETIC streaming-service log (made-up users and titles; deterministic for a seed).

    Shapes: ``events`` has exactly ``n_events`` rows in the canonical schema (grouped by user, in time
    order within a user — the kernels sort anyway); ``items`` is the catalog (one row per episode and per
    movie, plus a ``series_title`` metadata column); ``rejects`` is empty.

    What is planted (so learned verbalizations have something to find):

    - tastes: each user prefers 3 genres (weights .5/.3/.2; 80% of choices follow them) and follows
      4 series of those genres; 85% of binge runs are of a followed series;
    - activity: users' activity is log-normal (a few heavy users); sessions of 1+ runs (geometric,
      mean 2) that never overlap within a user; a user's sessions span about 120 days;
    - binge runs: consecutive episodes of one series (length geometric, mean 3), continuing where that
      user stopped last time (restarting when the series is done);
    - noise: 40% of binge runs end in an ``autoplay`` of the next episode (5–90 s); previews
      (``preview``, ~30 s, popularity-driven, not taste-driven); abandoned starts (``play`` of 30–600 s,
      8% of movies and of one-episode binge runs);
    - full plays last 85–100% of the runtime (23–60 min episodes, 80–150 min movies).

    Everything per event is vectorized NumPy: 1M events take about a second or two, 10M fit in a few GB.
    """
    if n_users < 1 or n_events < 0 or n_series < 1 or n_movies < 1:
        raise ValueError(
            f"generate_streaming needs n_users, n_series, n_movies >= 1 and n_events >= 0; got "
            f"n_users={n_users}, n_events={n_events}, n_series={n_series}, n_movies={n_movies}"
        )
    rng = np.random.default_rng(seed)
    items, cat = _catalog(rng, n_series, n_movies)
    n_genres = len(GENRES)
    series_groups = _by_genre(cat["s_genre"], n_genres)
    movie_groups = _by_genre(cat["m_genre"], n_genres)

    # users: tastes, followed series, activity
    prefs = np.argsort(rng.random((n_users, n_genres)), axis=1)[:, :3]
    follow_genre = prefs[np.arange(n_users)[:, None], rng.choice(3, (n_users, 4), p=[0.5, 0.3, 0.2])]
    follows = _pick(rng, series_groups, follow_genre.ravel(), skew=1.5).reshape(n_users, 4)
    activity = rng.lognormal(0.0, 1.0, n_users)
    activity /= activity.sum()

    # sessions → runs → events; over-generate, then cut to exactly n_events (below)
    mean_run_len = 0.45 * 3.0 * 1.0 + 0.30 + 0.25  # binge runs are the long ones (≈ geometric mean 3)
    n_sessions = int(np.ceil(n_events / (2.0 * mean_run_len) * 1.3)) + 16
    while True:
        sess_user = np.repeat(np.arange(n_users), rng.multinomial(n_sessions, activity))
        runs_per_sess = rng.geometric(0.5, n_sessions)
        run_sess = np.repeat(np.arange(n_sessions), runs_per_sess)
        n_runs = run_sess.size
        run_user = sess_user[run_sess]
        kind = rng.choice(3, n_runs, p=[0.45, 0.30, 0.25])  # 0 binge, 1 movie, 2 preview
        # taste-driven genre per run (20% anything)
        g = prefs[run_user, rng.choice(3, n_runs, p=[0.5, 0.3, 0.2])]
        g = np.where(rng.random(n_runs) < 0.2, rng.integers(0, n_genres, n_runs), g)
        series = np.where(
            rng.random(n_runs) < 0.85, follows[run_user, rng.integers(0, 4, n_runs)],
            _pick(rng, series_groups, g),
        )  # fmt: skip
        run_len = np.where(kind == 0, rng.geometric(1 / 3.0, n_runs), 1)
        if run_len.sum() >= n_events:
            break
        n_sessions *= 2  # rare: an unlucky draw came up short

    # binge position: continue where this user left this series (segmented over (user, series) in time
    # order — runs are already grouped by user and in session order, so a stable sort keeps time order)
    binge = np.flatnonzero(kind == 0)
    key = run_user[binge].astype(np.int64) * n_series + series[binge]
    o = np.argsort(key, kind="stable")
    ks = key[o]
    first = np.ones(ks.size, bool)
    first[1:] = ks[1:] != ks[:-1]
    watched = np.empty(binge.size, np.int64)
    watched[o] = _segment_exclusive_cumsum(run_len[binge][o], first)
    s_len = cat["s_len"][series[binge]]
    start = watched % s_len
    run_len[binge] = np.minimum(run_len[binge], s_len - start)  # a binge stops at the series finale
    run_start_pos = np.zeros(n_runs, np.int64)
    run_start_pos[binge] = start

    # cut to exactly n_events: keep whole sessions in random order, trim the last kept one
    sess_len = np.bincount(run_sess, weights=run_len, minlength=n_sessions).astype(np.int64)
    perm = rng.permutation(n_sessions)
    cum = np.cumsum(sess_len[perm])
    k = int(np.searchsorted(cum, n_events))  # perm[:k+1] kept; perm[k] trimmed
    quota = np.zeros(n_sessions, np.int64)
    quota[perm[:k]] = sess_len[perm[:k]]
    quota[perm[k]] = n_events - (cum[k - 1] if k > 0 else 0)

    # expand runs → events
    ev_run = np.repeat(np.arange(n_runs), run_len)
    run_first_ev = np.concatenate([[0], np.cumsum(run_len)[:-1]])
    pos_in_run = np.arange(ev_run.size) - run_first_ev[ev_run]
    ev_sess = run_sess[ev_run]
    sess_first_ev = np.concatenate([[0], np.cumsum(sess_len)[:-1]])
    keep = (np.arange(ev_run.size) - sess_first_ev[ev_sess]) < quota[ev_sess]
    ev_run, pos_in_run, ev_sess = ev_run[keep], pos_in_run[keep], ev_sess[keep]
    n = ev_run.size
    assert n == n_events, (n, n_events)
    ev_kind = kind[ev_run]
    ev_user = run_user[ev_run]
    last_in_run = np.ones(n, bool)
    last_in_run[:-1] = ev_run[1:] != ev_run[:-1]

    # items
    item = np.empty(n, np.int64)
    b = ev_kind == 0
    ev_series = series[ev_run[b]]
    item[b] = cat["s_first"][ev_series] + run_start_pos[ev_run[b]] + pos_in_run[b]
    mv = ev_kind == 1
    item[mv] = cat["n_episodes"] + _pick(rng, movie_groups, g[ev_run[mv]])
    pv = ev_kind == 2
    # previews follow the homepage, not the user's taste: popular titles (a movie or a series' pilot)
    n_pv = int(pv.sum())
    pv_series = np.minimum((rng.random(n_pv) ** 3 * n_series).astype(np.int64), n_series - 1)
    pv_movie = np.minimum((rng.random(n_pv) ** 3 * n_movies).astype(np.int64), n_movies - 1)
    item[pv] = np.where(
        rng.random(n_pv) < 0.5, cat["s_first"][pv_series], cat["n_episodes"] + pv_movie
    )

    # interactions and durations
    inter = np.zeros(n, np.int8)  # 0 play, 1 autoplay, 2 preview
    dur = np.empty(n)
    runtime = np.empty(n)
    runtime[b] = cat["s_runtime"][ev_series]
    runtime[mv] = cat["m_runtime"][item[mv] - cat["n_episodes"]]
    dur[:] = runtime * rng.uniform(0.85, 1.0, n)
    # an abandoned start ends its run: a movie, or a binge run of a single episode
    abandon = (mv | (b & (pos_in_run == 0) & last_in_run)) & (rng.random(n) < 0.08)
    dur[abandon] = rng.uniform(30, 600, int(abandon.sum()))
    auto = b & last_in_run & (pos_in_run > 0) & (rng.random(n) < 0.4)
    inter[auto] = 1
    dur[auto] = rng.uniform(5, 90, int(auto.sum()))
    inter[pv] = 2
    dur[pv] = np.clip(rng.normal(30, 6, int(pv.sum())), 5, 60)
    dur = np.round(dur, 1)

    # time: within a session each event starts after the previous one ends plus a gap (longer between
    # runs); a user's sessions follow each other with exponential gaps sized to span ~120 days
    gap = np.where(pos_in_run == 0, rng.uniform(60, 1800, n), rng.uniform(5, 120, n))
    sess_start_ev = np.ones(n, bool)
    sess_start_ev[1:] = ev_sess[1:] != ev_sess[:-1]
    gap[sess_start_ev] = 0.0  # a session starts at its own t0
    offset = _segment_exclusive_cumsum(dur + gap, sess_start_ev) + gap  # Σ_{j<i} dur_j + Σ_{j<=i} gap_j
    kept_sess = np.flatnonzero(quota > 0)  # in session id order = grouped by user
    span = np.bincount(ev_sess, weights=dur + gap, minlength=n_sessions)
    s_user = sess_user[kept_sess]
    per_user = np.bincount(s_user, minlength=n_users)
    mean_gap = 120 * 86400.0 / np.maximum(per_user[s_user], 1)
    step = span[kept_sess] + rng.exponential(1.0, kept_sess.size) * mean_gap
    u_first = np.ones(kept_sess.size, bool)
    u_first[1:] = s_user[1:] != s_user[:-1]
    origin = 1_704_067_200.0 + rng.uniform(0, 30 * 86400.0, n_users)  # 2024-01-01 + up to 30 days
    sess_t0 = np.zeros(n_sessions)
    sess_t0[kept_sess] = origin[s_user] + _segment_exclusive_cumsum(step, u_first)
    ts_us = np.round((sess_t0[ev_sess] + offset) * 1e6).astype(np.int64)

    # Arrow columns: small dictionaries decoded in C++, not Python strings per event
    user_dict = pa.array([f"u{u:06d}" for u in range(n_users)], pa.string())
    events = pa.table(
        {
            "user_id": _decode(ev_user, user_dict),
            "ts": pa.array(ts_us, pa.int64()).cast(EVENTS_SCHEMA.field("ts").type),
            "item_id": _decode(item, cat["item_ids"]),
            "interaction": _decode(inter, pa.array(["play", "autoplay", "preview"], pa.string())),
            "duration_s": pa.array(dur, pa.float64()),
        },
        schema=EVENTS_SCHEMA,
    )
    return IngestResult(
        events=events,
        items=items,
        rejects=REJECTS_SCHEMA.empty_table(),
        n_read=n,
        source="synthetic-streaming (synthetic)",
    )


def _decode(codes: np.ndarray, dictionary: pa.Array) -> pa.Array:
    idx = pa.array(codes.astype(np.int32))
    return pa.DictionaryArray.from_arrays(idx, dictionary).cast(pa.string())


# ------------------------------------------------------------------------------------------ registry

SOURCES = {
    "movielens-100k": load_movielens_100k,
    "synthetic-streaming": generate_streaming,
}


def load_source(name: str, **options) -> IngestResult:
    """Load a named source; ``options`` go to its callable (e.g. ``n_events=``, ``seed=`` for synthetic)."""
    try:
        fn = SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))} "
            "(or ingest your own log with minivz.events.read_log)"
        ) from None
    return fn(**options)
