"""`llava ask` end to end, as a user runs it: a real subprocess on real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.checkpoints.next_video import load_reference
from support.cli import LLAVA, assert_one_line_error, run_llava
from support.media import random_bytes
from support.parity import reference_frames


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Path:
    """The default tiny LLaVA-NeXT-Video checkpoint: conftest's session-wide `tiny_model`
    (the same make_next_video defaults; the tests here copy it before changing anything)."""
    return tiny_model


def reference_answer(folder: Path, clip: Path, question: str, max_new_tokens: int) -> str:
    model, processor = load_reference(folder)
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=prompt, videos=[reference_frames(clip, 8)], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def test_ask_prints_exactly_the_reference_answer(tiny, clip):
    question = "Why is this funny?"
    expected = reference_answer(tiny, clip, question, 20)
    assert expected.strip(), "the reference answer is empty: the check would be vacuous"
    result = run_llava("ask", "--model", str(tiny), "--max-new-tokens", "20", str(clip), question)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert "Traceback" not in result.stderr


def test_text_only_question(tiny):
    result = run_llava("ask", "--model", str(tiny), "--max-new-tokens", "5", "Hello there")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")


def test_model_from_environment(tiny, clip):
    result = run_llava("ask", "--max-new-tokens", "3", str(clip), "What?", env={"LLAVA_MODEL": str(tiny)})
    assert result.returncode == 0, result.stderr


def test_transformers_never_imported(tiny, clip):
    code = (
        "import sys\n"
        "from llava_cli.engine import Engine\n"
        "from llava_cli.media import load_media\n"
        f"engine = Engine.load({str(tiny)!r}, device='cpu')\n"
        f"prepared = engine.prepare([load_media({str(clip)!r})], 'why?')\n"
        "text = ''.join(engine.answer(prepared, engine.sampling(max_new_tokens=5)))\n"
        "from llava_cli import cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torchvision')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------
# Bad input: one line on stderr, a non-zero exit, never a traceback.

def test_missing_media_file(tiny, tmp_path):
    missing = tmp_path / "nope.mp4"
    assert_one_line_error(run_llava("ask", "--model", str(tiny), str(missing), "q"), "nope.mp4")


def test_file_that_is_not_media(tiny, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n" * 20)
    assert_one_line_error(run_llava("ask", "--model", str(tiny), str(notes), "q"), "notes.txt")


def test_corrupt_video(tiny, tmp_path):
    bad = random_bytes(tmp_path / "broken.mp4", 50_000)
    assert_one_line_error(run_llava("ask", "--model", str(tiny), str(bad), "q", timeout=60), "broken.mp4")


def test_missing_model_folder(clip, tmp_path):
    assert_one_line_error(run_llava("ask", "--model", str(tmp_path / "no-model"), str(clip), "q"), "no-model")


def test_malformed_config(tiny, clip, tmp_path):
    folder = tmp_path / "bad-config"
    shutil.copytree(tiny, folder)
    (folder / "config.json").write_text('{"model_type": "llava_next_video", "text_config": ')
    assert_one_line_error(run_llava("ask", "--model", str(folder), str(clip), "q"), "config.json")


def test_config_with_wrong_types(tiny, clip, tmp_path):
    folder = tmp_path / "bad-types"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_size"] = "wide"
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_llava("ask", "--model", str(folder), str(clip), "q"), "config.json")


def test_unknown_family(tiny, clip, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"], config["architectures"] = "blip2", ["Blip2ForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run_llava("ask", "--model", str(folder), str(clip), "q"), "blip2", "LLaVA-NeXT-Video")


def test_truncated_weights(tiny, clip, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(tiny, folder)
    shard = folder / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_llava("ask", "--model", str(folder), str(clip), "q"), "model.safetensors")


def test_bad_option_is_a_usage_error(tiny, clip):
    result = run_llava("ask", "--model", str(tiny), "--frames", "0", str(clip), "q")
    assert_one_line_error(result)
    assert result.returncode == 2


def test_no_question(tiny):
    result = run_llava("ask", "--model", str(tiny))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def run_in_pty(args: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run llava with stdin/stdout/stderr on a pseudo-terminal; return (code, screen text)."""
    import pty
    import select

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "LLAVA_MODEL"}
    proc = subprocess.Popen([*LLAVA, *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**env, "TERM": "xterm", "NO_COLOR": "1"})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


def test_answer_streams_on_a_terminal(tiny, clip):
    """On a TTY the answer goes through rich; the text is the same as when piped."""
    args = ["ask", "--model", str(tiny), "--max-new-tokens", "12", str(clip), "Why?"]
    piped = run_llava(*args)
    assert piped.returncode == 0, piped.stderr
    code, screen = run_in_pty(args)
    assert code == 0, screen
    answer = piped.stdout.rstrip("\n")
    assert answer
    assert answer in screen.replace("\r\n", "\n")
