"""Commands only: parse options, call the engine, print. No model logic here."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, List, Optional

import typer

from . import __version__
from .errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, LlavaError, UsageError
from .render import AnswerWriter, Notices
from .validate import MAX_SEED

MODEL_HELP = ("An alias such as ov-7b (see llava models list --aliases), a Hub repo "
              "org/name[@revision], or a model folder. [default: LLAVA_MODEL, else model in "
              "config.toml, else llava-hf/llava-onevision-qwen2-0.5b-ov-hf]")

class _ReaderGone(Exception):
    """Standard output's reader closed the pipe."""


class _Command(typer.core.TyperCommand):
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
            raise _ReaderGone() from None

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
_FOREIGN_VERBS = {
    "run": "`llava ask` (one question) or `llava chat` (a conversation)",
    "pull": "`llava models pull`", "list": "`llava models list`", "ls": "`llava models list`",
    "show": "`llava models info`", "info": "`llava models info`", "rm": "`llava models rm`",
    "remove": "`llava models rm`", "help": "`llava --help`",
}


class _Group(typer.core.TyperGroup):
    """Sub-commands with help as ``_Command`` gives it, and a pointer to the right
    command for the verbs of ollama (``llava pull`` → ``llava models pull``)."""

    def resolve_command(self, ctx, args):
        if args and self.get_command(ctx, args[0]) is None and ctx.parent is None \
                and args[0] in _FOREIGN_VERBS:
            ctx.fail(f"no such command '{args[0]}'; did you mean {_FOREIGN_VERBS[args[0]]}?")
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_Group,
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


# ---------------------------------------------------------------------------------------
# Options shared by ask, chat and batch. Their defaults are None: a value not given here
# comes from LLAVA_* and config.toml (see config.py), else the command's own default.

_MODEL = typer.Option(None, "--model", "-m", metavar="MODEL", help=MODEL_HELP, show_default=False)
_OFFLINE = typer.Option(False, "--offline", help="Use only the local cache; never touch the network.")
_FRAMES = typer.Option(None, "--frames", "-f", metavar="N", min=1, show_default=False,
                       help="Frames sampled uniformly from each video. [default: the family's, 8 for most]")
_FPS = typer.Option(None, "--fps", metavar="FPS", show_default=False,
                    help="Sample videos at this many frames per second instead of a fixed count.")
_MAX_FRAMES = typer.Option(None, "--max-frames", metavar="N", min=1, show_default=False,
                           help="At most this many frames per video (with --fps, the rate is lowered to fit).")
_START = typer.Option(None, "--start", metavar="TIME", show_default=False,
                      help="Sample videos from this time on: seconds (90, 90.5) or [HH:]MM:SS[.ms].")
_END = typer.Option(None, "--end", metavar="TIME", show_default=False,
                    help="Sample videos up to this time (exclusive), same forms as --start.")
_DECODER = typer.Option(None, "--decoder", metavar="NAME", show_default=False,
                        help="Video decoder: pyav or decord (falls back to pyav). [default: pyav]")
_LONG_VIDEO = typer.Option(False, "--long-video", help="If the prompt exceeds the context, stretch RoPE to fit it.")
_MAX_NEW_TOKENS = typer.Option(None, "--max-new-tokens", "-n", metavar="N", show_default=False,
                               help="Stop after this many answer tokens. [default: the checkpoint's, else 512]")
_TEMPERATURE = typer.Option(None, "--temperature", "-t", metavar="T", show_default=False,
                            help="0 = greedy; > 0 samples. [default: the checkpoint's]")
_TOP_P = typer.Option(None, "--top-p", metavar="P", show_default=False, help="Nucleus sampling threshold.")
_TOP_K = typer.Option(None, "--top-k", metavar="K", show_default=False, help="Sample from the k most likely tokens.")
_SEED = typer.Option(None, "--seed", metavar="S", show_default=False, help="Random seed for sampling (0 to 2**64-1).")
_DEVICE = typer.Option(None, "--device", metavar="DEVICE", show_default=False, help="auto, cpu, cuda, cuda:N or mps. [default: auto]")
_DTYPE = typer.Option(None, "--dtype", metavar="DTYPE", show_default=False,
                      help="auto, float32, float16 or bfloat16. [default: auto]")
_ATTN = typer.Option(None, "--attn", metavar="BACKEND", show_default=False,
                     help="Attention: auto, sdpa, flash (FlashAttention-2) or eager. [default: auto, flash where "
                          "it runs, else sdpa]")
