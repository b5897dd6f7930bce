"""`llava models list|pull|rm|info`: models in the Hugging Face cache."""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import UsageError
from ..render import Notices
from .core import Command, models_app


@models_app.command(cls=Command, name="list")
def models_list(
    aliases: bool = typer.Option(False, "--aliases", help="List the built-in aliases, their repos and approximate bf16 sizes instead."),
) -> None:
    """List the cached models that llava can run: repo, alias, family, size on disk, revision."""
    from .. import models

    if aliases:
        typer.echo(models.aliases_table())
        return
    rows = models.cached_models()
    if not rows:
        from ..hub import cache_dir

        Notices().info(f"no models in the cache ({cache_dir()}); fetch one with `llava models pull ov-0.5b`")
        return
    typer.echo(models.list_table(rows))


@models_app.command(cls=Command, name="pull")
def models_pull(
    name: Optional[str] = typer.Argument(None, metavar="NAME", show_default=False,
                                         help="Alias or org/name[@revision]; without it, the default model."),
    force: bool = typer.Option(False, "--force", help="Download every file again, even those already cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a model into the Hugging Face cache (or bring it up to date) and verify it;
    print its folder."""
    from ..config import model_setting
    from ..hub import open_checkpoint, parse_ref

    reference, _ = model_setting(name, warn=Notices().warn)
    if parse_ref(reference).is_local:
        raise UsageError(f"{reference} is a local folder: there is nothing to pull")
    # pull brings the cache up to date: an unreachable Hub is an error here, not a
    # fallback to the cached revision as for ask, chat and batch.
    checkpoint = open_checkpoint(reference, force=force, progress=not quiet, fallback=False)
    typer.echo(str(checkpoint.folder))


@models_app.command(cls=Command, name="rm")
def models_rm(
    name: str = typer.Argument(..., metavar="NAME", show_default=False,
                               help="Alias or org/name; org/name@revision removes that revision only."),
) -> None:
    """Delete a model from the Hugging Face cache (for transformers too: the cache is shared)."""
    from ..hub import format_bytes
    from ..models import remove

    what, freed = remove(name)
    typer.echo(f"deleted {what} ({format_bytes(freed)} freed)")


@models_app.command(cls=Command, name="info")
def models_info(
    name: Optional[str] = typer.Argument(None, metavar="NAME", show_default=False,
                                         help="Alias, org/name[@revision] or folder; without it, the default "
                                              "model."),
) -> None:
    """Describe a cached or local model: family, parameters, dtype, context length, tokens per
    image and frame, frames per video. Reads local files only."""
    from ..config import model_setting
    from ..models import info, table

    reference, _ = model_setting(name, warn=Notices().warn)
    typer.echo(table([[label, value] for label, value in info(reference)]))
