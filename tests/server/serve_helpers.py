"""Helpers for the `llava serve` tests: the server in a subprocess (``start_server``; one
per test module), stopped with Ctrl-C (SIGINT), and that stop checked (``check_clean_stop``:
exit 130, one line, no traceback); request bodies (``user``, ``data_url``).

The server listens on ``--port 0`` (a free port it picks and prints), so modules never race
for a port; the address is read from its first line on stderr.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.cli import LLAVA

SERVING = re.compile(r"serving .* at (http://127\.0\.0\.1:(\d+))/v1")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    port: int
    log: Path  # its stderr
    out: Path  # its stdout (nothing is ever written there)
    key: str | None = None

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def headers(self, key: str | None = "default") -> dict[str, str]:
        key = self.key if key == "default" else key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def post(self, body=None, *, path: str = "/v1/chat/completions", key: str | None = "default", content=None,
             timeout: float = 120, **kwargs):
        import httpx

        return httpx.post(self.url + path, json=body, content=content, headers=self.headers(key), timeout=timeout,
                          **kwargs)

    def get(self, path: str, *, key: str | None = "default", timeout: float = 30):
        import httpx

        return httpx.get(self.url + path, headers=self.headers(key), timeout=timeout)

    def health(self) -> dict:
        response = self.get("/health", key=None)
        assert response.status_code == 200, response.text
        return response.json()

    def client(self):
        """The real OpenAI Python client, pointed at this server."""
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key or "unused", max_retries=0, timeout=120)

    def stop(self) -> None:
        """Ctrl-C: the server stops at once, with one line and exit status 130."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server did not stop on SIGINT:\n{self.stderr}")


def start_server(args: list[str], env: dict[str, str], folder: Path, *, key: str | None = None,
                 timeout: float = 90) -> Server:
    log, out = folder / "server.err", folder / "server.out"
    with log.open("w") as err_file, out.open("w") as out_file:
        proc = subprocess.Popen([*LLAVA, "serve", "--port", "0", *args], stdout=out_file, stderr=err_file,
                                stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    while True:
        match = SERVING.search(log.read_text())
        if match:
            return Server(proc, match.group(1), int(match.group(2)), log, out, key)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.05)


def check_clean_stop(server: Server) -> None:
    server.stop()
    stderr = server.stderr
    assert server.proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("llava: error:")]
    assert errors == ["llava: error: interrupted: the server stopped"], stderr
    assert server.out.read_text() == ""


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def user(*parts) -> list[dict]:
    """One user message: media parts (URLs; an image is a data: URL or ends in .png) and text."""
    content = []
    for part in parts:
        if part.startswith(("data:", "file:", "http:", "https:")):
            kind = "image_url" if part.startswith("data:image/") or part.endswith(".png") else "video_url"
            content.append({"type": kind, kind: {"url": part}})
        else:
            content.append({"type": "text", "text": part})
    return [{"role": "user", "content": content}]


def wait_for(predicate, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)
