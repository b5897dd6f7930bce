"""`llava chat`: a conversation about some media, on a terminal or a script."""

from __future__ import annotations

from typing import List, Optional

import typer

from .core import Command, app
from .options import SHARED, RunOptions, shared_options
from .run import Run


@app.command(cls=Command)
@shared_options
def chat(
    media_paths: Optional[List[str]] = typer.Argument(None, metavar="MEDIA", show_default=False,
                                                      help="Images and videos for the first question."),
    options: RunOptions = SHARED,
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
    from ..repl import ChatSettings, Repl
    from ..session import ChatSession, MediaCache

    from ..media import check_sources

    media_paths = media_paths or []
    run = Run.create(options)
    notices = run.notices
    check_sources(media_paths)  # before the model is resolved, perhaps downloaded
    if run.settings.host:
        _chat_server(run, options, media_paths)
        return
    run.open()
    cache = MediaCache(None)
    load = _loader(cache, notices)
    entries = [load(path, run.spec) for path in media_paths]
    engine = run.load_engine()
    cache.engine = engine
    session = ChatSession(engine, system=run.settings.system, long_video=options.long_video, cache=cache)
    for entry in entries:
        session.attach(entry)
    repl = Repl(session, ChatSettings(run.spec, run.sampling(), run.model_name), notices, load=load)
    if repl.interactive and not options.quiet:
        attached = f"; {len(entries)} attached for the first question" if entries else ""
        notices.info(f"llava chat with {run.model_name}{attached}. /help for commands, Ctrl-D or /bye to leave.")
    code = repl.run()
    if code:
        raise typer.Exit(code)


def _chat_server(run: Run, options: RunOptions, media_paths: list[str]) -> None:
    """The conversation through a running `llava serve`: media decoded here for the notices
    and the frame settings, sent inline each turn; the model stays on the server."""
    from ..generate import Sampling
    from ..media import FrameSpec
    from ..remote_chat import RemoteChatSession
    from ..repl import ChatSettings, Repl
    from ..session import MediaCache

    notices, settings = run.notices, run.settings
    if options.model is not None:
        notices.warn(f"--model {options.model} ignored: the server at {settings.host} answers with its own model")
    # The server's family may have its own frame count; this side does not know the model,
    # so it asks for --frames (else 8, most families' count) explicitly.
    spec = FrameSpec(frames=settings.frames or 8, fps=settings.fps, max_frames=settings.max_frames,
                     start=run.start, end=run.end, decoder=settings.decoder)
    cache = MediaCache(None)
    load = _loader(cache, notices)
    session = RemoteChatSession(settings.host, system=settings.system, cache=cache)
    for path in media_paths:
        session.attach(load(path, spec))
    sampling = Sampling.resolve({}, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, top_k=settings.top_k, seed=run.seed)
    repl = Repl(session, ChatSettings(spec, sampling, f"the server at {settings.host}"), notices, load=load)
    if repl.interactive and not options.quiet:
        notices.info(f"llava chat with the server at {settings.host}. /help for commands, Ctrl-D or /bye to leave.")
    code = repl.run()
    if code:
        raise typer.Exit(code)


def _loader(cache, notices):
    """Decode (or take from ``cache``) one media file, printing its notices: the chat's
    attachments at start and /attach alike."""
    def load(path: str, spec):
        entry = cache.load(path, spec)
        for note in entry.media.notices:
            notices.warn(note)
        notices.detail(entry.media.describe())
        return entry

    return load
