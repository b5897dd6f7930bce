"""`llava serve`: the model stays loaded behind an OpenAI-compatible HTTP API.

Only typer is imported here: starlette, uvicorn and torch are imported when the command
runs (``llava --help`` must not pay for them), from ``llava_cli.server``.
"""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from ..errors import UsageError
from .core import Command, app
from .options import SHARED, RunOptions, shared_options
from .run import Run


@app.command(cls=Command)
@shared_options
def serve(
    bind_host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS",
                                  help="Listen on this address; 0.0.0.0 (or ::) opens the server to the network."),
    port: int = typer.Option(8000, "--port", metavar="PORT", min=0, max=65535,
                             help="Listen on this TCP port (0: any free one, printed at start)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", metavar="KEY", envvar="LLAVA_API_KEY",
                                          show_default=False, show_envvar=True,
                                          help="Require 'Authorization: Bearer KEY' on every /v1 request "
                                               "(prefer the environment variable: a flag shows in ps)."),
    allowed_media_paths: Optional[List[str]] = typer.Option(
        None, "--allowed-media-path", metavar="DIR", show_default=False,
        help="Let requests name files under DIR as file:// URLs (repeat for more; none by default)."),
    keep_alive: str = typer.Option("5m", "--keep-alive", metavar="DURATION",
                                   help="Unload the model after this long without requests, and load it again "
                                        "on the next (30s, 5m, 1h; 0: right away; -1: never)."),
    options: RunOptions = SHARED,
) -> None:
    """Serve the model over HTTP with OpenAI's chat-completions API (images and videos), batching
    concurrent requests.

    POST /v1/chat/completions takes OpenAI's request (streamed or not), with image_url and video_url parts
    (data:, http(s):// or file:// URLs) and the frame settings in an extra "llava" object; GET /v1/models
    and GET /health answer too. The frame and sampling options are every request's defaults. The model loads at
    start and after each --keep-alive unload on the next request. Ctrl-C stops the server.
    """
    from ..server.api import parse_duration

    try:
        idle = parse_duration(keep_alive)
    except ValueError as exc:
        raise UsageError(f"--keep-alive: {exc}") from None
    if api_key is not None and not api_key.strip():
        raise UsageError("--api-key is empty (unset LLAVA_API_KEY, or give a key)")
    allowed = []
    for folder in allowed_media_paths or []:
        path = os.path.expanduser(folder)
        if not os.path.isdir(path):
            what = "does not exist" if not os.path.exists(path) else "is not a folder"
            raise UsageError(f"--allowed-media-path {folder}: {what}")
        allowed.append(os.path.realpath(path))
    run = Run.create(options)
    from ..server.app import serve as run_server

    run_server(run, host=bind_host, port=port, api_key=api_key.strip() if api_key else None, allowed=allowed,
               keep_alive=idle, parallel=run.settings.parallel, debug=bool(options.debug))
