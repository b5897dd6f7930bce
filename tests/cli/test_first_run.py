"""What a newcomer meets first, through the real `llava` in a subprocess: help where a
command is incomplete, media checked before any model is fetched, a media path alone is a
missing question, a closed pipe exits 141, ollama's verbs point to ours, and a run that
never imports what it does not use (torch._dynamo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.cli import LLAVA, ROOT, clean_env, run


class Listener:
    """A TCP port on 127.0.0.1 that counts connections: a Hub that must not be asked."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture()
def hub_env(tmp_path):
    """An empty model cache whose Hub is a listener that counts every connection."""
    listener = Listener()
    try:
        yield clean_env(tmp_path, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{listener.port}",
                        HF_HUB_DISABLE_TELEMETRY="1"), listener
    finally:
        listener.close()


def one_line_error(result, *needles: str, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llava: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, commands", [
    ([], ["ask", "chat", "batch", "models", "config"]),
    (["models"], ["list", "pull", "rm", "info"]),
    (["config"], ["show", "path", "edit"]),
])
def test_an_incomplete_command_prints_its_help(args, commands, env):
    result = run(args, env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: llava {' '.join(args)}".rstrip() + " [OPTIONS] COMMAND"), result.stdout
    listed = result.stdout.split("Commands:")[1].split()
    for command in commands:
        assert command in listed
    assert result.stderr == ""


def test_help_names_arguments_as_unix_tools_do(env):
    ask = run(["ask", "--help"], env, timeout=30)
    assert ask.returncode == 0
    assert "Usage: llava ask [OPTIONS] [MEDIA]... QUESTION\n" in ask.stdout
    batch = run(["batch", "--help"], env, timeout=30)
    assert "Usage: llava batch [OPTIONS] [INPUT]... [QUESTION]\n" in batch.stdout
    for text in (ask.stdout, batch.stdout, run(["chat", "--help"], env, timeout=30).stdout,
                 run(["models", "info", "--help"], env, timeout=30).stdout):
        assert "{" not in text and "<" not in text, text
    assert "  MEDIA...  " in ask.stdout and "  QUESTION  " in ask.stdout
    assert "-m, --model MODEL " in ask.stdout and "-f, --frames N " in ask.stdout


@pytest.mark.parametrize("verb, ours", [
    ("pull", "llava models pull"), ("list", "llava models list"), ("show", "llava models info"),
    ("rm", "llava models rm"), ("run", "llava chat"),
])
def test_ollama_verbs_point_to_ours(verb, ours, env):
    result = run([verb, "ov-0.5b"], env, timeout=30)
    line = one_line_error(result, f"no such command '{verb}'", f"`{ours}`", code=2)
    assert "did you mean" in line


def test_missing_media_fails_before_the_model_is_resolved(hub_env, tmp_path):
    env, hub = hub_env
    ask = run(["ask", "nothere.mp4", "why?"], env, cwd=tmp_path, timeout=60)
    one_line_error(ask, "no such file: nothere.mp4", code=1)
    chat = run(["chat", "nothere.mp4"], env, cwd=tmp_path, stdin="", timeout=60)
    one_line_error(chat, "no such file: nothere.mp4", code=1)
    batch = run(["batch", "nothere.mp4", "gone.png", "why?"], env, cwd=tmp_path, timeout=60)
    assert batch.returncode == 3, batch.stderr
    lines = [json.loads(line) for line in batch.stdout.splitlines()]
    assert [(r["path"], r["answer"]) for r in lines] == [("nothere.mp4", None), ("gone.png", None)]
    assert all("no such file" in r["error"] for r in lines)
    assert "Traceback" not in batch.stderr
    assert hub.connections == 0, "the Hub was asked before the media were checked"
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))


