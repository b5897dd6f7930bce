"""The harness for the adversarial corpus: one hostile input, the real `llava` in its own
process, and what a user would see.

Each case runs as a subprocess with a wall-clock limit (a hang is killed and reported, never
waited on) and its peak RSS read from wait4, so the corpus asserts the promise of the
project for every input: an answer, or exactly one actionable ``llava: error:`` line and a
non-zero exit, no traceback, no "internal error" (that line means a bug), no hang, bounded
memory.

    outcome = run_case(["ask", "-m", str(folder), "hi"], env)
    assert_clean_error(outcome)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

LLAVA = [sys.executable, "-m", "llava_cli"]
CASE_TIMEOUT_S = 60.0
MEMORY_LIMIT_MB = 3000  # a tiny checkpoint's run stays far below; runaway reads do not


@dataclass
class Outcome:
    args: list
    code: int | None  # None: killed after the time limit
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float

    @property
    def timed_out(self) -> bool:
        return self.code is None

    def describe(self) -> str:
        return (f"llava {' '.join(map(str, self.args))[:300]} -> exit {self.code} in {self.wall_s:.1f} s, "
                f"{self.peak_rss_mb:.0f} MB\nstderr: {self.stderr[-2000:]}")


def run_case(args: list, env: dict, *, stdin: bytes | str | None = None, timeout: float = CASE_TIMEOUT_S,
             cwd: str | None = None) -> Outcome:
    """``llava ARGS`` in a fresh process; killed (with its process group) past ``timeout``."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if data is not None:
            inp.write(data)
            inp.seek(0)
        started = time.monotonic()
        proc = subprocess.Popen([*LLAVA, *[os.fsencode(a) if isinstance(a, bytes) else a for a in args]],
                                stdin=inp if data is not None else subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, cwd=cwd, start_new_session=True)
        code, usage = None, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, _, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = code if code is not None else -9
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return Outcome(list(args), code, stdout, stderr, wall, usage.ru_maxrss / 1024 if usage else 0.0)


def assert_clean_error(outcome: Outcome, *needles: str, code: int | None = None) -> str:
    """Exactly one ``llava: error:`` line (plus, at most, warnings before it), a non-zero
    exit (``code`` when given), no traceback, no internal error, no hang, bounded memory.
    Returns the error line."""
    assert not outcome.timed_out, "hung: " + outcome.describe()
    assert outcome.code not in (0, None), "no error: " + outcome.describe()
    if code is not None:
        assert outcome.code == code, outcome.describe()
    assert "Traceback" not in outcome.stderr, outcome.describe()
    assert "internal error" not in outcome.stderr, outcome.describe()
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("llava: error: ")]
    others = [line for line in outcome.stderr.splitlines()
              if line.strip() and not line.startswith(("llava: error: ", "llava: warning: "))]
    assert len(errors) == 1 and not others, "not one error line: " + outcome.describe()
    assert outcome.peak_rss_mb < MEMORY_LIMIT_MB, "memory: " + outcome.describe()
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in: " + outcome.describe()
    return errors[0]


def assert_answer_or_clean_error(outcome: Outcome) -> None:
    """For inputs that may legitimately work (a damaged file FFmpeg can still read):
    either an answer (exit 0, something on stdout) or a clean error."""
    if outcome.code == 0:
        assert outcome.stdout.strip(), "exit 0 without an answer: " + outcome.describe()
        assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, outcome.describe()
        assert outcome.peak_rss_mb < MEMORY_LIMIT_MB, "memory: " + outcome.describe()
        return
    assert_clean_error(outcome)
