"""`llava batch` end to end: folders, globs, stdin, JSONL output, errors, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.cli import LLAVA, run
from llava_cli import schema
from llava_cli.batch import trusted_lines
from support.media import random_bytes


@pytest.fixture()
def folder(tmp_path, media_files) -> Path:
    """Two good videos (one in a subfolder), an image, a corrupt .mp4, a text file, a hidden file."""
    root = tmp_path / "inputs"
    (root / "sub").mkdir(parents=True)
    shutil.copy(media_files["clip"], root / "a.mp4")
    shutil.copy(media_files["clip2"], root / "sub" / "b.mp4")
    shutil.copy(media_files["image"], root / "c.png")
    random_bytes(root / "broken.mp4", 40_000)
    (root / "notes.txt").write_text("not media\n")
    (root / ".DS_Store").write_bytes(b"\0" * 64)
    return root


def lines_of(text: str) -> list[dict]:
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def check_types(record: dict) -> None:
    assert schema.check(record, schema.BATCH_FIELDS) == []
    if record["timings"] is not None:
        assert schema.check(record["timings"], schema.BATCH_TIMINGS_FIELDS) == []


def test_folder_one_line_per_media_file(tiny_model, folder, tmp_path, env):
    out = tmp_path / "out.jsonl"
    result = run(["batch", "-m", str(tiny_model), "-n", "4", str(folder), "What is this?", "-o", str(out)], env)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    records = lines_of(out.read_text())
    by_path = {Path(r["path"]).name: r for r in records}
    # notes.txt is skipped for its extension (and counted); .DS_Store for being hidden.
    assert sorted(by_path) == ["a.mp4", "b.mp4", "broken.mp4", "c.png"]
    assert "skipped 1 file without an image or video extension" in result.stderr
    for record in records:
        check_types(record)
        assert record["question"] == "What is this?"
    broken = by_path["broken.mp4"]
    assert broken["answer"] is None and "broken.mp4" in broken["error"] and broken["frames"] == []
    for name in ("a.mp4", "b.mp4", "c.png"):
        assert by_path[name]["error"] is None and by_path[name]["answer"]
        assert by_path[name]["answer_tokens"] == 4
    assert by_path["a.mp4"]["kind"] == "video" and by_path["a.mp4"]["frames"] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert by_path["c.png"]["kind"] == "image" and by_path["c.png"]["frames"] == [0]
    # The error is also reported on stderr, one line, and there is no traceback.
    assert "Traceback" not in result.stderr
    assert sum("broken.mp4" in line for line in result.stderr.splitlines()) == 1

    # The output file is not overwritten by accident.
    again = run(["batch", "-m", str(tiny_model), str(folder), "q", "-o", str(out)], env)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_several_questions_share_one_encoding(tiny_model, media_files, env):
    clip, image = str(media_files["clip"]), str(media_files["image"])
    result = run(["batch", "-m", str(tiny_model), "-n", "3", "-v", clip, image,
                  "-Q", "What is it?", "-Q", "Is it funny?", "-Q", "What colour?"], env)
    assert result.returncode == 0, result.stderr
    records = lines_of(result.stdout)
    assert [(r["path"], r["question"]) for r in records] == [
        (p, q) for p in (clip, image) for q in ("What is it?", "Is it funny?", "What colour?")]
    # The verbose notice comes from the engine's encode counter: one per input.
    assert result.stderr.count("encoded video") == 1
    assert result.stderr.count("encoded image") == 1
    for record in records:
        check_types(record)
    assert records[0]["timings"]["encode_s"] > 0 and records[1]["timings"]["encode_s"] == 0


def test_paths_from_stdin(tiny_model, folder, env):
    command = (f"find {folder} -name '*.mp4' | sort | {' '.join(map(str, LLAVA))} batch "
               f"-m {tiny_model} -n 2 - 'Why?'")
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 3, result.stderr
    records = lines_of(result.stdout)
    assert sorted(Path(r["path"]).name for r in records) == ["a.mp4", "b.mp4", "broken.mp4"]
    assert all(r["question"] == "Why?" for r in records)


def test_globs_and_missing_inputs(tiny_model, folder, tmp_path, env):
    result = run(["batch", "-m", str(tiny_model), "-n", "2", str(folder / "**" / "*.mp4"),
                  str(tmp_path / "nowhere.mp4"), "Why?"], env)
    assert result.returncode == 3
    records = lines_of(result.stdout)
    names = [Path(r["path"]).name for r in records]
    assert names == ["a.mp4", "broken.mp4", "b.mp4", "nowhere.mp4"]
    assert "no such file" in records[-1]["error"]


def test_resume_after_sigkill(tiny_model, folder, tmp_path, env):
    """Kill the run as soon as its first line is written; --resume then answers every
    input exactly once (the partial line a kill can leave is not trusted)."""
    for copy in range(4):  # more inputs, so the kill lands mid-run
        shutil.copy(folder / "a.mp4", folder / f"copy{copy}.mp4")
    out = tmp_path / "out.jsonl"
    args = ["batch", "-m", str(tiny_model), "-n", "400", str(folder), "Why?", "-o", str(out)]
    proc = subprocess.Popen([*LLAVA, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    first_run = out.read_bytes()
    assert 1 <= first_run.count(b"\n") < 8, "the kill did not land mid-run"
    # A kill can also cut a line short: simulate the worst one, a line without its newline.
    with open(out, "ab") as handle:
        handle.write(b'{"path": "' + str(folder / "c.png").encode() + b'", "question": "Why?", "answ')

    result = run([*args, "--resume"], env)
    assert result.returncode == 3, result.stderr  # broken.mp4 still fails
    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.splitlines()]
    paths = [r["path"] for r in records]
    assert len(paths) == len(set(paths)) == 8, paths  # every input exactly once
    answered = [r for r in records if r["error"] is None]
    assert len(answered) == 7 and all(r["answer_tokens"] == 400 for r in answered)
    # Lines already answered before the kill were kept as they were.
    kept = first_run[: first_run.rfind(b"\n") + 1]
    assert data.startswith(b"".join(line + b"\n" for line in trusted_lines(kept)[0]))

    # Resuming a finished file answers nothing more (the failed input is retried).
    again = run([*args, "--resume", "-v"], env)
    assert again.returncode == 3
    assert again.stderr.count("encoded") == 0
    assert len(out.read_bytes().splitlines()) == 8


def test_trusted_lines():
    good = b'{"path": "a", "question": "q", "answer": "x", "error": null}'
    failed = b'{"path": "b", "question": "q", "answer": null, "error": "bad"}'
    data = b"\n".join([good, failed, b"{not json", good]) + b'\n{"path": "c", "quest'
    kept, dropped = trusted_lines(data)
    assert kept == [good, good] and dropped == 3


def test_usage_errors(tiny_model, media_files, tmp_path, env):
    clip = str(media_files["clip"])
    for args, needle in ((["batch", clip], "question"),
                         (["batch", clip, "q", "--resume"], "--output"),
                         (["batch", "-", "-"], "standard input")):
        result = run([*args, "-m", str(tiny_model)], env, stdin="")
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], result.stderr


def test_progress_bar_on_a_terminal(tiny_model, folder, tmp_path, env):
    from support.cli import Terminal

    out = tmp_path / "bar.jsonl"
    term = Terminal(["batch", "-m", str(tiny_model), "-n", "2", str(folder), "Why?", "-o", str(out)], env)
    try:
        term.expect(r"answering.*4/4.*ETA")
        assert term.wait() == 3
    finally:
        term.close()
    assert len(out.read_text().splitlines()) == 4


def test_parallel_gives_the_same_lines_in_the_same_order(tiny_model, folder, media_files, tmp_path, env):
    """--parallel 1 answers one question at a time; --parallel 4 runs them together in the
    generation core (different prompt lengths, a broken input among them, two questions
    each). The lines, answers included, are the same and in input order."""
    for copy in range(3):  # more inputs than slots, so finished slots are refilled mid-run
        shutil.copy(media_files["clip2" if copy % 2 else "clip"], folder / f"extra{copy}.mp4")
    outputs = {}
    for parallel in ("1", "4"):
        out = tmp_path / f"out{parallel}.jsonl"
        result = run(["batch", "-m", str(tiny_model), "-n", "6", "--parallel", parallel, str(folder),
                      "-Q", "What is this?", "-Q", "Why?", "-o", str(out)], env)
        assert result.returncode == 3, result.stderr  # broken.mp4
        assert "Traceback" not in result.stderr
        outputs[parallel] = lines_of(out.read_text())
    strip = lambda record: {k: v for k, v in record.items() if k != "timings"}  # noqa: E731
    assert [strip(r) for r in outputs["4"]] == [strip(r) for r in outputs["1"]]
    answered = [r for r in outputs["4"] if r["error"] is None]
    assert len(answered) == 2 * 6 and all(r["answer_tokens"] == 6 for r in answered)
    # Prompts of different lengths shared the core (the tiny model's words hardly depend on
    # the prompt; tests/unit/test_scheduler.py compares batched and lone tokens and logits).
    assert len({r["prompt_tokens"] for r in answered}) > 1


def test_parallel_is_a_setting(tiny_model, media_files, env, tmp_path):
    bad = run(["batch", "-m", str(tiny_model), "--parallel", "0", str(media_files["image"]), "q"], env)
    assert bad.returncode == 2 and "--parallel must be at least 1" in bad.stderr
    config = tmp_path / "bad-parallel.toml"
    config.write_text("parallel = 0\n")
    from_file = run(["batch", "-m", str(tiny_model), str(media_files["image"]), "q"], {**env, "LLAVA_CONFIG": str(config)})
    assert from_file.returncode != 0 and "parallel" in from_file.stderr and "Traceback" not in from_file.stderr
    from_env = run(["batch", "-m", str(tiny_model), "-n", "2", str(media_files["image"]), "q"],
                   {**env, "LLAVA_PARALLEL": "2"})
    assert from_env.returncode == 0, from_env.stderr
    asked = run(["ask", "--parallel", "2", "q"], env)  # batch only
    assert asked.returncode == 2 and "No such option" in asked.stderr