def test_a_media_path_alone_is_a_missing_question(hub_env, tmp_path, media_files):
    env, hub = hub_env
    clip = str(media_files["clip"])
    for args in (["ask", clip], ["ask", "holiday.mp4"], ["batch", clip, clip], ["batch", clip, str(tmp_path)]):
        result = run(args, env, cwd=tmp_path, timeout=60)
        one_line_error(result, "missing argument QUESTION", code=2)
    assert hub.connections == 0
    # A question that merely mentions a file name is still a question (here: a text-only
    # one, whose model is missing).
    words = run(["ask", "-m", str(tmp_path / "none"), "what is in holiday.mp4?"], env, timeout=60)
    one_line_error(words, "model folder not found", code=1)


def test_a_closed_pipe_exits_141(tiny_model, env):
    proc = subprocess.Popen([*LLAVA, "ask", "-m", str(tiny_model), "-n", "3000", "--temperature", "0",
                             "Tell me a long story."], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(20)
    proc.stdout.close()  # like `| head -c 20`
    code = proc.wait(timeout=120)
    stderr = proc.stderr.read().decode()
    assert len(first) == 20
    assert code == 141, stderr
    assert stderr == "", stderr


_MODULES_PROBE = """
import atexit, sys
path = sys.argv[1]
def report():
    with open(path, "w") as out:
        out.write(" ".join(m for m in ("torch._dynamo", "torch._inductor", "transformers") if m in sys.modules))
atexit.register(report)
if sys.argv[2] == "--preload":
    import torch._dynamo
    del sys.argv[2]
sys.argv = ["llava"] + sys.argv[2:]
from llava_cli.cli import main
main()
"""


def _modules_after(args: list[str], env, tmp_path, preload: bool = False) -> tuple[str, subprocess.CompletedProcess]:
    report = tmp_path / "modules.txt"
    result = subprocess.run([sys.executable, "-c", _MODULES_PROBE, str(report), *(["--preload"] if preload else []),
                             *args], capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    return report.read_text(), result


def test_a_run_imports_no_dynamo_unless_compiling(tiny_model, media_files, env, tmp_path):
    args = ["ask", "-m", str(tiny_model), "-n", "3", str(media_files["clip"]), "why?"]
    imported, result = _modules_after(args, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert imported == "", f"a plain run imported {imported}"
    # The probe sees dynamo when it is there: with --compile (the decode step is wrapped,
    # and with one new token never compiled) and when imported up front.
    compiled, result = _modules_after([*args[:4], "1", *args[5:], "--compile"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "torch._dynamo" in compiled
    preloaded, _ = _modules_after(args, env, tmp_path, preload=True)
    assert "torch._dynamo" in preloaded


def test_commands_that_run_no_model_do_not_import_torch(tiny_model, env, tmp_path):
    for args in (["--help"], ["ask", "--help"], ["ask"], ["config", "path"], ["models", "list", "--aliases"],
                 ["models", "list"], ["models", "info", str(tiny_model)]):
        probe = tmp_path / "probe.txt"
        code = ("import atexit, sys\n"
                f"atexit.register(lambda: open({str(probe)!r}, 'w').write(str('torch' in sys.modules)))\n"
                "sys.argv = ['llava'] + sys.argv[1:]\n"
                "from llava_cli.cli import main\nmain()\n")
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                                timeout=60)
        assert result.returncode in (0, 2), result.stderr
        assert probe.read_text() == "False", f"llava {' '.join(args)} imported torch"


def test_4bit_on_cpu_runs_layers_the_fused_kernel_cannot_take(tmp_path, env):
    """One KV head at width 64 makes 64→16 k/v projections: bitsandbytes' AVX512-BF16 CPU
    kernel cannot repack them (it wants output features in multiples of 32), which was
    `internal error: AssertionError: N must be divisible by block_n`."""
    pytest.importorskip("bitsandbytes")
    from support.checkpoints.next_video import TinySpec, make_next_video

    folder = make_next_video(tmp_path / "kv1", TinySpec(kv_heads=1))
    for mode in ("4bit", "4bit-dq"):
        result = run(["ask", "-m", str(folder), "--device", "cpu", "--quantize", mode, "-n", "4", "hello?"], env,
                     timeout=180)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() and "error" not in result.stderr
