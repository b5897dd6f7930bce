"""`llava ask` output options (--json, -, --no-stream, -q), settings precedence
(config.toml < LLAVA_* < flags), `llava config show|path|edit`, and NO_COLOR."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from support.cli import SGR, Terminal, one_line_error, run
from llava_cli import config as settings_table, schema

# `llava config show` aligns the keys to the longest one.
KEY_WIDTH = max(len(setting.key) for setting in settings_table.SETTINGS)


def shown_line(key: str, rest: str) -> str:
    return f"{key:<{KEY_WIDTH}} = {rest}"


def test_question_from_stdin_no_stream_and_json(tiny_model, media_files, env):
    clip = str(media_files["clip"])
    base = ["ask", "-m", str(tiny_model), "-n", "6", clip]
    plain = run([*base, "Why is this funny?"], env)
    assert plain.returncode == 0, plain.stderr
    piped = run([*base, "-"], env, stdin="Why is this funny?\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == plain.stdout
    whole = run([*base, "--no-stream", "-q", "Why is this funny?"], env)
    assert whole.stdout == plain.stdout and whole.stderr == ""

    result = run([*base, "--json", "Why is this funny?"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert schema.check(data, schema.ASK_FIELDS) == []
    assert schema.check(data["timings"], schema.TIMINGS_FIELDS) == []
    assert len(data["media"]) == 1 and schema.check(data["media"][0], schema.MEDIA_FIELDS) == []
    assert data["answer"] + "\n" == plain.stdout
    assert data["model"] == str(tiny_model) and data["family"] == "llava_next_video"
    assert data["media"][0] == {"path": clip, "kind": "video", "frames": [0, 5, 10, 15, 20, 25, 30, 35],
                                "timestamps": pytest.approx([i / 24 for i in range(0, 40, 5)], abs=1e-5)}
    assert data["answer_tokens"] == 6 and data["stop_reason"] == "length"
    assert data["prompt_tokens"] > 8 * 144  # 144 tokens per frame, plus the text
    assert data["timings"]["load_s"] > 0 and data["timings"]["tokens_per_s"] > 0

    empty = run([*base, "-"], env, stdin="  \n")
    one_line_error(empty, "standard input", code=2)


def test_settings_precedence_file_env_flag(tiny_model, media_files, tmp_path, env):
    """max_new_tokens and frames from config.toml, then LLAVA_*, then the flags."""
    config = tmp_path / "config.toml"
    config.write_text(f'model = "{tiny_model}"\nmax_new_tokens = 3\nframes = 2\n')
    clip = str(media_files["clip"])

    def ask(extra_env: dict, *flags: str) -> dict:
        result = run(["ask", "--json", *flags, clip, "q"], {**env, **extra_env})
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    from_file = ask({})
    assert (from_file["answer_tokens"], len(from_file["media"][0]["frames"])) == (3, 2)
    from_env = ask({"LLAVA_MAX_NEW_TOKENS": "5", "LLAVA_FRAMES": "3"})
    assert (from_env["answer_tokens"], len(from_env["media"][0]["frames"])) == (5, 3)
    from_flags = ask({"LLAVA_MAX_NEW_TOKENS": "5", "LLAVA_FRAMES": "3"}, "-n", "7", "--frames", "4")
    assert (from_flags["answer_tokens"], len(from_flags["media"][0]["frames"])) == (7, 4)
    # fps and frames are one choice: LLAVA_FPS replaces the file's frames = 2.
    by_rate = ask({"LLAVA_FPS": "2"})
    assert by_rate["media"][0]["frames"] == [0, 12, 24, 36]

    shown = run(["config", "show"], {**env, "LLAVA_MAX_NEW_TOKENS": "5"})
    assert shown.returncode == 0, shown.stderr
    assert shown_line("max_new_tokens", "5  # LLAVA_MAX_NEW_TOKENS") in shown.stdout
    assert shown_line("frames", f"2  # {config}") in shown.stdout
    assert "# temperature" in shown.stdout and "unset" in shown.stdout


def test_time_instruction_setting(tiny_model, media_files, tmp_path, env):
    """--time-instruction: unset follows config.json's add_time_instruction; the flag,
    LLAVA_TIME_INSTRUCTION and config.toml turn it on or off; a family that does not take
    it says so once and answers as usual."""
    from support.checkpoints.onevision import make_onevision

    folder = make_onevision(tmp_path / "tiny-llava-video", "trained", tied=True, seed=3)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "add_time_instruction": True}))
    clip = str(media_files["clip"])

    def prompt_tokens(model, extra_env: dict, *flags: str) -> int:
        result = run(["ask", "--json", "-m", str(model), "-n", "1", "--frames", "4", *flags, clip, "q"],
                     {**env, **extra_env})
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["prompt_tokens"]

    declared = prompt_tokens(folder, {})
    off = prompt_tokens(folder, {}, "--no-time-instruction")
    assert declared > off  # the instruction's words
    assert prompt_tokens(folder, {"LLAVA_TIME_INSTRUCTION": "0"}) == off
    assert prompt_tokens(folder, {"LLAVA_TIME_INSTRUCTION": "0"}, "--time-instruction") == declared
    (tmp_path / "config.toml").write_text("time_instruction = false\n")
    assert prompt_tokens(folder, {"LLAVA_CONFIG": str(tmp_path / "config.toml")}) == off

    other = run(["ask", "-m", str(tiny_model), "-n", "2", "--time-instruction", clip, "q"], env)
    assert other.returncode == 0, other.stderr
    assert other.stderr.count("time instruction") == 1 and "ignored for LLaVA-NeXT-Video" in other.stderr


def test_bad_settings_are_one_line(tiny_model, media_files, tmp_path, env):
    clip = str(media_files["clip"])
    config = tmp_path / "config.toml"
    config.write_text('frames = "many"\n')
    one_line_error(run(["ask", "-m", str(tiny_model), clip, "q"], env), str(config), "frames", "whole number",
                   code=1)
    config.write_text("")
    one_line_error(run(["ask", "-m", str(tiny_model), clip, "q"], {**env, "LLAVA_TEMPERATURE": "hot"}),
                   "LLAVA_TEMPERATURE", code=1)
    one_line_error(run(["ask", "-m", str(tiny_model), "--fps", "0", clip, "q"], env), "--fps", code=2)
    one_line_error(run(["ask", "-m", str(tiny_model), "--dtype", "int3", clip, "q"], env), "--dtype", code=2)
    one_line_error(run(["ask", "-m", str(tiny_model), "--start", "1:75", clip, "q"], env), "1:75", code=2)

    config.write_text('framez = 4\n')
    shown = run(["config", "show"], env)
    assert shown.returncode == 0 and "unknown setting 'framez' (did you mean 'frames'?)" in shown.stderr


def test_config_path_and_edit(tmp_path, env):
    target = tmp_path / "new" / "config.toml"
    local = {**env, "LLAVA_CONFIG": str(target)}
    # LLAVA_CONFIG naming a missing file is an error for commands that read it, but
    # `config path` and `config edit` are how one gets there.
    path = run(["config", "path"], local)
    assert path.returncode == 0 and path.stdout.strip() == str(target)
    shown = run(["config", "show"], local)
    assert shown.returncode == 0 and "(does not exist)" in shown.stdout
    script = tmp_path / "editor.py"
    script.write_text("import sys\nopen(sys.argv[-1], 'a').write('frames = 12\\n')\n")
    editor = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    edited = run(["config", "edit"], {**local, "EDITOR": editor})
    assert edited.returncode == 0, edited.stderr
    text = target.read_text()
    assert "# temperature = 0.2" in text and text.endswith("frames = 12\n")
    assert shown_line("frames", f"12  # {target}") in run(["config", "show"], local).stdout
    # An edit that breaks the file is reported in one line.
    script.write_text("import sys\nopen(sys.argv[-1], 'a').write('top_k = -1\\n')\n")
    one_line_error(run(["config", "edit"], {**local, "EDITOR": editor}), "top_k", code=1)


@pytest.mark.parametrize("no_color", ["1", ""])
def test_no_color(tmp_path, env, no_color):
    """NO_COLOR (any non-empty value) removes every colour and style sequence; the
    same warning on a terminal without it is coloured (so the check is not vacuous)."""
    (tmp_path / "config.toml").write_text("colour = true\n")
    term = Terminal(["config", "show"], {**env, "NO_COLOR": no_color})
    try:
        term.expect(r"unknown setting 'colour'")
        assert term.wait() == 0
    finally:
        term.close()
    styled = SGR.findall(term.raw.decode("utf-8", "replace"))
    assert (styled == []) if no_color else styled