_QUANTIZE = typer.Option(None, "--quantize", metavar="MODE", show_default=False,
                         help="Language-model weights through bitsandbytes: 4bit (NF4), 4bit-dq (NF4, double "
                              "quantization), 8bit (LLM.int8) or none. [default: none]")
_COMPILE = typer.Option(None, "--compile/--no-compile", show_default=False,
                        help="Compile the decode step with torch.compile (CUDA graphs on GPU); the first answer "
                             "waits for it. [default: off]")
_PREFILL_CHUNK = typer.Option(None, "--prefill-chunk", metavar="N", min=0, show_default=False,
                              help="Prompt positions per prefill pass; bounds the memory of long video prompts "
                                   "(0: all at once). [default: 1024]")
_SYSTEM = typer.Option(None, "--system", "-s", metavar="TEXT", show_default=False, help="System prompt.")
_QUIET = typer.Option(False, "--quiet", "-q", help="Print only the answer and errors: no progress, no warnings.")
_VERBOSE = typer.Option(False, "--verbose", "-v",
                        help="On stderr: the frames used and their times, each media encoding, token counts "
                             "and speed.")
_DEBUG = typer.Option(False, "--debug", help="Show tracebacks on errors.")


@dataclass
class _Run:
    """What ask, chat and batch share once options, environment and config are merged."""

    notices: Notices
    settings: Any  # config.Resolved
    reference: str
    offline: bool
    start: float | None
    end: float | None
    seed: int | None
    long_video: bool
    checkpoint: Any = None
    family: Any = None
    spec: Any = None  # media.FrameSpec
    engine: Any = None

    @property
    def model_name(self) -> str:
        from .hub import parse_ref

        return parse_ref(self.reference).display

    def open(self, *, has_video: bool = True) -> None:
        """Resolve (downloading if need be) and verify the model, and fix the frame
        settings from its family: before any media is decoded or torch imported, so a
        bad model name fails at once."""
        from .families import family_for
        from .hub import open_checkpoint
        from .media import FrameSpec

        self.checkpoint = open_checkpoint(self.reference, offline=self.offline, progress=not self.notices.quiet,
                                          warn=self.notices.warn)
        self.family = family_for(self.checkpoint)
        values = self.settings.values
        frames = values["frames"]
        if values["fps"] is None:
            frames = self.family.frames_for(frames, warn=self.notices.warn if has_video else None)
        self.spec = FrameSpec(frames=frames, fps=values["fps"], max_frames=values["max_frames"],
                              start=self.start, end=self.end, decoder=values["decoder"])

    def load_engine(self) -> Any:
        from .engine import Engine

        with self.notices.status("loading model…"):
            values = self.settings.values
            quantize = values["quantize"]
            self.engine = Engine.load(self.checkpoint, family=self.family, device=values["device"],
                                      dtype=values["dtype"], attn=values["attn"], quantize=quantize,
                                      compile=bool(values["compile"]), prefill_chunk=values["prefill_chunk"])
        notices = self.notices
        engine = self.engine
        weights = "unquantized" if quantize in (None, "none") else quantize
        notices.detail(f"model {self.family.title} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}), "
                       f"attention {engine.attention}, language-model weights {weights}"
                       + (", compiled decode" if values["compile"] else ""))

        def encoded(media, item) -> None:
            if media is None:
                notices.detail(f"encoded {item.kind}")
            elif media.kind == "video":
                notices.detail(f"encoded video {media.source} ({len(media.frame_indices)} frames)")
            else:
                notices.detail(f"encoded image {media.source}")

        self.engine.on_encode = encoded
        return self.engine

    def sampling(self):
        values = self.settings.values
        return self.engine.sampling(max_new_tokens=values["max_new_tokens"], temperature=values["temperature"],
                                    top_p=values["top_p"], top_k=values["top_k"], seed=self.seed)

    def load_media(self, path: str):
        from .media import load_media

        media = load_media(path, self.spec)
        for note in media.notices:
            self.notices.warn(note)
        self.notices.detail(media.describe())
        return media


