"""`llava config show|path|edit`: the configuration file."""

from __future__ import annotations

import typer

from ..render import Notices
from .core import Command, config_app


@config_app.command(cls=Command, name="show")
def config_show() -> None:
    """Print the settings in effect (file and LLAVA_* variables; flags override them) as TOML, each with where
    it comes from."""
    from .. import config

    typer.echo(config.show(warn=Notices().warn))


@config_app.command(cls=Command, name="path")
def config_path_command() -> None:
    """Print the configuration file's path (LLAVA_CONFIG, else config.toml in the user configuration folder),
    whether or not it exists."""
    from .. import config

    typer.echo(str(config.config_path()))


@config_app.command(cls=Command, name="edit")
def config_edit() -> None:
    """Open the configuration file in $VISUAL or $EDITOR (creating it, every setting commented out, if it does
    not exist), then check what was saved."""
    import subprocess

    from .. import config
    from ..errors import ConfigError

    path = config.config_path()
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config.template(), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
    command = config.editor_command()
    try:
        status = subprocess.call([*command, str(path)])
    except OSError as exc:
        raise ConfigError(f"cannot run the editor {command[0]}: {exc.strerror or exc}") from None
    if status != 0:
        raise ConfigError(f"the editor {command[0]} exited with status {status}; {path} was not checked")
    config.resolve(warn=Notices().warn)  # one line naming the problem, if there is one
    Notices().info(f"{path} is valid")
