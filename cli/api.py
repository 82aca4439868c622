"""`freshrank serve`: the feed API under uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.options import (
    console,
    fail,
)

app = typer.Typer()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env FRESHRANK_SERVE_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [env FRESHRANK_SERVE_PORT].")] = None,
    workers: Annotated[int | None, typer.Option(help="Server processes [env FRESHRANK_SERVE_WORKERS].")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the feed API: POST /v1/rank, GET /v1/feed/{user_id}, POST /v1/events, /metrics, /docs.

    Settings come from FRESHRANK_SERVE_* variables (see README "Feed API").
    """
    import logging

    import uvicorn
    from pydantic import ValidationError

    from serving.settings import ServingSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Importing Feast sets these in a parent (e.g. the `up` supervisor) and a child inheriting them
    # turns prometheus_client into file-backed multiprocess mode: slower, and files left behind.
    for name in ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR"):
        os.environ.pop(name, None)
    # Options become variables: with several workers each process reads its settings itself.
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"FRESHRANK_SERVE_{name}"] = str(value)
    try:
        settings = ServingSettings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise fail(f"invalid feed API settings: {problems}") from None
    console.print(
        f"feed API on http://{settings.host}:{settings.port} with {settings.workers} worker(s) (docs at /docs); "
        f"models from {settings.model_registry / settings.model_name}"
    )
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=log_level,
        # Keep-alive longer than typical client pools, so connections are not cut mid-burst.
        timeout_keep_alive=30,
    )
