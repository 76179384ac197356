"""``minivz serve``: the command's options, importable without the serve extra (pydantic, fastapi,
uvicorn), so ``minivz --help`` works on the core install; the server itself is ``minivz.serve``."""

from __future__ import annotations

import os

import typer


def serve_command(
    reasoner: str = typer.Option(..., "--reasoner", help="Reasoner GGUF (scores candidates by log-likelihood)."),
    verbalizer: str = typer.Option("template", "--verbalizer",
                                   help="'template' (no model), a verbalizer spec, or a rewrite-verbalizer GGUF."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    n_gpu_layers: int = typer.Option(0, "--n-gpu-layers", help="Layers to offload to the GPU (llama.cpp; -1 = all)."),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context tokens per model."),
    n_threads: int = typer.Option(0, "--n-threads", help="CPU threads for llama.cpp (0 = its default)."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", help="Rewrite verbalizer output budget."),
    reuse_kv: bool = typer.Option(False, "--reuse-kv", help="Reuse the previous request's KV prefix "
                                  "(faster; scores then depend slightly on the previous request)."),
    max_request_tokens: int = typer.Option(8192, "--max-request-tokens", help="Most reasoner tokens one request "
                                           "may cause (prompt + all candidates); more gets 413."),
    request_timeout: float = typer.Option(60.0, "--request-timeout", help="Seconds from arrival to answer; "
                                          "past it the work stops and the client gets 503 + Retry-After."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve recommendations over HTTP: verbalize a history, rank candidates (FastAPI + llama.cpp).

    Example: minivz serve --reasoner exports/reasoner/model-q4_k_m.gguf --verbalizer template --port 8000
    """
    # Before llama_cpp is first imported (OpenMP reads it once): busy-waiting OpenMP threads crawl
    # on shared CPUs (see minivz.generate). export OMP_WAIT_POLICY=active on a dedicated box.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from minivz.serve import ServeConfig, _gpu_offload_supported, create_app, is_loopback
    except ImportError as e:
        typer.echo(f"error: serving needs the serve extra ({e}): pip install 'minivz[serve]'", err=True)
        raise typer.Exit(1)
    try:
        cfg = ServeConfig(reasoner=reasoner, verbalizer=verbalizer, n_gpu_layers=n_gpu_layers, n_ctx=n_ctx,
                          n_threads=n_threads, max_new_tokens=max_new_tokens, reuse_kv=reuse_kv,
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
        typer.echo(f"error: serving needs fastapi and uvicorn ({e}): pip install 'minivz[serve]'", err=True)
        raise typer.Exit(1)
    gpu = _gpu_offload_supported()
    typer.echo(f"minivz serve on http://{host}:{port}  (docs /docs); llama.cpp GPU offload "
               f"{'available' if gpu else 'not built in'}; n_gpu_layers={n_gpu_layers}", err=True)
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level)
