"""The man page and shell completions are generated from the live CLI and must stay fresh.

If a test here fails after you changed a command or option, run:

    python scripts/gen_docs.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from llava_cli.cli import app

ROOT = Path(__file__).parents[2]
GEN = ROOT / "scripts" / "gen_docs.py"
MAN = ROOT / "man" / "llava.1"
BASH = ROOT / "completions" / "llava.bash"
ZSH = ROOT / "completions" / "_llava"
FISH = ROOT / "completions" / "llava.fish"
REGEN = "generated docs are stale: run `python scripts/gen_docs.py` and commit the result"


def _live_cli():
    """[(command name, [option names])] of the live app; '' is the root."""
    group = typer.main.get_command(app)
    ctx = group.make_context("llava", [], resilient_parsing=True)
    out = []

    def options(command, context):
        names = []
        for param in command.get_params(context):
            if getattr(param, "hidden", False) or not hasattr(param, "is_flag"):
                continue  # hidden, or a positional argument
            names += list(param.opts) + list(param.secondary_opts)
        return names

    def walk(parent, parent_ctx, prefix):
        for name in parent.list_commands(parent_ctx):
            command = parent.get_command(parent_ctx, name)
            if command is None or getattr(command, "hidden", False):
                continue
            sub_ctx = command.make_context(name, [], parent=parent_ctx, resilient_parsing=True)
            full = f"{prefix} {name}".strip()
            out.append((full, options(command, sub_ctx)))
            if hasattr(command, "commands"):  # a group: its commands too
                walk(command, sub_ctx, full)

    out.append(("", options(group, ctx)))
    walk(group, ctx, "")
    return out


def test_generated_docs_are_fresh():
    result = subprocess.run([sys.executable, str(GEN), "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{REGEN}\n{result.stdout}{result.stderr}"


def test_every_command_and_option_is_documented_and_completed():
    texts = {path.name: path.read_text(encoding="utf-8") for path in (MAN, BASH, ZSH, FISH)}
    live = _live_cli()
    assert any(name == "ask" for name, _ in live)
    missing = []
    for command, options in live:
        if command:
            for fname, text in texts.items():
                if command not in text:
                    missing.append(f"{fname}: command {command}")
        for opt in options:
            forms = {
                MAN.name: opt.replace("-", "\\-"),
                BASH.name: opt,
                ZSH.name: opt,
                FISH.name: f"-l {opt[2:]}" if opt.startswith("--") else f"-s {opt[1:]}",
            }
            for fname, form in forms.items():
                if form not in texts[fname]:
                    missing.append(f"{fname}: {command or 'llava'} {opt}")
    assert not missing, f"{REGEN}; missing:\n" + "\n".join(missing)


def test_completions_offer_known_value_choices():
    choices = {"--device": ["auto", "cpu", "cuda", "mps"],
               "--dtype": ["auto", "float32", "float16", "bfloat16"]}
    for path in (BASH, ZSH, FISH):
        text = path.read_text(encoding="utf-8")
        for values in choices.values():
            assert " ".join(values) in text, f"{path.name} lacks {values}; {REGEN}"


def test_man_page_has_the_sections():
    text = MAN.read_text(encoding="utf-8")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "ENVIRONMENT",
                    "EXIT STATUS", "EXAMPLES", "FILES", "SEE ALSO"):
        assert f".SH {section}" in text or f'.SH "{section}"' in text, section
    for var in ("LLAVA_MODEL", "LLAVA_DEBUG"):
        assert f"\\fB{var}\\fR" in text


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_man_page_renders_without_warnings():
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def _bash_complete(words: str, cword: int) -> list[str]:
    script = (f"source {BASH}; COMP_WORDS=({words}); COMP_CWORD={cword}; _llava; "
              'printf "%s\\n" "${COMPREPLY[@]}"')
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_completes():
    assert subprocess.run(["bash", "-n", str(BASH)], capture_output=True).returncode == 0
    assert "--device" in _bash_complete("llava ask --dev", 2)
    assert "ask" in _bash_complete("llava ''", 1)
    assert _bash_complete("llava ask --dtype bf", 3) == ["bfloat16"]
    assert sorted(_bash_complete("llava ask --device = ''", 4)) == ["auto", "cpu", "cuda", "mps"]
    # --model completes directories only; MEDIA completes files.
    assert "scripts" in _bash_complete("llava ask --model scr", 3)
    assert _bash_complete("llava ask --model pyproj", 3) == []
    assert _bash_complete("llava ask pyproj", 2) == ["pyproject.toml"]
    # --model also offers the model aliases; llava models … completes its commands and names.
    assert _bash_complete("llava ask --model next-video-7", 3) == ["next-video-7b", "next-video-7b-dpo"]
    assert sorted(_bash_complete("llava models ''", 2)) == ["--help", "-h", "info", "list", "pull", "rm"]
    assert _bash_complete("llava models pull --f", 3) == ["--force"]
    assert _bash_complete("llava models pull ov-0.5", 3) == ["ov-0.5b", "ov-0.5b-si"]
    assert "scripts" in _bash_complete("llava models info scr", 3)
