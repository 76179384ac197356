"""The ``minivz`` command line (typer + rich).

    minivz data prepare --source movielens-100k --out data/ml100k
    minivz data prepare --input log.csv --map user_id=uid,item_id=movie,ts=time --out data/mine
    minivz data show data/ml100k --split test -n 2
    minivz env

Importing this module imports no torch: each command imports what it needs.
Usage errors exit 2 with one clear line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="minivz",
    help="Learn how to verbalize interaction logs for LLM-based recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and inspect data: log -> examples.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _console():
    from rich.console import Console

    return Console()


def _fail(msg: str, code: int = 2) -> None:
    """One clear line on stderr, then exit (2 = usage error)."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _parse_map(text: Optional[str]) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for pair in text.split(","):
        if "=" not in pair:
            _fail(f"--map {text!r}: expected canonical=column pairs, e.g. --map user_id=uid,item_id=movie,ts=time")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@data_app.command("prepare")
def data_prepare(
    out: Path = typer.Option(..., "--out", help="Output directory for the Parquet files."),
    source: Optional[str] = typer.Option(
        None, "--source", help="Built-in source: movielens-100k | synthetic-streaming."
    ),
    input: Optional[Path] = typer.Option(None, "--input", help="Your own log: CSV, Parquet or JSONL."),
    items: Optional[Path] = typer.Option(None, "--items", help="Item catalog file for --input."),
    map: Optional[str] = typer.Option(
        None, "--map", help="Column mapping canonical=source, e.g. user_id=uid,item_id=movie,ts=time."
    ),
    items_map: Optional[str] = typer.Option(None, "--items-map", help="Column mapping for --items."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name or YAML path to take settings from."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set history_len=20."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and stop."),
) -> None:
    """Turn a log into examples (history <= N, candidates, discovery flag, split).

    Example: minivz data prepare --source movielens-100k --out data/ml100k
    """
    from minivz.config import ConfigError, DataConfig, dump_yaml, resolve

    if source and input:
        _fail("give either --source or --input, not both")
    try:
        cfg = resolve(
            DataConfig,
            recipe=recipe,
            overrides=set_,
            source=source,
            input=str(input) if input else None,
            items=str(items) if items else None,
            map=_parse_map(map) or None,
            items_map=_parse_map(items_map) or None,
        )
    except ConfigError as e:
        _fail(str(e))
    if input is not None and not input.exists():
        _fail(f"--input {input}: no such file")
    console = _console()
    if dry_run:
        console.print(dump_yaml(cfg), end="")
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from minivz.examples import prepare
    from minivz.ingest import IngestError

    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("prepare", total=None)
            summary = prepare(cfg, out, progress=lambda m: bar.update(task, description=m))
    except (IngestError, ImportError, FileNotFoundError) as e:
        _fail(str(e), code=1)
    _print_summary(console, summary)


def _print_summary(console, s) -> None:
    from rich.table import Table

    t = Table(title=f"minivz data prepare -> {s.out}", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("rows read", f"{s.n_read:,}")
    t.add_row("kept events", f"{s.n_events:,}")
    t.add_row("rejected (rejects.parquet)", f"{s.n_rejected:,}")
    t.add_row("users", f"{s.n_users:,}")
    t.add_row("items", f"{s.n_items:,}")
    t.add_row("sessions", f"{s.n_sessions:,}")
    t.add_row("series runs", f"{s.n_runs:,}")
    for split, n in s.examples.items():
        t.add_row(f"examples {split}", f"{n:,}  (discovery {s.discovery_share[split]:.1%})")
    for why, n in s.skipped.items():
        t.add_row(f"targets skipped: {why}", f"{n:,}")
    t.add_row("seconds", f"{sum(s.seconds.values()):.2f}")
    console.print(t)


@data_app.command("show")
def data_show(
    path: Path = typer.Argument(..., help="A directory written by `minivz data prepare`."),
    split: str = typer.Option("test", "--split", help="train | valid | test."),
    n: int = typer.Option(2, "-n", help="How many examples."),
    max_events: int = typer.Option(20, "--max-events", help="Most recent history events to show."),
) -> None:
    """Print examples in the template form (history lines, candidates, target).

    Example: minivz data show data/ml100k --split test -n 2
    """
    from minivz.dataset import PreparedData
    from minivz.verbalize.template import template_line

    try:
        data = PreparedData.load(path)
        ex = data.examples(split, limit=n)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console = _console()
    hists = data.histories(ex, max_events=max_events)
    rows = ex.to_pylist()
    for row, hist in zip(rows, hists):
        total = row["hist_end"] - row["hist_start"]
        console.rule(
            f"example {row['example_id']}  user {row['user_id']}  "
            f"{'discovery' if row['discovery'] else 'repeat'}  history {total} events (showing {len(hist)})"
        )
        for ev in hist:
            console.print(template_line(ev), markup=False, highlight=False)
        console.print("candidates:", style="bold")
        for j, item in enumerate(row["candidates"]):
            mark = "  <- target" if j == row["label"] else ""
            console.print(f"  {j}. {data.item_text(item)}{mark}", markup=False, highlight=False)


@app.command("env")
def env(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Print versions of minivz's stack and the hardware it sees.

    Example: minivz env --json > env.json
    """
    from minivz.envinfo import collect

    info = collect()
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    t = Table(title="minivz env")
    t.add_column("what")
    t.add_column("value")
    for k, v in info.items():
        t.add_row(k, str(v))
    _console().print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
