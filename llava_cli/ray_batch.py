"""`llava batch --ray`: the same batch on a Ray cluster, through Ray Data.

The driver (the `llava batch` process) expands the inputs and reads ``--resume`` exactly as
a local batch does (commands/batch.py), then builds one Ray Data pipeline:

    from_items(pending inputs)              paths, questions: small rows in the object store
      .map(_Decode)          CPU tasks       the frames, read where the task runs
      .map_batches(_Answerer) actor pool     one model load per actor; each batch answered
                                             on the actor's generation core (--parallel)
      .iter_rows()           the driver      lines written by the local batch's writer

Only the driver writes the JSONL, with the same kill-safe writer (whole lines, fsync), in
the order answers come back (completion order: no input waits on a slower one before
it). ``--resume`` keys on (path, question), so it is exact whatever the order. A failed
input is an error line, never a failed job: every failure is caught in the stage where it
happens. Ray Data restarts a dead actor and retries its batch; the driver writes each
(input, question) once, whatever a retry sends twice.

Nothing here schedules work: Ray Data does (streaming execution, backpressure on the
decoded frames in the object store, actor restarts and task retries).
"""

from __future__ import annotations

import json
import logging
import math
import os
import contextlib
import functools
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from .batch import BatchOptions, Input, Sink, _is_url, _problem, answer
from .errors import EXIT_USAGE, LlavaError
from .jsonl import JsonlOutput, json_line

RAY_MISSING = "--ray needs Ray on this machine: pip install 'llava-cli[ray]'"
class RayMissing(LlavaError):
    exit_code = EXIT_USAGE


def require_ray() -> None:
    """Fail at once, before the model is resolved, when Ray is not installed."""
    _import_ray()


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayMissing(RAY_MISSING) from None
    return ray


@dataclass
class Job:
    """What every actor needs to answer like the driver would: small and picklable. The
    model is given by its reference and by the folder the driver resolved it to: an actor
    on a machine that has that folder (this one, or a shared filesystem) loads it from
    there; elsewhere it resolves the reference in its own machine's cache."""

    options: BatchOptions
    settings: Any  # config.Settings
    reference: str
    folder: str
    offline: bool
    seed: int | None
    spec: Any  # media.FrameSpec
    threads: int | None  # torch threads per actor on CPU clusters


def run(inputs: list[Input], options: BatchOptions, *, run, notices, done: set[tuple[str, str]], progress: bool,
        address: str | None, actors: int | None) -> int:
    """Answer every (input, question) not in ``done`` on a Ray cluster; the lines go to
    ``options.output`` as they come back. ``run``: the driver's commands.run.Run, opened
    (model resolved, frame settings fixed). The exit status, as for a local batch."""
    ray = _import_ray()
    with _ray_output_aside(notices):
        started = _connect(ray, address, notices)
        try:
            return _run(ray, inputs, options, run=run, notices=notices, done=done, progress=progress,
                        actors=actors)
        finally:
            if started:
                ray.shutdown()


@contextlib.contextmanager
def _ray_output_aside(notices):
    """Ray's C++ core, its Python threads and the processes it starts print their own log
    lines on standard error (they are in Ray's session logs too,
    /tmp/ray/session_latest/logs). While Ray runs, file descriptor 2 goes to /dev/null and
    llava's own console (messages, progress bar) writes to a copy of the real one.
    --verbose leaves Ray's lines on."""
    if notices.verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    ours = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors=sys.stderr.errors)
    console = notices.console
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    console.file = ours
    try:
        yield
    finally:
        ours.flush()
        console.file = None  # back to sys.stderr, itself back on the real fd 2 below
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        ours.close()


