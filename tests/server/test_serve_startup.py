"""How `llava serve` starts and stops: each start-up error is one line and a non-zero exit
(a port in use, a bad --allowed-media-path or --keep-alive, an unknown model); SIGTERM stops
it cleanly (exit 0); its --help imports neither torch nor the web stack."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from serve_helpers import start_server
from support.cli import one_line_error, run


def test_a_port_in_use_is_one_line(tiny_model, server_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["serve", "-m", str(tiny_model), "--port", str(port)], server_env, timeout=60)
    one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "in use", code=1)


def test_bad_options_are_one_line(tiny_model, server_env, tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    for args, needle in ((["--allowed-media-path", str(tmp_path / "none")], "does not exist"),
                         (["--allowed-media-path", str(afile)], "is not a folder"),
                         (["--keep-alive", "soon"], "--keep-alive"),
                         (["--port", "70000"], "--port")):
        result = run(["serve", "-m", str(tiny_model), *args], server_env, timeout=60)
        one_line_error(result, needle, code=2)


def test_an_unknown_model_is_one_line(server_env, tmp_path):
    result = run(["serve", "-m", str(tmp_path / "no-model"), "--port", "0"], server_env, timeout=60)
    one_line_error(result, "model folder not found", code=1)


def test_sigterm_stops_it_cleanly(tiny_model, server_env, tmp_path):
    server = start_server(["-m", str(tiny_model), "--keep-alive", "-1"], server_env, tmp_path)
    assert server.health()["keep_alive"] == "never"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.stderr
    assert "Traceback" not in server.stderr and "llava: error" not in server.stderr


def test_help_imports_neither_torch_nor_the_web_stack(server_env):
    code = ("import sys\nsys.argv = ['llava', 'serve', '--help']\nfrom llava_cli.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'starlette', 'uvicorn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=server_env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--allowed-media-path" in result.stdout and "--keep-alive" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
