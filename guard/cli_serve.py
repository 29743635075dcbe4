"""``audioguard serve``: run the HTTP service on uvicorn with one or more workers."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace

import click

from guard.server_config import (
    ENV_API_KEYS,
    SCOPES,
    load_config,
    new_token,
    parse_env_keys,
)


@click.command()
@click.option("--host", help="Address to bind [default: the config's, else 127.0.0.1].")
@click.option("--port", type=int, help="Port [default: the config's, else 8000].")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML or JSON config (keys, limits, policies, audit log).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes; each loads the models once before accepting requests.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve without API keys (only allowed on a loopback address).",
)
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1",
    show_default=True,
    help="Reverse proxies whose X-Forwarded-For/-Proto headers are trusted.",
)
@click.option("--root-path", default="", help="Path prefix when the proxy serves a sub-path.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    help="How much the server logs (uvicorn's levels).",
)
@click.option(
    "--new-api-key",
    "new_key_id",
    metavar="ID",
    help="Print a new token and its config entry for key ID, then exit.",
)
@click.option(
    "--scopes",
    default="scan",
    show_default=True,
    help=f"With --new-api-key: scopes joined by '+' ({'+'.join(SCOPES)}).",
)
def serve(
    host: str | None,
    port: int | None,
    config_path: str | None,
    workers: int,
    insecure_no_auth: bool,
    forwarded_allow_ips: str,
    root_path: str,
    log_level: str,
    new_key_id: str | None,
    scopes: str,
) -> None:
    """Serve scan, detect and watermark endpoints over HTTP (see README, "HTTP service")."""
    if new_key_id is not None:
        _print_new_key(new_key_id, scopes)
        return
    config = load_config(config_path)
    config = replace(
        config,
        host=host or config.host,
        port=port or config.port,
        insecure_no_auth=insecure_no_auth,
        # The cores are shared by the workers: by default each gets an equal share of
        # inference threads, and torch one thread per inference thread.
        inference_threads=config.inference_threads or max(1, (os.cpu_count() or 1) // workers),
    ).validate()
    if config.torch_threads is None:
        share = (os.cpu_count() or 1) // (workers * config.threads)
        config = replace(config, torch_threads=max(1, share))

    import uvicorn

    from guard.server import ENV_SERVE_CONFIG

    os.environ[ENV_SERVE_CONFIG] = config.to_json()
    # The workers get the tokens' digests in the resolved config; the tokens themselves
    # need not live on in any process's environment.
    os.environ.pop(ENV_API_KEYS, None)
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers share their metrics through files, so /metrics sums every worker.
        metrics_dir = tempfile.mkdtemp(prefix="audioguard-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "guard.server:app_factory",
            factory=True,
            host=config.host,
            port=config.port,
            workers=workers,
            proxy_headers=True,
            forwarded_allow_ips=forwarded_allow_ips,
            root_path=root_path,
            log_level=log_level,
            timeout_graceful_shutdown=30,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _print_new_key(key_id: str, scopes: str) -> None:
    token = new_token()
    # Validates the id and the scopes with the same rules as the config.
    (key,) = parse_env_keys(f"{key_id}:{token}:{scopes}")
    click.echo(f"token (give it to the client; it is not stored anywhere): {token}")
    click.echo("config entry (api_keys:):")
    click.echo(f"  - id: {key.id}")
    click.echo(f"    sha256: {key.sha256}")
    click.echo(f"    scopes: [{', '.join(key.scopes)}]")