def _connect(ray, address: str | None, notices) -> bool:
    """Join the cluster (None: ray.init()'s own choice: RAY_ADDRESS, else a cluster started
    on this machine with `ray start`, else a new local one). True when this process started
    or joined it and must leave it at the end."""
    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.ERROR)
    where = address or os.environ.get("RAY_ADDRESS")
    _check_reachable(where)
    try:
        with notices.status("connecting to Ray…"):
            ray.init(address=address, log_to_driver=False,
                     logging_level=logging.ERROR)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray's ConnectionError, RuntimeError, ValueError…
        why = " ".join(str(exc).split()) or exc.__class__.__name__
        if _auth_refused(exc):
            why = ("it wants its authentication token: set RAY_AUTH_MODE=token and put the cluster's token "
                   "in ~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on the head node prints it)")
        raise LlavaError(f"cannot start or join the Ray cluster{f' at {where}' if where else ''}: "
                         f"{why[:300]}") from None
    return True


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """An address with a port that nothing answers on fails in seconds, not after Ray's
    own retries (minutes)."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray's own message says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise LlavaError(f"cannot join the Ray cluster at {address}: nothing answers there "
                         f"({exc.strerror or exc}); is it started (`ray start --head`)?") from None


def _auth_refused(exc: BaseException | None) -> bool:
    """Ray's ConnectionError hides the cause: a cluster with token authentication that
    this process gave no token (Ray never sends one to an explicit address unasked)."""
    while exc is not None:
        if exc.__class__.__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _run(ray, inputs, options, *, run, notices, done, progress, actors) -> int:
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own
    context.execution_options.preserve_order = False

    rows, total = [], 0
    for item in inputs:
        questions = [q for q in options.questions if (item.path, q) not in done]
        if not questions:
            continue
        total += len(questions)
        location = item.path if _is_url(item.path) else os.path.abspath(os.path.expanduser(item.path))
        # Paths travel as bytes: a name that is not UTF-8 cannot be an Arrow string.
        rows.append({"path": os.fsencode(item.path), "location": os.fsencode(location),
                     "questions": json.dumps(questions), "error": item.error or ""})

    plan = _plan(ray, actors, notices)
    job = Job(options=options, settings=run.settings, reference=run.reference, folder=str(run.checkpoint.folder),
              offline=run.offline, seed=run.seed, spec=run.spec, threads=plan.threads)
    # The job rides on a subclass made for this run, not as constructor arguments: Ray
    # keeps those in the object store and cannot restart an actor once they are gone.
    answerer = type("Answerer", (_Answerer,), {"job": job})
    dataset = (ray.data.from_items(rows)
               .map(functools.partial(_decode, run.spec), **plan.decode)  # tasks, not actors
               .map_batches(answerer, batch_size=_batch_size(len(rows), options.parallel, plan.actors),
                            batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=plan.actors), **plan.actor))
    notices.detail(f"Ray: {plan.describe}")

    sink = Sink(JsonlOutput(options.output, append=options.resume), notices, total, progress=progress)
    written: set[tuple[str, str]] = set()
    try:
        for row in dataset.iter_rows():
            path = os.fsdecode(row["path"])
            for line in bytes(row["lines"]).splitlines():
                record = json.loads(line)
                key = (path, record["question"])
                if key in written:  # a retried batch answered it again
                    continue
                written.add(key)
                sink.write(record, path)
    except KeyboardInterrupt:
        raise
    except LlavaError:
        raise
    except Exception as exc:  # noqa: BLE001 - the pipeline itself failed (a lost node, the object store)
        first = " ".join(str(exc).split())
        raise LlavaError(f"the Ray pipeline failed: {first[:300]} "
                         f"(finished lines are in the output; --resume continues)") from None
    finally:
        sink.close()
    return sink.finish()


@dataclass
class _Plan:
    actors: int
    actor: dict  # ray remote args of each answering actor
    decode: dict  # of each decoding task
    threads: int | None
    describe: str


def _plan(ray, actors: int | None, notices) -> _Plan:
    """Resources: an actor per GPU on a cluster with GPUs (``num_gpus=1`` each, decoding on
    the CPUs, one CPU per task). Without GPUs the actors run on CPUs, and the CPUs are
    shared out so that the decoding stage keeps one share: each actor reserves CPUs /
    (actors + 1), and torch in it uses its part of its machine's cores. Default actors: one
    per GPU, else one per node."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    if gpus:
        count = actors or gpus
        if count > gpus:
            notices.warn(f"--ray-actors {count} but the cluster has {gpus} GPU{'s' if gpus != 1 else ''} now: "
                         f"the rest wait for GPUs to join")
        return _Plan(count, {"num_gpus": 1}, {"num_cpus": 1}, None,
                     f"{count} actor{'s' if count != 1 else ''}, one GPU each; decoding on {cpus:g} CPUs")
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    count = actors or max(1, nodes)
    share = cpus / (count + 1)
    # Ray takes fractions of a CPU below 1, whole CPUs above.
    share = float(int(share)) if share >= 1 else max(0.01, round(share, 2))
    # Two decoding tasks at once in the share left to them. (Resources that differ from the
    # actors' also keep Ray Data from fusing the decoding into the actors.)
    decode = min(1.0, round(share / 2, 2))
    # Torch threads: the actor's part of its machine's cores (machines taken alike), not its
    # reservation: decoding is short bursts beside it, and one actor on a 2-core machine
    # would otherwise run on one core.
    threads = max(1, int(cpus / max(1, nodes) // math.ceil(count / max(1, nodes))))
    return _Plan(count, {"num_cpus": share}, {"num_cpus": decode}, threads,
                 f"{count} CPU actor{'s' if count != 1 else ''} of {share:g} CPU each ({threads} torch "
                 f"thread{'s' if threads != 1 else ''}), "
                 f"decoding tasks {decode:g} CPU; {cpus:g} CPUs in the cluster")


def _batch_size(inputs: int, parallel: int, actors: int) -> int:
    """Inputs per actor call: twice the core's slots, so that a call's tail (its last
    answers, decoding alone) is short beside its full part; fewer when there are not
    enough inputs to give every actor a call."""
    return max(1, min(2 * max(1, parallel), math.ceil(inputs / actors)))


def _decode(spec, row: dict) -> dict:
    """The CPU stage: one input's frames, read where the task runs. Its failure (a damaged
    file, a path this machine cannot see) is the input's error, not the task's."""
    from .media import load_media

    out = {"path": row["path"], "questions": row["questions"], "error": row["error"], "media": None, "load_s": 0.0}
    if row["error"]:
        return out
    path, location = os.fsdecode(row["path"]), os.fsdecode(row["location"])
    if not _is_url(location) and not os.path.exists(location):
        out["error"] = (f"{path}: not readable on the Ray worker {socket.gethostname()} (no such file): media "
                        f"must be on a filesystem every node shares, or a URL")
        return out
    begun = time.perf_counter()
    try:
        out["media"] = load_media(location, spec)
    except Exception as exc:  # noqa: BLE001 - one bad input must not fail the job
        out["error"] = _problem(exc).replace(location, path)  # the input as the user named it
    out["load_s"] = time.perf_counter() - begun
    return out


class _Answerer:
    """One model load per actor; each batch of decoded inputs answered on the actor's
    generation core with the local batch's own loop (batch.answer), its lines returned as
    bytes (JSON lines) per input."""

    job: Job  # set on the subclass made per run

    def __init__(self) -> None:
        job = self.job
        self.error: str | None = None
        try:
            if job.threads:
                import torch

                torch.set_num_threads(job.threads)
            self.run = _open_run(job)
            self.engine = self.run.load_engine()
            self.sampling = self.run.sampling()
        except Exception as exc:  # noqa: BLE001 - every input then says why, instead of a restart loop
            self.error = f"the model did not load on the Ray worker {socket.gethostname()}: {_problem(exc)}"

    def __call__(self, batch: dict) -> dict:
        from .session import MediaEntry

        job = self.job
        inputs, entries, done = [], {}, set()
        for index in range(len(batch["path"])):
            path = os.fsdecode(batch["path"][index])
            asked = set(json.loads(batch["questions"][index]))
            done.update((path, q) for q in job.options.questions if q not in asked)
            error = batch["error"][index] or self.error
            inputs.append(Input(path, error or None))
            if not error:
                entries[path] = MediaEntry(batch["media"][index], job.spec, None, load_s=float(batch["load_s"][index]))
        lines: dict[str, list[bytes]] = {item.path: [] for item in inputs}

        def emit(record: dict, path: str) -> None:
            lines[path].append(json_line(record))

        answer(inputs, job.options, engine=None if self.error else self.engine, spec=job.spec,
               sampling=None if self.error else self.sampling, done=done, emit=emit, decode=entries.__getitem__)
        return {"path": batch["path"],
                "lines": [b"".join(lines[item.path]) for item in inputs]}


def _open_run(job: Job):
    """The driver's Run, rebuilt on the worker: the checkpoint from the driver's folder when
    this machine has it, else resolved from the reference in this machine's cache."""
    from .commands.run import Run
    from .families import family_for
    from .hub import open_checkpoint
    from .render import Notices

    run = Run(Notices(quiet=True), job.settings, job.reference, job.offline, None, None, job.seed,
              job.options.long_video)
    if os.path.isdir(job.folder):
        run.checkpoint = open_checkpoint(job.folder, offline=True, progress=False)
    else:
        run.checkpoint = open_checkpoint(job.reference, offline=job.offline, progress=False)
    run.family = family_for(run.checkpoint)
    run.spec = job.spec
    return run


