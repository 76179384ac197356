"""``minivz serve``: the command's options, importable without the serve extra (pydantic, fastapi,
uvicorn), so ``minivz --help`` works on the core install; the server itself is ``minivz.serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from minivz.envinfo import passive_omp
from minivz.install import extra, pip


def run_models(run: Path) -> tuple[str, str]:
    """(reasoner GGUF, verbalizer spec) of a `minivz recipe` run's export: the verbalizer served the way it
    was trained (select / action / rewrite, its render and completion budget, from RUN/verbalizer/config.yaml)."""
    import yaml

    def gguf(kind: str) -> str:
        found = sorted((run / "export" / kind).glob("model-*.gguf"))
        if not found:
            raise FileNotFoundError(f"--run {run}: no {run / 'export' / kind}/model-*.gguf; finish the run "
                                    f"(minivz recipe ... --out {run}) or export it (minivz export)")
        return str(found[0])

    cfg_path = run / "verbalizer" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    variant, verb = cfg.get("variant", "rewrite"), gguf("verbalizer")
    if variant == "rewrite":
        return gguf("reasoner"), verb
    extra = f",render={cfg.get('select_render', 'template')}" if variant == "select" else ""
    return gguf("reasoner"), (f"{variant}:model={verb},backend=llama,max_new_tokens="
                              f"{cfg.get('max_completion_length', 48)}{extra}")


def serve_command(
    reasoner: Optional[str] = typer.Option(None, "--reasoner", help="Reasoner GGUF (scores candidates by "
                                           "log-likelihood). Default: the packaged SmolLM2-135M GGUF."),
    verbalizer: Optional[str] = typer.Option(None, "--verbalizer", help="'template' (no model, the default), a "
                                             "verbalizer spec, or a rewrite-verbalizer GGUF."),
    run: Optional[Path] = typer.Option(None, "--run", help="Serve a `minivz recipe` run's exported pair "
                                       "(RUN/export/), e.g. --run runs/tiny-cpu."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    n_gpu_layers: int = typer.Option(0, "--n-gpu-layers", help="Layers to offload to the GPU (llama.cpp; -1 = all)."),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context tokens per model."),
    n_threads: int = typer.Option(0, "--n-threads", help="CPU threads for llama.cpp (0 = its default)."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", help="Rewrite verbalizer output budget."),
    reuse_kv: bool = typer.Option(True, "--reuse-kv/--no-reuse-kv", help="Reuse earlier prompts' KV in whole "
                                  "blocks (a returning user re-reads only the tail; scores are bitwise unchanged)."),
    kv_slots: int = typer.Option(16, "--kv-slots", help="Earlier prompts kept in host memory for reuse "
                                 "(~23 KB per token for SmolLM2-135M)."),
    verbalization_cache: int = typer.Option(1024, "--verbalization-cache", help="Verbalizations kept per "
                                            "distinct history (LRU; 0 = off)."),
    max_request_tokens: int = typer.Option(8192, "--max-request-tokens", help="Most reasoner tokens one request "
                                           "may cause (prompt + all candidates); more gets 413."),
    request_timeout: float = typer.Option(60.0, "--request-timeout", help="Seconds from arrival to answer; "
                                          "past it the work stops and the client gets 503 + Retry-After."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve recommendations over HTTP: verbalize a history, rank candidates (FastAPI + llama.cpp).

    Examples: minivz serve (the embedded default) | minivz serve --run runs/tiny-cpu |
    minivz serve --reasoner exports/reasoner/model-q4_k_m.gguf --verbalizer template --port 8000
    """
    passive_omp()  # before llama_cpp is first imported
    try:
        from minivz.serve import ServeConfig, _gpu_offload_supported, create_app, is_loopback
    except ImportError as e:
        typer.echo(f"error: serving needs the serve extra ({e}): {pip(extra('serve'))}", err=True)
        raise typer.Exit(1)
    if run is not None:
        try:
            run_reasoner, run_verbalizer = run_models(run)
        except FileNotFoundError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        reasoner, verbalizer = reasoner or run_reasoner, verbalizer or run_verbalizer
    if reasoner is None:
        from minivz.reason.llamacpp import default_gguf

        reasoner = default_gguf()
        typer.echo(f"minivz serve: no --reasoner, serving the embedded default: SmolLM2-135M-Instruct ({reasoner}); "
                   "--run RUN serves a recipe run's trained pair", err=True)
    verbalizer = verbalizer or "template"
    typer.echo(f"minivz serve: reasoner {reasoner}; verbalizer {verbalizer}", err=True)
    try:
        cfg = ServeConfig(reasoner=reasoner, verbalizer=verbalizer, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx,
                          n_threads=n_threads, max_new_tokens=max_new_tokens, reuse_kv=reuse_kv,
                          kv_slots=kv_slots, verbalization_cache=verbalization_cache,
                          max_request_tokens=max_request_tokens, request_timeout_s=request_timeout)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if not is_loopback(host):
        typer.echo("\n" + "!" * 78 + f"\nWARNING: binding to {host}, NOT loopback: anyone who can reach this "
                   "machine can\nquery the models. There is no authentication. Put it behind a proxy with auth.\n"
                   + "!" * 78 + "\n", err=True)
    try:
        import uvicorn
    except ImportError as e:
        typer.echo(f"error: serving needs fastapi and uvicorn ({e}): {pip(extra('serve'))}", err=True)
        raise typer.Exit(1)
    gpu = _gpu_offload_supported()
    typer.echo(f"minivz serve on http://{host}:{port}  (docs /docs); llama.cpp GPU offload "
               f"{'available' if gpu else 'not built in'}; n_gpu_layers={n_gpu_layers}", err=True)
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level)
