"""The ``minivz`` command line (typer + rich).

    minivz data prepare --source movielens-100k --out data/ml100k
    minivz data prepare --input log.csv --map user_id=uid,item_id=movie,ts=time --out data/mine
    minivz data show data/ml100k --split test -n 2
    minivz eval --data data/ml100k --verbalizer template --reasoner knn --limit 500 --out runs/tmpl-knn
    minivz compare runs/tmpl-knn runs/tmpl-emb
    minivz headroom --data data/ml100k --reasoner mention --split valid
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

from minivz.envinfo import explain_import_error
from minivz.spec import parse_options

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
    try:
        return parse_options(text)
    except ValueError:
        _fail(f"--map {text!r}: expected canonical=column pairs, e.g. --map user_id=uid,item_id=movie,ts=time")


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
    except (IngestError, FileNotFoundError) as e:
        _fail(str(e), code=1)
    except ImportError as e:
        _fail(explain_import_error(e), code=1)
    _print_summary(console, summary)


def _print_summary(console, s) -> None:
    from rich.table import Table

    t = Table(title=f"minivz data prepare -> {s.out}", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("rows read", f"{s.n_read:,}")
    t.add_row("kept events", f"{s.n_events:,}")
    t.add_row("rejected (rejects.parquet)", f"{s.n_rejected:,}")
    if s.n_catalog_rejected:
        t.add_row("catalog rows rejected (rejects.parquet)", f"{s.n_catalog_rejected:,}")
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


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="A directory written by `minivz data prepare`."),
    verbalizer: str = typer.Option("template", "--verbalizer", help="template | zero-shot | action | rewrite[:k=v,...]"),
    reasoner: str = typer.Option("knn", "--reasoner", help="popularity | knn | embedding | llamacpp | openai | hf [:k=v,...]"),
    split: str = typer.Option("test", "--split", help="train | valid | test."),
    limit: int = typer.Option(0, "--limit", help="Evaluate the first N examples (0 = all)."),
    out: Path = typer.Option(..., "--out", help="Run directory (resumes if it holds samples.jsonl)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name or YAML path."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set eval_history=10."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and stop."),
) -> None:
    """Score a verbalizer + reasoner on examples; write metrics.json, samples.jsonl, audit.json.

    Example: minivz eval --data data/ml100k --verbalizer template --reasoner embedding --limit 500 --out runs/tmpl-emb
    """
    from minivz.config import ConfigError, EvalConfig, dump_yaml, resolve

    try:
        cfg = resolve(EvalConfig, recipe=recipe, overrides=set_, data=str(data), verbalizer=verbalizer,
                      reasoner=reasoner, eval_split=split, limit=limit, out=str(out))
    except ConfigError as e:
        _fail(str(e))
    console = _console()
    if dry_run:
        console.print(dump_yaml(cfg), end="")
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from minivz.evaluate import evaluate

    try:
        with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("eval", total=None)
            metrics = evaluate(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    except FileNotFoundError as e:
        _fail(str(e), code=1)
    except ImportError as e:
        _fail(explain_import_error(e), code=1)
    except ValueError as e:
        _fail(str(e))
    _print_metrics(console, metrics, out)


def _print_metrics(console, m: dict, out: Path) -> None:
    from rich.table import Table

    run = m.get("run", {})
    t = Table(title=f"{run.get('verbalizer')} / {run.get('reasoner')} on {run.get('split')} -> {out}")
    for col in ("subset", "n", "Recall@1 [95% CI]", "Recall@5", "NDCG@10", "MRR", "valid"):
        t.add_column(col, justify="right")
    for sub in ("discovery", "all"):
        s = m.get(sub)
        if not s or not s["n"]:
            continue
        ci = s["recall@1_ci"]
        t.add_row(sub, str(s["n"]), f"{s['recall@1']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", f"{s['recall@5']:.3f}",
                  f"{s['ndcg@10']:.3f}", f"{s['mrr']:.3f}", f"{s['valid_rate']:.1%}")
    fl = m.get("random_floor", {})
    t.add_row("random", "", f"{fl.get('recall@1', 0):.3f}", f"{fl.get('recall@5', 0):.3f}",
              f"{fl.get('ndcg@10', 0):.3f}", f"{fl.get('mrr', 0):.3f}", "")
    console.print(t)


@app.command("headroom")
def headroom_cmd(
    data: Path = typer.Option(..., "--data", help="A directory written by `minivz data prepare`."),
    reasoner: str = typer.Option("mention", "--reasoner", help="The oracle you will train against (a reasoner spec)."),
    split: str = typer.Option("valid", "--split", help="Choose on valid; report the chosen rule on test."),
    limit: int = typer.Option(500, "--limit", help="Evaluate the first N examples (0 = all)."),
    history: int = typer.Option(20, "--history", help="Events of history shown to every verbalizer."),
    rules: Optional[str] = typer.Option(None, "--rules", help="';'-separated rule specs (default: recent-k, clean, "
                                        "series, titles, ...)."),
    out: Path = typer.Option(Path("runs/headroom"), "--out", help="Where the runs and headroom.md/json go."),
) -> None:
    """Is anything better than the template for this oracle? Score the rule verbalizers against it first.

    Example: minivz headroom --data data/ml100k --reasoner mention --split valid --limit 500 --history 20
    """
    from minivz.config import ConfigError
    from minivz.headroom import headroom
    from minivz.verbalize.rules import DEFAULT_RULES

    specs = [r.strip() for r in rules.split(";") if r.strip()] if rules else list(DEFAULT_RULES)
    if split not in ("train", "valid", "test"):
        _fail(f"--split {split!r}: use valid (to choose) or test (to report)")
    try:
        report = headroom(data, reasoner, out, split=split, limit=limit, history=history, rules=specs,
                          say=typer.echo)
    except FileNotFoundError as e:
        _fail(str(e), code=1)
    except ImportError as e:
        _fail(explain_import_error(e), code=1)
    except (ValueError, ConfigError) as e:
        _fail(str(e))
    typer.echo(f"wrote {out / 'headroom.md'} and {out / 'headroom.json'} (best: {report['best']})")


@app.command("compare")
def compare_cmd(
    runs: List[Path] = typer.Argument(..., help="Run directories; the first is the baseline."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write compare.png/.md/.json here (default: first run)."),
) -> None:
    """Print runs side by side with relative change vs the first; write a PNG bar chart with CIs.

    Example: minivz compare runs/tmpl-emb runs/zs-emb runs/action-emb --out runs/compare
    """
    from rich.table import Table

    from minivz.report import HEADER, bar_chart, compare_runs, table_cells, to_markdown

    try:
        rows = compare_runs(runs)
    except FileNotFoundError as e:
        _fail(str(e))
    dest = out or runs[0]
    dest.mkdir(parents=True, exist_ok=True)
    png = bar_chart(rows, dest / "compare.png")
    (dest / "compare.md").write_text(to_markdown(rows))
    (dest / "compare.json").write_text(json.dumps(rows, indent=2))
    t = Table(title="minivz compare (relative change: paired bootstrap vs the first run)")
    for col in HEADER:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(*table_cells(r))
    console = _console()
    console.print(t)
    console.print(f"wrote {png}, {dest / 'compare.md'}, {dest / 'compare.json'}")


@app.command("recipe")
def recipe_cmd(
    name: str = typer.Argument(..., help="A recipe (tiny-cpu, paper-8b, paper-32b, or a YAML path), or `list`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<recipe>)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set max_steps=5."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, resolved config and hardware; run nothing."),
) -> None:
    """Run the whole pipeline from one recipe; completed stages are skipped, so a rerun resumes.

    Example: minivz recipe tiny-cpu            (minivz recipe list shows the recipes)
    """
    from minivz.config import ConfigError, dump_yaml

    console = _console()
    if name == "list":
        from rich.table import Table

        from minivz.pipeline import list_recipes

        t = Table(title="minivz recipes")
        t.add_column("recipe")
        t.add_column("what it is")
        for n, desc in list_recipes():
            t.add_row(n, desc)
        console.print(t)
        return
    from minivz.pipeline import Pipeline, plan

    try:
        p = plan(name, set_)
    except ConfigError as e:
        _fail(str(e))
    if dry_run:
        from rich.table import Table

        t = Table(title=f"minivz recipe {name}: plan ({p['description']})")
        t.add_column("stage")
        t.add_column("hardware")
        t.add_column("status")
        for st in p["stages"]:
            t.add_row(st["stage"], st["hardware"], "skip" if st["skipped"] else "run")
        console.print(t)
        for section, cfg in p["configs"].items():
            console.print(f"# {section}", style="bold")
            console.print(dump_yaml(cfg), end="", markup=False, highlight=False)
        from minivz.train.memory import check_fits, estimate_memory, plan_lines

        vcfg = p["configs"]["verbalizer"]
        try:
            est = estimate_memory(vcfg)
        except (ValueError, ImportError) as e:
            console.print(f"# memory estimate unavailable: {e}", markup=False)
            return
        console.print("# verbalizer training, one process:", markup=False)
        console.print("\n".join(plan_lines(est, vcfg.gpu_memory_gib)), markup=False, highlight=False, soft_wrap=True)
        refusal = check_fits(vcfg, est)
        if refusal:
            _fail(refusal)
        return
    pipe = Pipeline(name, out or Path("runs") / Path(name).stem, set_, say=lambda m: console.print(m, markup=False))
    t0 = __import__("time").perf_counter()
    pipe.run()
    md = pipe.out / "results.md"
    if md.exists():
        console.print(md.read_text(), markup=False, highlight=False)
    console.print(f"wall time {__import__('time').perf_counter() - t0:.0f} s; results in {pipe.out}")


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


def _register_model_commands() -> None:
    """Commands whose modules are light to import (they import torch/llama.cpp inside the command)."""
    from minivz.export import export_command
    from minivz.serve_cli import serve_command
    from minivz.train.cli import plot_command, train_app
    from minivz.train.reasoner import train_reasoner_command

    train_app.command("reasoner")(train_reasoner_command)
    app.add_typer(train_app, name="train")
    app.command("plot")(plot_command)
    app.command("export")(export_command)
    app.command("serve")(serve_command)


_register_model_commands()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    """Learn how to verbalize interaction logs for LLM-based recommendation."""
    if debug:
        import os

        os.environ["MINIVZ_DEBUG"] = "1"


def _user_error(e: BaseException) -> str | None:
    """The one line to print for an error a user can fix (bad input, a server down), else None."""
    from minivz.config import ConfigError
    from minivz.ingest import IngestError
    from minivz.reason.base import ReasonerError

    if isinstance(e, ReasonerError):
        return f"the reasoner failed: {e}"
    from minivz.train.rewards import OracleDown  # numpy + minivz.kernels: the core install has both

    if isinstance(e, OracleDown):
        return str(e)
    if isinstance(e, (IngestError, ConfigError, FileNotFoundError, PermissionError, ConnectionError)):
        return str(e)
    if isinstance(e, ImportError):
        return explain_import_error(e)
    return None


def main() -> None:
    """The console script: errors a user can fix print one line (exit 1) unless --debug or MINIVZ_DEBUG=1."""
    import os

    try:
        app()
    except Exception as e:  # noqa: BLE001 -- classified below; anything else is a bug and re-raised
        msg = _user_error(e)
        if msg is None or os.environ.get("MINIVZ_DEBUG"):
            raise
        typer.echo(f"error: {msg} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
