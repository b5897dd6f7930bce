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
    run.open()
    cache = MediaCache(None)
    entries = [cache.load(path, run.spec) for path in media_paths]
    for entry in entries:
        for note in entry.media.notices:
            notices.warn(note)
        notices.detail(entry.media.describe())
    engine = run.load_engine()
    cache.engine = engine
    session = ChatSession(engine, system=run.settings.system, long_video=options.long_video, cache=cache)
    for entry in entries:
        session.attach(entry)

    def load(path: str, spec):
        entry = cache.load(path, spec)
        for note in entry.media.notices:
            notices.warn(note)
        notices.detail(entry.media.describe())
        return entry

    repl = Repl(session, ChatSettings(run.spec, run.sampling(), run.model_name), notices, load=load)
    if repl.interactive and not options.quiet:
        attached = f"; {len(entries)} attached for the first question" if entries else ""
        notices.info(f"llava chat with {run.model_name}{attached}. /help for commands, Ctrl-D or /bye to leave.")
    code = repl.run()
    if code:
        raise typer.Exit(code)