def _run(*, model, offline, frames, fps, max_frames, start, end, decoder, long_video, max_new_tokens,
         temperature, top_p, top_k, seed, device, dtype, attn, quantize, compile, prefill_chunk, system, quiet,
         verbose) -> _Run:
    from . import config

    notices = Notices(quiet=quiet, verbose=verbose)
    flags = dict(model=model, device=device, dtype=dtype, attn=attn, quantize=quantize, compile=compile,
                 prefill_chunk=prefill_chunk, frames=frames, fps=fps, max_frames=max_frames,
                 decoder=decoder, temperature=temperature, top_p=top_p, top_k=top_k,
                 max_new_tokens=max_new_tokens, system=system)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be from 0 to {MAX_SEED} (2**64 - 1), got {seed}")
    settings = config.resolve(flags, warn=notices.warn)
    _check_text(settings.values.get("system"), "the system prompt")
    start_s = end_s = None
    if start is not None or end is not None:
        from .media import parse_time

        start_s = parse_time(start) if start is not None else None
        end_s = parse_time(end) if end is not None else None
    return _Run(notices, settings, settings.values["model"], offline, start_s, end_s, seed, long_video)


def _run_from(options: dict[str, Any]) -> _Run:
    """``_run`` on a command's ``locals()``: the shared options are declared once, in
    ``_run``'s signature, and each command passes whatever of them it has."""
    import inspect

    return _run(**{name: options[name] for name in inspect.signature(_run).parameters})


def _check_question(question: str, *, folders: bool = False) -> None:
    """`llava ask clip.mp4`: a media path in the question's place is a missing question,
    not a question (for batch, a folder too)."""
    from .media import looks_like_media

    if looks_like_media(question):
        raise UsageError(f"missing argument QUESTION: '{question}' is a media file, not a question")
    if folders and os.path.isdir(os.path.expanduser(question)):
        raise UsageError(f"missing argument QUESTION: '{question}' is a folder, not a question")


MAX_QUESTION_BYTES = 16 * 1024 * 1024  # a question read from stdin; /dev/zero is not one


