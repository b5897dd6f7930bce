"""The options that ask, chat and batch share, each declared once.

A command asks for them with one parameter, ``options: RunOptions = SHARED``, and the
``shared_options`` decorator puts the options themselves in that place of its signature
(so typer sees ordinary parameters and the help lists them there; ``--quiet``,
``--verbose`` and ``--debug`` come last), then hands them back to the command as one
``RunOptions``. A shared option that is a setting is one entry in ``config.SETTINGS``, its
flag generated from it below; one that is not (``--offline``, ``--seed``, …) is one entry in
``_AFTER`` (or ``OUTPUT_OPTIONS``).

The walk of an option, e.g. ``--frames``: its ``Setting`` in config.SETTINGS →
``_from_setting`` → ``RunOptions.frames`` →
``Run.create`` merges it with LLAVA_FRAMES and config.toml (``config.resolve`` →
``config.Settings.frames``) → ``Run.open`` turns it into the ``FrameSpec`` the media
loader samples with (the family's own count when unset, ``Family.frames_for``).

Their defaults are None: a value not given here comes from LLAVA_* and config.toml (see
config.py), else the command's own default.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, make_dataclass
from typing import Any, Callable, Optional

import typer

from .. import config


@dataclass(frozen=True)
class SharedOption:
    name: str  # the parameter, and the RunOptions field
    annotation: Any
    declaration: Any  # typer.Option(...)
    commands: tuple[str, ...] = ()  # the commands that take it; () = all (ask, chat, batch)


def _option(name: str, annotation: Any, *args: Any, commands: tuple[str, ...] = (), **kwargs: Any) -> SharedOption:
    return SharedOption(name, annotation, typer.Option(*args, **kwargs), commands)


def _from_setting(setting: config.Setting) -> SharedOption:
    """The flag of a config setting. Its default is None (unset: LLAVA_* and config.toml
    decide); its value is checked once, with the file's and environment's, by config.resolve."""
    if setting.kind is bool:
        names: tuple[str, ...] = (f"{setting.flag}/--no-{setting.flag[2:]}",)
    else:
        names = (setting.flag, *((setting.short,) if setting.short else ()))
    extra = {"metavar": setting.metavar} if setting.metavar else {}
    return _option(setting.key, Optional[setting.kind], None, *names, show_default=False,
                   help=setting.flag_help, commands=setting.commands, **extra)


# The shared options that are not settings (no config.toml key, no LLAVA_* variable), each
# shown in --help after the setting it names.
_AFTER: dict[str, tuple[SharedOption, ...]] = {
    "model": (_option("offline", bool, False, "--offline", help="Use only the local cache; never touch the network."),),
    "max_frames": (
        _option("start", Optional[str], None, "--start", metavar="TIME", show_default=False,
                help="Sample videos from this time on: seconds (90, 90.5) or [HH:]MM:SS[.ms]."),
        _option("end", Optional[str], None, "--end", metavar="TIME", show_default=False,
                help="Sample videos up to this time (exclusive), same forms as --start."),
    ),
    "decoder": (_option("long_video", bool, False, "--long-video",
                        help="If the prompt exceeds the context, stretch RoPE to fit it."),),
    "top_k": (_option("seed", Optional[int], None, "--seed", metavar="S", show_default=False,
                      help="Random seed for sampling (0 to 2**64-1)."),),
}

RUN_OPTIONS: tuple[SharedOption, ...] = tuple(
    option for setting in config.SETTINGS for option in (_from_setting(setting), *_AFTER.get(setting.key, ())))

# After each command's own options, in every command's help.
OUTPUT_OPTIONS: tuple[SharedOption, ...] = (
    _option("quiet", bool, False, "--quiet", "-q",
            help="Print only the answer and errors: no progress, no warnings."),
    _option("verbose", bool, False, "--verbose", "-v",
            help="On stderr: the frames used and their times, each media encoding, token counts and speed."),
    _option("debug", bool, False, "--debug", help="Show tracebacks on errors."),
)

RunOptions = make_dataclass(
    "RunOptions", [(o.name, o.annotation) for o in (*RUN_OPTIONS, *OUTPUT_OPTIONS)], frozen=True,
    namespace={"__doc__": "The shared options as one command invocation gave them (None: not given)."})

SHARED: Any = object()  # the default of a command's ``options`` parameter: "put the shared options here"


def shared_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's ``options`` parameter by the shared options it takes (those
    whose ``commands`` name it, or all commands), and call it with them gathered into one
    ``RunOptions`` (an option the command does not take is None there)."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command)

    def takes(option: SharedOption) -> bool:
        return not option.commands or command.__name__ in option.commands

    def parameter(option: SharedOption) -> inspect.Parameter:
        return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.declaration,
                                 annotation=option.annotation)

    run_options = [o for o in RUN_OPTIONS if takes(o)]
    parameters: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name == "options":
            parameters += [parameter(o) for o in run_options]
        else:
            parameters.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                                            annotation=hints.get(param.name, param.annotation)))
    parameters += [parameter(o) for o in OUTPUT_OPTIONS]
    names = [o.name for o in (*run_options, *OUTPUT_OPTIONS)]
    absent = {o.name: None for o in RUN_OPTIONS if not takes(o)}

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        options = RunOptions(**absent, **{name: kwargs.pop(name) for name in names})
        return command(**kwargs, options=options)

    wrapper.__signature__ = signature.replace(parameters=parameters, return_annotation=None)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
