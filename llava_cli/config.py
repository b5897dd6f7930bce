"""Settings from the configuration file and the environment.

The file is ``config.toml`` in ``platformdirs.user_config_dir("llava")`` (on Linux
~/.config/llava/config.toml), or the file ``LLAVA_CONFIG`` names. For now it holds one
setting:

    model = "ov-7b"        # an alias, org/name[@revision] or a folder

The model comes from, first to last: ``--model``, ``LLAVA_MODEL``, the file's ``model``,
``hub.DEFAULT_MODEL``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from .errors import ConfigError
from .hub import DEFAULT_MODEL


def config_path() -> Path:
    override = os.environ.get("LLAVA_CONFIG")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("llava")) / "config.toml"


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli  # type: ignore[import-not-found]
    except ImportError:
        return None
    return tomli


def load_config(warn: Callable[[str], None] | None = None) -> dict:
    """The configuration file's table; {} when there is none."""
    path = config_path()
    if not path.is_file():
        if os.environ.get("LLAVA_CONFIG") and not path.exists():
            raise ConfigError(f"LLAVA_CONFIG names {path}, which does not exist")
        return {}
    toml = _toml_module()
    if toml is None:
        if warn is not None:
            warn(f"{path} ignored: reading it needs Python 3.11 or the tomli package (pip install tomli)")
        return {}
    try:
        return toml.loads(path.read_text(encoding="utf-8"))
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def model_setting(cli_value: str | None = None, warn: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(model reference, where it came from): --model, LLAVA_MODEL, the file, the default."""
    if cli_value:
        return cli_value, "--model"
    env = os.environ.get("LLAVA_MODEL")
    if env:
        return env, "LLAVA_MODEL"
    value = load_config(warn).get("model")
    if value is not None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{config_path()}: 'model' must be a non-empty string")
        return value.strip(), str(config_path())
    return DEFAULT_MODEL, "default"
