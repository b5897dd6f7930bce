"""`llava batch`: the same questions about many inputs, one JSON line each."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..errors import UsageError
from .core import Command, app
from .options import SHARED, RunOptions, shared_options
from .run import Run, check_question, check_text, read_stdin_question


@app.command(cls=Command)
@shared_options
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
    ray: bool = typer.Option(False, "--ray",
                             help="Run on a Ray cluster (pip install 'llava-cli[ray]'): the one at RAY_ADDRESS, "
                                  "else one started on this machine with `ray start`, else a new local one. Lines "
                                  "come in the order answers finish."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", metavar="ADDRESS", show_default=False,
                                              help="With --ray: the cluster's address (host:6379, ray://host:10001, "
                                                   "auto, local)."),
    ray_actors: Optional[int] = typer.Option(None, "--ray-actors", metavar="N", show_default=False,
                                             help="With --ray: model actors, each loading the model once "
                                                  "[default: one per GPU in the cluster, else one per node]."),
    options: RunOptions = SHARED,
) -> None:
    """Ask the same question(s) about many images and videos; print one JSON line per input and question:
    path, question, answer, error, kind, frames, timestamps, model, prompt_tokens, answer_tokens, timings.

    The model loads once. An input that fails gets a line with its error and the run goes on; the exit status is
    then 3. Each line is written whole and synced, so a run killed at any moment can be continued with --resume.
    A progress bar with the time left is shown on standard error when it is a terminal.
    """
    from .. import batch as batch_mod

    inputs_args = list(inputs or [])
    if ray:
        from .. import ray_batch

        ray_batch.require_ray()
    elif ray_address is not None or ray_actors is not None:
        raise UsageError(f"{'--ray-address' if ray_address is not None else '--ray-actors'} goes with --ray")
    if ray_actors is not None and ray_actors < 1:
        raise UsageError(f"--ray-actors must be at least 1, not {ray_actors}")
    questions = list(questions or [])
    if questions:
        if question is not None:
            inputs_args.append(question)
    elif question is not None:
        check_question(question, folders=True)
        questions = [question]
    if not inputs_args or not questions:
        raise UsageError("give the inputs, then the question (or the question with --question)")
    if "-" in questions:
        if "-" in inputs_args:
            raise UsageError("standard input cannot hold both the paths and the question")
        questions = [read_stdin_question() if q == "-" else q for q in questions]
    if any(not q.strip() for q in questions):
        raise UsageError("the question is empty")
    for q in questions:
        check_text(q, "the question")
    questions = list(dict.fromkeys(questions))
    if output == "-":
        output = None
    run = Run.create(options)
    notices = run.notices
    job = batch_mod.BatchOptions(questions=questions, output=output, resume=resume, overwrite=overwrite,
                                 model_name="", system=run.settings.system, long_video=options.long_video,
                                 parallel=run.settings.parallel)
    batch_mod.check_output(job)
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
    job.model_name = run.model_name
    pending = [item for item in inputs if any((item.path, q) not in done for q in questions)]
    if not pending:
        notices.info("every input is already answered")
        return
    if all(item.error for item in pending):
        # Nothing that a model could answer (named files that do not exist): their error
        # lines, without resolving or downloading the model first.
        code = batch_mod.run(inputs, job, engine=None, spec=None, sampling=None, notices=notices, done=done,
                             progress=not options.quiet)
        raise typer.Exit(code)
    run.open()
    if ray:
        code = ray_batch.run(inputs, job, run=run, notices=notices, done=done, progress=not options.quiet,
                             address=ray_address, actors=ray_actors)
        if code:
            raise typer.Exit(code)
        return
    engine = run.load_engine()
    code = batch_mod.run(inputs, job, engine=engine, spec=run.spec, sampling=run.sampling(), notices=notices,
                         done=done, progress=not options.quiet)
    if code:
        raise typer.Exit(code)