def _read_stdin_question() -> str:
    """The question from standard input: UTF-8 text, at most MAX_QUESTION_BYTES."""
    stream = getattr(sys.stdin, "buffer", None)
    raw = stream.read(MAX_QUESTION_BYTES + 1) if stream is not None else sys.stdin.read().encode("utf-8")
    if len(raw) > MAX_QUESTION_BYTES:
        raise UsageError(f"the question read from standard input is too long (over {MAX_QUESTION_BYTES >> 20} MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the question read from standard input is not valid UTF-8 text "
                         f"(byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise UsageError("the question read from standard input is empty")
    return text.strip()


def _check_text(text: str | None, what: str) -> None:
    """Command-line text arrives decoded with surrogate escapes for bytes that are not
    UTF-8; a question or a system prompt has to be text: refused, not mangled."""
    if text is not None and any("\ud800" <= c <= "\udfff" for c in text):
        raise UsageError(f"{what} is not valid UTF-8 text")


@app.command(cls=_Command)
def ask(
    media_paths: Optional[List[str]] = typer.Argument(None, metavar="MEDIA", show_default=False,
                                                      help="Image and video files, in prompt order."),
    question: str = typer.Argument(..., metavar="QUESTION", show_default=False,
                                   help="The question; - reads it from standard input."),
    model: Optional[str] = _MODEL,
    offline: bool = _OFFLINE,
    frames: Optional[int] = _FRAMES,
    fps: Optional[float] = _FPS,
    max_frames: Optional[int] = _MAX_FRAMES,
    start: Optional[str] = _START,
    end: Optional[str] = _END,
    decoder: Optional[str] = _DECODER,
    long_video: bool = _LONG_VIDEO,
    max_new_tokens: Optional[int] = _MAX_NEW_TOKENS,
    temperature: Optional[float] = _TEMPERATURE,
    top_p: Optional[float] = _TOP_P,
    top_k: Optional[int] = _TOP_K,
    seed: Optional[int] = _SEED,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    attn: Optional[str] = _ATTN,
    quantize: Optional[str] = _QUANTIZE,
    compile: Optional[bool] = _COMPILE,
    prefill_chunk: Optional[int] = _PREFILL_CHUNK,
    system: Optional[str] = _SYSTEM,
    json_output: bool = typer.Option(False, "--json",
                                     help="Print one JSON object (answer, model, media, token counts, timings) "
                                          "instead of the answer."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the answer when it is complete, at once."),
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    debug: bool = _DEBUG,
) -> None:
    """Answer one QUESTION about MEDIA (videos and images); text-only without MEDIA."""
    from .media import check_sources

    media_paths = media_paths or []
    _check_text(question, "the question")
    if not media_paths:
        _check_question(question)
    if question == "-":
        question = _read_stdin_question()
    if not question.strip():
        raise UsageError("the question is empty")
    run = _run_from(locals())
    notices = run.notices
    check_sources(media_paths)  # before the model is resolved, perhaps downloaded
    run.open(has_video=bool(media_paths))
    started = time.perf_counter()
    media = [run.load_media(path) for path in media_paths]
    media_s = time.perf_counter() - started
    engine = run.load_engine()
    sampling = run.sampling()
    prepared = engine.prepare(media, question, system=run.settings.system, long_video=long_video)
    if prepared.stretch_notice:
        notices.warn(prepared.stretch_notice)
    writer = AnswerWriter(live=not (no_stream or json_output))
    try:
        for piece in engine.stream(prepared, sampling):
            writer.write(piece)
    except BaseException:
        if writer.wrote and not json_output:
            writer.end()  # end a partial answer's line (Ctrl-C); an error before any text prints none
        raise
    if not json_output:
        writer.end()
    timings = engine.timings
    _verbose_timings(notices, timings)
    if json_output:
        typer.echo(json.dumps(_ask_json(run, writer.text, media, media_s), ensure_ascii=False))


def _ask_json(run: _Run, answer: str, media: list, media_s: float) -> dict:
    from .schema import media_record

    timings = run.engine.timings
    return {
        "answer": answer,
        "model": run.model_name,
        "family": run.family.name,
        "media": [media_record(m) for m in media],
        "prompt_tokens": timings.prompt_tokens,
        "answer_tokens": timings.answer_tokens,
        "stop_reason": timings.stop_reason,
        "timings": {
            "load_s": round(timings.load_s, 6),
            "media_s": round(media_s, 6),
            "encode_s": round(timings.encode_s, 6),
            "prefill_s": round(timings.prefill_s, 6),
            "decode_s": round(timings.decode_s, 6),
            "tokens_per_s": round(timings.tokens_per_s, 3) if timings.tokens_per_s is not None else None,
        },
    }


def _verbose_timings(notices: Notices, timings) -> None:
    rate = f", {timings.tokens_per_s:.1f} tokens/s" if timings.tokens_per_s else ""
    notices.detail(f"prompt {timings.prompt_tokens} tokens, answer {timings.answer_tokens} tokens "
                   f"({timings.stop_reason}); load {timings.load_s:.2f} s, encode {timings.encode_s:.2f} s, "
                   f"prefill {timings.prefill_s:.2f} s, decode {timings.decode_s:.2f} s{rate}")


# ---------------------------------------------------------------------------------------
# llava chat


@app.command(cls=_Command)
def chat(
    media_paths: Optional[List[str]] = typer.Argument(None, metavar="MEDIA", show_default=False,
                                                      help="Images and videos for the first question."),
    model: Optional[str] = _MODEL,
    offline: bool = _OFFLINE,
    frames: Optional[int] = _FRAMES,
    fps: Optional[float] = _FPS,
    max_frames: Optional[int] = _MAX_FRAMES,
    start: Optional[str] = _START,
    end: Optional[str] = _END,
    decoder: Optional[str] = _DECODER,
    long_video: bool = _LONG_VIDEO,
    max_new_tokens: Optional[int] = _MAX_NEW_TOKENS,
    temperature: Optional[float] = _TEMPERATURE,
    top_p: Optional[float] = _TOP_P,
    top_k: Optional[int] = _TOP_K,
    seed: Optional[int] = _SEED,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    attn: Optional[str] = _ATTN,
    quantize: Optional[str] = _QUANTIZE,
    compile: Optional[bool] = _COMPILE,
    prefill_chunk: Optional[int] = _PREFILL_CHUNK,
    system: Optional[str] = _SYSTEM,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    debug: bool = _DEBUG,
) -> None:
    """Talk about MEDIA over several questions. The conversation stays in the model's KV
    cache, so each image and video is encoded once and each question costs only its own
    tokens.

    Commands: /attach PATH..., /reset, /system TEXT, /save FILE, /load FILE, /set frames|temperature|max-new-tokens
    VALUE, /help, /bye. \"\"\" begins and ends a multi-line message. Ctrl-C stops an answer and keeps the
    conversation (the partial answer stays in it); Ctrl-D or /bye leaves. On a terminal, lines can be edited and
    the input history is kept in the user state folder (~/.local/state/llava/history on Linux); when standard input
    is not a terminal, its lines are read as messages and commands, without prompts.
    """
    from .repl import ChatSettings, Repl
    from .session import ChatSession, MediaCache

    from .media import check_sources

    media_paths = media_paths or []
    run = _run_from(locals())
    notices = run.notices
    check_sources(media_paths)  # before the model is resolved, perhaps downloaded
    run.open()
    cache = MediaCache(None)
    entries = [cache.load(path, run.spec) for path in media_paths]
    for entry in entries:
        for note in entry.media.notices:
            notices.warn(note)
        notices.detail(entry.media.describe())
    engine = run.load_engine()
    cache.engine = engine
    session = ChatSession(engine, system=run.settings.system, long_video=long_video, cache=cache)
    for entry in entries:
        session.attach(entry)

    def load(path: str, spec):
        entry = cache.load(path, spec)
        for note in entry.media.notices:
            notices.warn(note)
        notices.detail(entry.media.describe())
        return entry

    repl = Repl(session, ChatSettings(run.spec, run.sampling(), run.model_name), notices, load=load)
    if repl.interactive and not quiet:
        attached = f"; {len(entries)} attached for the first question" if entries else ""
        notices.info(f"llava chat with {run.model_name}{attached}. /help for commands, Ctrl-D or /bye to leave.")
    code = repl.run()
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------------------------------
# llava batch


@app.command(cls=_Command)
def batch(
    inputs: Optional[List[str]] = typer.Argument(None, metavar="INPUT", show_default=False,
                                                 help="Files, folders (searched recursively for images and "
                                                      "videos), globs, or - for paths on standard input, one "
                                                      "per line."),
    question: Optional[str] = typer.Argument(None, metavar="QUESTION", show_default=False,
                                             help="The question (- reads it from standard input); with "
                                                  "--question, this is one more INPUT."),
    questions: Optional[List[str]] = typer.Option(None, "--question", "-Q", metavar="TEXT", show_default=False,
                                                  help="A question to ask about every input (repeat for more; "
                                                       "each input is encoded once for all of them)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FILE", show_default=False,
                                         help="Write the JSON lines to this file instead of standard output."),
    resume: bool = typer.Option(False, "--resume",
                                help="Continue --output: skip the inputs it already answers, retry the failed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
    model: Optional[str] = _MODEL,
    offline: bool = _OFFLINE,
    frames: Optional[int] = _FRAMES,
    fps: Optional[float] = _FPS,
    max_frames: Optional[int] = _MAX_FRAMES,
    start: Optional[str] = _START,
    end: Optional[str] = _END,
    decoder: Optional[str] = _DECODER,
    long_video: bool = _LONG_VIDEO,
    max_new_tokens: Optional[int] = _MAX_NEW_TOKENS,
    temperature: Optional[float] = _TEMPERATURE,
    top_p: Optional[float] = _TOP_P,
    top_k: Optional[int] = _TOP_K,
    seed: Optional[int] = _SEED,
    device: Optional[str] = _DEVICE,
    dtype: Optional[str] = _DTYPE,
    attn: Optional[str] = _ATTN,
    quantize: Optional[str] = _QUANTIZE,
    compile: Optional[bool] = _COMPILE,
    prefill_chunk: Optional[int] = _PREFILL_CHUNK,
    system: Optional[str] = _SYSTEM,
    quiet: bool = _QUIET,
    verbose: bool = _VERBOSE,
    debug: bool = _DEBUG,
) -> None:
    """Ask the same question(s) about many images and videos; print one JSON line per input and question:
    path, question, answer, error, kind, frames, timestamps, model, prompt_tokens, answer_tokens, timings.

    The model loads once. An input that fails gets a line with its error and the run goes on; the exit status is
    then 3. Each line is written whole and synced, so a run killed at any moment can be continued with --resume.
    A progress bar with the time left is shown on standard error when it is a terminal.
    """
    from . import batch as batch_mod

    inputs_args = list(inputs or [])
    questions = list(questions or [])
    if questions:
        if question is not None:
            inputs_args.append(question)
    elif question is not None:
        _check_question(question, folders=True)
        questions = [question]
    if not inputs_args or not questions:
        raise UsageError("give the inputs, then the question (or the question with --question)")
    if "-" in questions:
        if "-" in inputs_args:
            raise UsageError("standard input cannot hold both the paths and the question")
        questions = [_read_stdin_question() if q == "-" else q for q in questions]
    if any(not q.strip() for q in questions):
        raise UsageError("the question is empty")
    for q in questions:
        _check_text(q, "the question")
    questions = list(dict.fromkeys(questions))
    if output == "-":
        output = None
    run = _run_from(locals())
    notices = run.notices
    options = batch_mod.BatchOptions(questions=questions, output=output, resume=resume, overwrite=overwrite,
                                     model_name="", system=run.settings.system, long_video=long_video)
    batch_mod.check_output(options)
    inputs, skipped = batch_mod.expand_inputs(inputs_args, warn=notices.warn)
    if skipped:
        notices.info(f"skipped {skipped} file{'s' if skipped != 1 else ''} without an image or video extension")
    if not inputs:
        notices.warn("no images or videos in the inputs: nothing to do")
        return
    done: set = set()
    if resume:
        done, kept, dropped = batch_mod.prepare_resume(output)
        if kept or dropped:
            notices.info(f"resuming {output}: {kept} answered line{'s' if kept != 1 else ''} kept"
                         + (f", {dropped} failed or incomplete dropped (retried)" if dropped else ""))
    options.model_name = run.model_name
    pending = [item for item in inputs if any((item.path, q) not in done for q in questions)]
    if not pending:
        notices.info("every input is already answered")
        return
    if all(item.error for item in pending):
        # Nothing that a model could answer (named files that do not exist): their error
        # lines, without resolving or downloading the model first.
        code = batch_mod.run(inputs, options, engine=None, spec=None, sampling=None, notices=notices, done=done,
                             progress=not quiet)
        raise typer.Exit(code)
    run.open()
    engine = run.load_engine()
    code = batch_mod.run(inputs, options, engine=engine, spec=run.spec, sampling=run.sampling(), notices=notices,
                         done=done, progress=not quiet)
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------------------------------
# llava config …

config_app = typer.Typer(
    cls=_Group,
    name="config",
    help="Show, locate and edit the configuration file (config.toml).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(config_app, name="config")


@config_app.command(cls=_Command, name="show")
def config_show() -> None:
    """Print the settings in effect (file and LLAVA_* variables; flags override them) as TOML, each with where
    it comes from."""
    from . import config

    typer.echo(config.show(warn=Notices().warn))


@config_app.command(cls=_Command, name="path")
def config_path_command() -> None:
    """Print the configuration file's path (LLAVA_CONFIG, else config.toml in the user configuration folder),
    whether or not it exists."""
    from . import config

    typer.echo(str(config.config_path()))


@config_app.command(cls=_Command, name="edit")
def config_edit() -> None:
    """Open the configuration file in $VISUAL or $EDITOR (creating it, every setting commented out, if it does
    not exist), then check what was saved."""
    import subprocess

    from . import config
    from .errors import ConfigError

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


# ---------------------------------------------------------------------------------------
# llava models …

models_app = typer.Typer(
    cls=_Group,
    name="models",
    help="List, download, remove and describe models in the Hugging Face cache.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_app, name="models")


@models_app.command(cls=_Command, name="list")
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


@models_app.command(cls=_Command, name="pull")
def models_pull(
    name: Optional[str] = typer.Argument(None, metavar="NAME", show_default=False,
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
    # pull brings the cache up to date: an unreachable Hub is an error here, not a
    # fallback to the cached revision as for ask, chat and batch.
    checkpoint = open_checkpoint(reference, force=force, progress=not quiet, fallback=False)
    typer.echo(str(checkpoint.folder))


@models_app.command(cls=_Command, name="rm")
def models_rm(
    name: str = typer.Argument(..., metavar="NAME", show_default=False,
                               help="Alias or org/name; org/name@revision removes that revision only."),
) -> None:
    """Delete a model from the Hugging Face cache (for transformers too: the cache is shared)."""
    from .hub import format_bytes
    from .models import remove

    what, freed = remove(name)
    typer.echo(f"deleted {what} ({format_bytes(freed)} freed)")


@models_app.command(cls=_Command, name="info")
def models_info(
    name: Optional[str] = typer.Argument(None, metavar="NAME", show_default=False,
                                         help="Alias, org/name[@revision] or folder; without it, the default "
                                              "model."),
) -> None:
    """Describe a cached or local model: family, parameters, dtype, context length, tokens per
    image and frame, frames per video. Reads local files only."""
    from .config import model_setting
    from .models import info, table

    reference, _ = model_setting(name, warn=Notices().warn)
    typer.echo(table([[label, value] for label, value in info(reference)]))


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
    except (BrokenPipeError, _ReaderGone):
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


if __name__ == "__main__":
    main()
