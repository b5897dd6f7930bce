"""The `llava` application: the Typer app and its sub-command groups, the help notation,
and ``main``, which turns every outcome into an exit status and at most one error line.

Each command lives in its own module beside this one (ask, chat, batch, models, config);
the options they share are declared once, in ``options.py``.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from .. import __version__
from ..errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, LlavaError
from ..render import Notices


class ReaderGone(Exception):
    """Standard output's reader closed the pipe."""


class Command(typer.core.TyperCommand):
    """Help in the classic Unix notation: ``llava ask [OPTIONS] [MEDIA]... QUESTION``, with
    ``MEDIA...`` and ``QUESTION`` (not typer's ``{QUESTION}`` and ``<list[str]>``) in the
    argument list, and each option's value named by its metavar."""

    @staticmethod
    def _argument_name(param) -> str:
        name = param.metavar or param.name.upper()
        return name + ("..." if param.nargs != 1 else "")

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Click turns EPIPE into exit status 1; a filter whose reader went away
            # (`llava ask … | head`) exits as if by SIGPIPE, 141 (main() below).
            raise ReaderGone() from None

    def format_options(self, ctx, formatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((self._argument_name(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


# Commands people bring from ollama (and other tools): the llava command that does it.
FOREIGN_VERBS = {
    "run": "`llava ask` (one question) or `llava chat` (a conversation)",
    "pull": "`llava models pull`", "list": "`llava models list`", "ls": "`llava models list`",
    "show": "`llava models info`", "info": "`llava models info`", "rm": "`llava models rm`",
    "remove": "`llava models rm`", "help": "`llava --help`",
}


class Group(typer.core.TyperGroup):
    """Sub-commands with help as ``Command`` gives it, and a pointer to the right
    command for the verbs of ollama (``llava pull`` → ``llava models pull``)."""

    def resolve_command(self, ctx, args):
        if args and self.get_command(ctx, args[0]) is None and ctx.parent is None \
                and args[0] in FOREIGN_VERBS:
            ctx.fail(f"no such command '{args[0]}'; did you mean {FOREIGN_VERBS[args[0]]}?")
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=Group,
    name="llava",
    help="Ask LLaVA-family vision-language models about videos and images, on your own machine.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llava {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Ask LLaVA-family vision-language models about videos and images."""


def _subcommands(name: str, help: str) -> typer.Typer:  # noqa: A002 - typer's own word
    """A command group under ``llava`` (``llava config …``, ``llava models …``)."""
    group = typer.Typer(cls=Group, name=name, help=help, no_args_is_help=True, rich_markup_mode=None,
                        context_settings={"help_option_names": ["-h", "--help"]})
    app.add_typer(group, name=name)
    return group


config_app = _subcommands("config", "Show, locate and edit the configuration file (config.toml).")
models_app = _subcommands("models", "List, download, remove and describe models in the Hugging Face cache.")


def _is_usage_error(exc: BaseException) -> bool:
    # Typer raises click's exception classes (vendored since typer 0.2x): match by shape
    # so that any typer release works without importing click ourselves.
    return any(cls.__name__ == "UsageError" for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every failure into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("LLAVA_DEBUG"))
    notices = Notices()
    try:
        result = app(args=argv, prog_name="llava", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        notices.error("interrupted")
        code = EXIT_INTERRUPTED
    except (BrokenPipeError, ReaderGone):
        # The reader went away (`llava ask … | head`): stop quietly like other filters.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    except LlavaError as exc:
        if debug:
            traceback.print_exc()
        notices.error(exc.message)
        code = exc.exit_code
        if getattr(exc, "abandon_threads", False):
            # An interrupted download: its threads would finish their files before a
            # normal exit; the partial files are kept for the next run to resume.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    except MemoryError:
        if debug:
            traceback.print_exc()
        notices.error("out of memory: try fewer --frames, a smaller model, or --dtype float16")
        code = EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into a line
        if type(exc).__name__ == "NoArgsIsHelpError":
            # A bare `llava`, `llava models`, `llava config`: the help, as git and ollama
            # answer, not an error.
            typer.echo(exc.ctx.get_help())
            code = 0
        elif _is_usage_error(exc):
            command = getattr(getattr(exc, "ctx", None), "command_path", "llava")
            notices.error(f"{exc.format_message()} (see '{command} --help')")
            code = EXIT_USAGE
        elif hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            notices.error(exc.format_message())
            code = exc.exit_code
        else:
            if debug:
                traceback.print_exc()
            if exc.__class__.__name__ == "OutOfMemoryError":
                notices.error("out of GPU memory: try fewer --frames, a smaller model, or --device cpu")
            else:
                first = str(exc).splitlines()[0] if str(exc) else ""
                notices.error(f"internal error: {exc.__class__.__name__}: {first} (run with --debug for the traceback)")
            code = EXIT_ERROR
    sys.exit(code)
