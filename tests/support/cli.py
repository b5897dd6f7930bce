"""Helpers for the end-to-end CLI tests: the real `llava` in a subprocess, on pipes or on a
pseudo-terminal that is its controlling terminal (so Ctrl-C is a real SIGINT from the
terminal driver and Ctrl-D a real end of input)."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

LLAVA = [sys.executable, "-m", "llava_cli"]
ROOT = Path(__file__).resolve().parents[2]  # the repository
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colour/style sequences only


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment that cannot see the user's own config, history or LLAVA_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_") and k not in ("VISUAL", "EDITOR")}
    config = tmp / "config.toml"
    if not config.exists():
        config.write_text("")
    env.update({"NO_COLOR": "1", "LLAVA_CONFIG": str(config), "XDG_STATE_HOME": str(tmp / "state"),
                "XDG_CONFIG_HOME": str(tmp / "xdg-config"), "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run(args: list[str], env: dict[str, str], *, stdin: str | None = None, timeout: float = 120,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LLAVA, *args], capture_output=True, text=True, input=stdin, env=env,
                          timeout=timeout, cwd=cwd)


def run_llava(*args: str, timeout: float = 120, stdin: str | None = None, env: dict | None = None):
    """`llava *args` in the caller's own environment (LLAVA_MODEL removed, NO_COLOR set, `env`
    on top); unlike `run` + `clean_env` it keeps the user's config and other LLAVA_* settings."""
    full_env = {k: v for k, v in os.environ.items() if k != "LLAVA_MODEL"}
    full_env.update({"NO_COLOR": "1", **(env or {})})
    return subprocess.run([*LLAVA, *args], capture_output=True, text=True, timeout=timeout, input=stdin,
                          env=full_env)


# Two checks of a one-line error, kept apart because they check different things:
# assert_one_line_error also requires an empty stdout; one_line_error can require an exit code.

def assert_one_line_error(result, *needles: str) -> None:
    """Failed with exactly one `llava: error:` line holding every needle, no traceback, and
    nothing on stdout."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("llava: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""


def one_line_error(result, *needles: str, code: int | None = None) -> None:
    """Failed (with exit status `code` when given) with exactly one `llava: error:` line holding
    every needle, and no traceback."""
    assert result.returncode != 0 and (code is None or result.returncode == code), result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llava: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _controlling_terminal() -> None:  # runs in the child, after setsid and the fd dup2s
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """`llava ARGS` on a pseudo-terminal, driven like a person at the keyboard."""

    def __init__(self, args: list[str], env: dict[str, str], *, rows: int = 50, cols: int = 200) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([*LLAVA, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env={**env, "TERM": "xterm"}, start_new_session=True,
                                     preexec_fn=_controlling_terminal, close_fds=True)
        os.close(slave)
        self.raw = b""
        self.cursor = 0  # `expect` searches the screen text after this position

    @property
    def text(self) -> str:
        """Everything shown so far, escape sequences removed, line ends as \\n."""
        decoded = self.raw.decode("utf-8", "replace")
        return _ANSI.sub("", decoded).replace("\r\n", "\n").replace("\r", "")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            return False
        if not chunk:
            return False
        self.raw += chunk
        return True

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        """Wait until ``pattern`` (a regex) shows after the previous match; move past it."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = compiled.search(self.text, self.cursor)
            if match:
                self.cursor = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.5)) and self.proc.poll() is not None
                             and not self._read(0.1)):
                raise AssertionError(f"timed out waiting for {pattern!r}; screen after the last match:\n"
                                     f"{self.text[self.cursor:][-3000:]}")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while self._read(0.05):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            raise AssertionError(f"llava did not exit; screen:\n{self.text[-3000:]}")
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
