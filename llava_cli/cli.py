"""Commands only: parse options, call the engine, print. No model logic here."""

from __future__ import annotations

import os
import sys
import traceback
from typing import List, Optional

import typer

from . import __version__
from .errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, LlavaError, UsageError
from .render import AnswerWriter, Notices

MODEL_HELP = ("An alias such as ov-7b (see llava models list --aliases), a Hub repo "
              "org/name[@revision], or a model folder. [default: LLAVA_MODEL, else model in "
              "config.toml, else llava-hf/llava-onevision-qwen2-0.5b-ov-hf]")

app = typer.Typer(
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


@app.command()
def ask(
    media_paths: Optional[List[str]] = typer.Argument(None, metavar="MEDIA", show_default=False,
                                                      help="Image and video files, in prompt order."),
    question: str = typer.Argument(..., metavar="QUESTION", show_default=False, help="The question."),
    model: Optional[str] = typer.Option(None, "--model", "-m", envvar="LLAVA_MODEL", help=MODEL_HELP),
    offline: bool = typer.Option(False, "--offline",
                                 help="Use only the local cache; never touch the network."),
    frames: Optional[int] = typer.Option(None, "--frames", "-f", min=1,
                                         help="Frames sampled uniformly from each video. [default: 8]"),
    long_video: bool = typer.Option(False, "--long-video",
                                    help="If the prompt exceeds the context, stretch RoPE to fit it."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n",
                                                 help="Stop after this many answer tokens. [default: 512]"),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-t",
                                                help="0 = greedy; > 0 samples. [default: the checkpoint's]"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Sample from the k most likely tokens."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, float16 or bfloat16."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Answer one QUESTION about MEDIA (videos and images); text-only without MEDIA."""
    from .config import model_setting
    from .hub import open_checkpoint

    media_paths = media_paths or []
    if not question.strip():
        raise UsageError("the question is empty")
    notices = Notices()
    reference, _ = model_setting(model, warn=notices.warn)
    # Resolved (downloaded if need be) and verified before any media is decoded, and
    # before torch is imported, so that a bad name fails at once.
    checkpoint = open_checkpoint(reference, offline=offline)
    from .engine import Engine
    from .families import family_for
    from .media import load_media

    # The family (from config.json alone) decides the frame count.
    family = family_for(checkpoint)
    frames = _frames_for(family, frames, notices, has_video=bool(media_paths))
    media = []
    for path in media_paths:
        item = load_media(path, num_frames=frames)
        for note in item.notices:
            notices.warn(note)
        media.append(item)
    with notices.status("loading model…"):
        engine = Engine.load(checkpoint, family=family, device=device, dtype=dtype)
    sampling = engine.sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               top_k=top_k, seed=seed)
    prepared = engine.prepare(media, question, system=system, long_video=long_video)
    if prepared.rope_factor != engine.family.text_config.rope_linear_factor:
        notices.warn(f"--long-video: RoPE stretched to linear factor {prepared.rope_factor:g} "
                     f"for {len(prepared.input_ids)} prompt tokens")
    writer = AnswerWriter()
    try:
        for piece in engine.stream(prepared, sampling):
            writer.write(piece)
    finally:
        writer.end()


# ---------------------------------------------------------------------------------------
# llava models …

models_app = typer.Typer(
    name="models",
    help="List, download, remove and describe models in the Hugging Face cache.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(
    aliases: bool = typer.Option(False, "--aliases", help="List the built-in aliases and their repos instead."),
) -> None:
    """List the cached models that llava can run: repo, alias, family, size on disk, revision."""
    from . import models

    if aliases:
        typer.echo(models.aliases_table())
        return
    rows = models.cached_models()
    if not rows:
        from .hub import cache_dir

        Notices().info(f"no models in the cache ({cache_dir()}); fetch one with `llava models pull ov-0.5b`")
        return
    typer.echo(models.list_table(rows))


@models_app.command("pull")
def models_pull(
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", show_default=False,
                                         help="Alias or org/name[@revision]; without it, the default model."),
    force: bool = typer.Option(False, "--force", help="Download every file again, even those already cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a model into the Hugging Face cache (or bring it up to date) and verify it;
    print its folder."""
    from .config import model_setting
    from .hub import open_checkpoint, parse_ref

    reference, _ = model_setting(name, warn=Notices().warn)
    if parse_ref(reference).is_local:
        raise UsageError(f"{reference} is a local folder: there is nothing to pull")
    checkpoint = open_checkpoint(reference, force=force, progress=not quiet)
    typer.echo(str(checkpoint.folder))


@models_app.command("rm")
def models_rm(
    name: str = typer.Argument(..., metavar="NAME", show_default=False,
                               help="Alias or org/name; org/name@revision removes that revision only."),
) -> None:
    """Delete a model from the Hugging Face cache (for transformers too: the cache is shared)."""
    from .hub import format_bytes
    from .models import remove

    what, freed = remove(name)
    typer.echo(f"deleted {what} ({format_bytes(freed)} freed)")


@models_app.command("info")
def models_info(
    name: Optional[str] = typer.Argument(None, metavar="[NAME]", show_default=False,
                                         help="Alias, org/name[@revision] or folder; without it, the default "
                                              "model."),
) -> None:
    """Describe a cached or local model: family, parameters, dtype, context length, tokens per
    image and frame, frames per video. Reads local files only."""
    from .config import model_setting
    from .models import info, table

    reference, _ = model_setting(name, warn=Notices().warn)
    typer.echo(table([[label, value] for label, value in info(reference)]))


def _frames_for(family, frames: int | None, notices: Notices, has_video: bool) -> int:
    """--frames if given, else the family's default; warn when a family trained on a
    fixed count (Video-LLaVA: 8) is asked for another."""
    if frames is None:
        return family.trained_frames or family.default_frames
    if has_video and family.trained_frames and frames != family.trained_frames:
        notices.warn(f"{family.title} was trained on {family.trained_frames} frames per video; "
                     f"{frames} may give worse answers")
    return frames


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
    except BrokenPipeError:
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
        if _is_usage_error(exc):
            if type(exc).__name__ != "NoArgsIsHelpError":  # help was printed already
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


if __name__ == "__main__":
    main()
