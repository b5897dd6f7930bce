"""`llava ask`: one question about some media, the answer streamed (or --json)."""

from __future__ import annotations

import json
import time
from typing import List, Optional

import typer

from ..errors import UsageError
from ..render import AnswerWriter, Notices
from .core import Command, app
from .options import SHARED, RunOptions, shared_options
from .run import Run, check_question, check_text, read_stdin_question


@app.command(cls=Command)
@shared_options
def ask(
    media_paths: Optional[List[str]] = typer.Argument(None, metavar="MEDIA", show_default=False,
                                                      help="Image and video files, in prompt order."),
    question: str = typer.Argument(..., metavar="QUESTION", show_default=False,
                                   help="The question; - reads it from standard input."),
    options: RunOptions = SHARED,
    json_output: bool = typer.Option(False, "--json",
                                     help="Print one JSON object (answer, model, media, token counts, timings) "
                                          "instead of the answer."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the answer when it is complete, at once."),
) -> None:
    """Answer one QUESTION about MEDIA (videos and images); text-only without MEDIA."""
    from ..media import check_sources

    media_paths = media_paths or []
    check_text(question, "the question")
    if not media_paths:
        check_question(question)
    if question == "-":
        question = read_stdin_question()
    if not question.strip():
        raise UsageError("the question is empty")
    run = Run.create(options)
    notices = run.notices
    check_sources(media_paths)  # before the model is resolved, perhaps downloaded
    if run.settings.host:
        _ask_server(run, options, media_paths, question, json_output=json_output, no_stream=no_stream)
        return
    run.open(has_video=bool(media_paths))
    started = time.perf_counter()
    media = [run.load_media(path) for path in media_paths]
    media_s = time.perf_counter() - started
    engine = run.load_engine()
    sampling = run.sampling()
    prepared = engine.prepare(media, question, system=run.settings.system, long_video=options.long_video)
    if prepared.stretch_notice:
        notices.warn(prepared.stretch_notice)
    writer = AnswerWriter(live=not (no_stream or json_output))
    answer = engine.answer(prepared, sampling)
    try:
        for piece in answer:
            writer.write(piece)
    except BaseException:
        if writer.wrote and not json_output:
            writer.end()  # end a partial answer's line (Ctrl-C); an error before any text prints none
        raise
    if not json_output:
        writer.end()
    timings = answer.result.timings
    timings.load_s = engine.load_s
    _verbose_timings(notices, timings)
    if json_output:
        typer.echo(json.dumps(_ask_json(run, writer.text, media, media_s, timings), ensure_ascii=False))


def _ask_json(run: Run, answer: str, media: list, media_s: float, timings) -> dict:
    from ..schema import media_record

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


def _ask_server(run: Run, options: RunOptions, media_paths: list[str], question: str, *, json_output: bool,
                no_stream: bool) -> None:
    """The question through a running `llava serve`: no model here, the answer streamed back."""
    import os

    from ..client import ServerAnswer, build_request, stream_answer

    settings = run.settings
    if options.model is not None:
        run.notices.warn(f"--model {options.model} ignored: the server at {settings.host} answers with its own model")
    frames = {"frames": settings.frames, "fps": settings.fps, "max_frames": settings.max_frames,
              "start": options.start, "end": options.end}
    sampling = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                "top_p": settings.top_p, "seed": options.seed}
    body = build_request(media_paths, question, system=settings.system, frames=frames, sampling=sampling)
    summary = ServerAnswer()
    started = time.perf_counter()
    writer = AnswerWriter(live=not (no_stream or json_output))
    try:
        for piece in stream_answer(settings.host, body, api_key=os.environ.get("LLAVA_API_KEY"), summary=summary):
            writer.write(piece)
    except BaseException:
        if writer.wrote and not json_output:
            writer.end()
        raise
    if not json_output:
        writer.end()
    run.notices.detail(f"answered by the server at {settings.host} ({summary.model}): prompt "
                       f"{summary.prompt_tokens} tokens, answer {summary.answer_tokens} tokens "
                       f"({summary.stop_reason}) in {time.perf_counter() - started:.2f} s")
    if json_output:
        typer.echo(json.dumps({"answer": writer.text, "model": summary.model, "server": settings.host,
                               "media": summary.media, "prompt_tokens": summary.prompt_tokens,
                               "answer_tokens": summary.answer_tokens, "stop_reason": summary.stop_reason},
                              ensure_ascii=False))


def _verbose_timings(notices: Notices, timings) -> None:
    rate = f", {timings.tokens_per_s:.1f} tokens/s" if timings.tokens_per_s else ""
    notices.detail(f"prompt {timings.prompt_tokens} tokens, answer {timings.answer_tokens} tokens "
                   f"({timings.stop_reason}); load {timings.load_s:.2f} s, encode {timings.encode_s:.2f} s, "
                   f"prefill {timings.prefill_s:.2f} s, decode {timings.decode_s:.2f} s{rate}")
