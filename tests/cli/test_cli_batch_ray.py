"""`llava batch --ray` on a real local Ray cluster: started once for this module
(``ray.init(num_cpus=2)``), shut down at its end. The real `llava` runs in a subprocess and
joins it through RAY_ADDRESS, with two model actors.

Checked: the JSONL equals the local `llava batch`'s for the same inputs (answers, fields,
one line per input and question, the bad file's error line); the driver killed with SIGKILL
mid-run, then `--resume --ray`, ends with every (input, question) exactly once; a model
actor killed mid-run is restarted by Ray and its inputs answered once; Ray missing is one
line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.cli import LLAVA, ROOT, clean_env, one_line_error, run
from llava_cli import schema

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

ANSWERER = "MapBatches(Answerer)"  # in the title Ray gives each model actor's process


@pytest.fixture(scope="module")
def cluster():
    """The module's local Ray cluster; its address for the CLI's RAY_ADDRESS."""
    saved = dict(os.environ)
    ray.init(num_cpus=2, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        os.environ.clear()  # ray.init sets RAY_AUTH_MODE for this process
        os.environ.update(saved)


@pytest.fixture()
def ray_env(cluster, tmp_path):
    # Ray sends its token only when told to (RAY_AUTH_MODE) to an explicit address.
    return clean_env(tmp_path, RAY_ADDRESS=cluster, RAY_AUTH_MODE="token")


def make_inputs(folder: Path, media_files, count: int) -> Path:
    folder.mkdir(parents=True)
    sources = [media_files["clip"], media_files["clip2"], media_files["image"]]
    for index in range(count):
        source = sources[index % len(sources)]
        shutil.copy(source, folder / f"in{index:02d}{source.suffix}")
    return folder


def records_of(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def by_key(records: list[dict]) -> dict:
    """(path, question) → the record without its timings (they differ run to run)."""
    out = {}
    for record in records:
        key = (record["path"], record["question"])
        assert key not in out, f"{key} written twice"
        out[key] = {k: v for k, v in record.items() if k != "timings"}
    return out


def actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if ANSWERER in title:
                assert "Map(_decode)" not in title, "decoding was fused into the model actors"
                pids.append(int(entry.name))
    return pids


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([*LLAVA, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_lines(path: Path, process: subprocess.Popen, count: int = 1, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_bytes().count(b"\n") if path.exists() else 0
        if lines >= count:
            return lines
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"no {count} lines in {timeout} s")


def signalled_after_first_line(args: list[str], out: Path, env: dict, sig: int) -> tuple[int, str]:
    """`llava batch --ray ARGS -o OUT`, sent ``sig`` once its first line is out: its exit
    status and stderr."""
    driver = start(["batch", "--ray", *args, "-o", str(out)], env)
    try:
        wait_for_lines(out, driver)
        driver.send_signal(sig)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    return driver.returncode, stderr


def test_same_lines_as_local_batch(tiny_model, media_files, tmp_path, ray_env, env):
    folder = make_inputs(tmp_path / "inputs", media_files, 5)
    (folder / "broken.mp4").write_bytes(os.urandom(40_000))
    args = ["-m", str(tiny_model), "-n", "6", str(folder), str(tmp_path / "missing.mp4"),
            "-Q", "What is this?", "-Q", "Describe it."]
    local = run(["batch", *args, "-o", str(tmp_path / "local.jsonl")], env)
    assert local.returncode == 3, local.stderr
    result = run(["batch", "--ray", "--ray-actors", "2", "--parallel", "2", *args, "-o",
                  str(tmp_path / "ray.jsonl")], ray_env, timeout=300)
    assert result.returncode == 3, result.stderr  # as locally: some lines hold errors
    assert "Traceback" not in result.stderr
    ours, theirs = records_of(tmp_path / "ray.jsonl"), records_of(tmp_path / "local.jsonl")
    assert len(ours) == len(theirs) == 7 * 2
    assert by_key(ours) == by_key(theirs)
    errors = {Path(r["path"]).name for r in ours if r["error"] is not None}
    assert errors == {"broken.mp4", "missing.mp4"}
    for record in ours:
        assert schema.check(record, schema.BATCH_FIELDS) == []
        if record["error"] is None:
            assert record["answer"] and schema.check(record["timings"], schema.BATCH_TIMINGS_FIELDS) == []
            if record["question"] == "What is this?":  # the media was read and encoded for this line
                assert record["timings"]["media_s"] > 0 and record["timings"]["encode_s"] > 0
    # Each failure is also a warning on the driver's stderr, as locally; Ray's own log lines
    # stay off it.
    assert "broken.mp4" in result.stderr and "missing.mp4" in result.stderr
    assert "answered 10 of 14 (4 failed)" in result.stderr
    for line in filter(str.strip, result.stderr.splitlines()):
        assert line.startswith(("llava: warning: ", "answered ")), line


def test_ctrl_c_keeps_the_finished_lines(tiny_model, media_files, tmp_path, ray_env):
    folder = make_inputs(tmp_path / "inputs", media_files, 16)
    out = tmp_path / "out.jsonl"
    args = ["-m", str(tiny_model), "-n", "48", "--ray-actors", "2", "--parallel", "1", str(folder), "Caption it."]
    code, stderr = signalled_after_first_line(args, out, ray_env, signal.SIGINT)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "(raylet)" not in stderr, stderr
    records = records_of(out)  # whole lines only
    assert 1 <= len(records) < 16 and all(r["error"] is None for r in records)


def test_driver_killed_then_resumed(tiny_model, media_files, tmp_path, ray_env, env):
    folder = make_inputs(tmp_path / "inputs", media_files, 16)
    out = tmp_path / "out.jsonl"
    args = ["-m", str(tiny_model), "-n", "48", "--ray-actors", "2", "--parallel", "1", str(folder), "Caption it."]
    signalled_after_first_line(args, out, ray_env, signal.SIGKILL)
    kept = len(records_of(out)) if out.read_bytes().endswith(b"\n") else None
    assert kept is not None and 1 <= kept < 16, "the driver was not killed mid-run"
    resumed = run(["batch", "--ray", "--resume", *args, "-o", str(out)], ray_env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} answered line" in resumed.stderr
    records = records_of(out)
    assert len(records) == 16 and all(r["error"] is None for r in records)
    local = run(["batch", *[a for a in args if a not in ("--ray-actors", "2")], "-o", str(tmp_path / "local.jsonl")],
                env)
    assert local.returncode == 0, local.stderr
    assert by_key(records) == by_key(records_of(tmp_path / "local.jsonl"))


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the actor's process in /proc")
def test_dead_actor_is_restarted_and_its_inputs_answered_once(tiny_model, media_files, tmp_path, ray_env):
    folder = make_inputs(tmp_path / "inputs", media_files, 24)
    out = tmp_path / "out.jsonl"
    driver = start(["batch", "--ray", "-m", str(tiny_model), "-n", "48", "--ray-actors", "2", "--parallel", "1",
                    str(folder), "Caption it.", "-o", str(out)], ray_env)
    try:
        seen = wait_for_lines(out, driver)
        victims = actor_pids()
        assert len(victims) == 2, victims  # --ray-actors 2, each its own process
        os.kill(victims[0], signal.SIGKILL)
        assert seen < 24, "the run ended before an actor could be killed"
        _, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    records = records_of(out)
    assert len(by_key(records)) == 24 and all(r["error"] is None for r in records)


def test_workers_do_not_import_transformers(cluster):
    @ray.remote
    def probe():
        import sys

        import ray.data  # noqa: F401 - what the stages run beside
        import llava_cli.ray_batch  # noqa: F401
        import llava_cli.engine  # noqa: F401
        import llava_cli.session  # noqa: F401

        return sorted(m for m in sys.modules if m.split(".")[0] == "transformers")

    assert ray.get(probe.remote(), timeout=120) == []


def test_ray_missing_is_one_line(tiny_model, clip, tmp_path):
    fake = tmp_path / "no-ray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = clean_env(tmp_path, PYTHONPATH=f"{fake}{os.pathsep}{ROOT}")
    result = run(["batch", "--ray", "-m", str(tiny_model), str(clip), "q"], env)
    one_line_error(result, "--ray needs Ray", "pip install 'llava-cli[ray]'", code=2)


def test_ray_options_need_ray(tiny_model, clip, env):
    one_line_error(run(["batch", "--ray-actors", "2", "-m", str(tiny_model), str(clip), "q"], env),
                   "--ray-actors goes with --ray", code=2)
    one_line_error(run(["batch", "--ray-address", "h:1", "-m", str(tiny_model), str(clip), "q"], env),
                   "--ray-address goes with --ray", code=2)
    one_line_error(run(["batch", "--ray", "--ray-actors", "0", "-m", str(tiny_model), str(clip), "q"], env),
                   "--ray-actors must be at least 1", code=2)


def test_nothing_at_the_address_is_one_line(tiny_model, clip, env):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(["batch", "--ray", "--ray-address", f"127.0.0.1:{port}", "-m", str(tiny_model), str(clip), "q"],
                 env, timeout=60)
    one_line_error(result, f"127.0.0.1:{port}", "nothing answers there", code=1)
