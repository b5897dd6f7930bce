"""`llava chat` end to end: the real CLI on a pseudo-terminal, typed at like a person would.

One conversation covers the issue's list in order (two questions about one video without
encoding it again, Ctrl-C at the prompt, /attach, a multi-line message, Ctrl-C during an
answer, /save, /reset, /load, /system, /help, Ctrl-D), because each start loads the model.
Re-encoding is detected through the --verbose "encoded video …" notice, printed once per
run of the vision tower (Engine.stats.media_encoded), never through timing.
"""

from __future__ import annotations

import json
import re
import time

from support.cli import Terminal, run

NOTICE = re.compile(r"^(encoded |prompt \d+ tokens|/.*: \d+ of \d+ frames|/.*: image|attached )")


def answer_after(term: Terminal, question: str) -> str:
    """Type a question at the prompt (already shown: typing ahead of it would make the
    terminal echo the line twice); return the answer line printed before the next prompt."""
    term.line(question)
    term.expect(re.escape(question) + r"\n")
    start = term.cursor
    term.expect(r"\n>>> ")
    block = term.text[start:term.cursor - len(">>> ")]
    lines = [line for line in block.splitlines() if line.strip() and not NOTICE.match(line)]
    assert lines, f"no answer to {question!r}:\n{block}"
    return lines[0]


def test_a_conversation_on_a_terminal(tiny_model, media_files, tmp_path, env):
    clip, photo = media_files["clip"], media_files["image"]
    first = "Why is this funny?"
    piped = run(["ask", "-m", str(tiny_model), "-n", "12", str(clip), first], env)
    assert piped.returncode == 0, piped.stderr
    expected_first = piped.stdout.rstrip("\n")
    assert expected_first

    term = Terminal(["chat", "-m", str(tiny_model), "-n", "12", "-v", str(clip)], env)
    try:
        term.expect(r">>> ")
        # Greedy: the first answer is the one `llava ask` gives.
        assert answer_after(term, first) == expected_first
        assert term.text.count("encoded video") == 1

        # The second question reuses the cache and does not encode the video again.
        answer_after(term, "What happens next?")
        reused = [int(n) for n in re.findall(r"\((\d+) already in the cache\)", term.text)]
        assert reused[0] == 0 and reused[1] > 1000, reused
        assert term.text.count("encoded video") == 1

        # Ctrl-C at the prompt abandons the line and keeps the session.
        term.send("half a question")
        term.expect(r"half a question")  # readline has echoed the line
        # A SIGINT that lands while readline is still handling the last key, before it is back
        # in select(), is only acted on at the next signal (CPython's readline loop checks
        # signals on EINTR only): any Python REPL then needs a second Ctrl-C. A person never
        # types that fast; wait for readline to go idle as a person would, and press again
        # if a loaded machine still lost the race.
        time.sleep(0.5)
        term.send("\x03")
        try:
            term.expect(r"Use Ctrl \+ d or /bye to exit\.", timeout=5)
        except AssertionError:
            term.send("\x03")
            term.expect(r"Use Ctrl \+ d or /bye to exit\.")
        term.expect(r">>> ")

        # /attach: the image is encoded for the next question, the video is not.
        term.line(f"/attach {photo}")
        term.expect(r"attached image")
        term.expect(r">>> ")
        answer_after(term, "And this picture?")
        assert term.text.count("encoded image") == 1
        assert term.text.count("encoded video") == 1

        # A multi-line message between triple quotes.
        term.line('"""')
        term.expect(r"\.\.\. ")
        term.line("Describe both,")
        term.line("in detail.")
        term.line('"""')
        term.expect(r"\n>>> ")

        # Ctrl-C during a long answer stops it; the session answers the next question.
        term.line("/set max-new-tokens 3000")
        term.expect(r"Set max-new-tokens to 3000\.")
        term.expect(r">>> ")
        term.line("Tell me everything.")
        term.expect(r"Tell me everything\.\n")
        term.expect(r"car")  # the answer has begun
        term.send("\x03")
        term.expect(r"\(stopped\)")
        term.expect(r">>> ")
        term.line("/set max-new-tokens 12")
        term.expect(r">>> ")
        assert answer_after(term, "Are you still there?")

        saved = tmp_path / "conversation.json"
        term.line(f"/save {saved}")
        term.expect(r"Saved the conversation")
        term.expect(r">>> ")

        term.line("/reset")
        term.expect(r"Cleared the conversation\.")
        term.expect(r">>> ")
        answer_after(term, "A fresh start?")
        assert term.text.count("encoded video") == 1

        # /load brings the media back; the unchanged files are not encoded again.
        term.line(f"/load {saved}")
        term.expect(r"Loaded 6 turns")
        term.expect(r">>> ")
        answer_after(term, "Where were we?")
        assert term.text.count("encoded video") == 1
        assert term.text.count("encoded image") == 1

        term.line("/system Answer in one word.")
        term.expect(r"Set the system prompt\.")
        term.expect(r">>> ")
        answer_after(term, "One word?")
        term.line("/help")
        term.expect(r"/attach PATH")
        term.expect(r">>> ")
        term.line("/nonsense")
        term.expect(r"Unknown command '/nonsense'")
        term.expect(r">>> ")

        term.send("\x04")  # Ctrl-D
        assert term.wait() == 0
        assert "Traceback" not in term.text
    finally:
        term.close()

    data = json.loads(saved.read_text())
    roles = [m["role"] for m in data["messages"]]
    assert roles == ["user", "assistant"] * 6
    assert data["messages"][0]["media"][0]["path"] == str(clip)
    assert data["messages"][0]["media"][0]["frames"] == [0, 5, 10, 15, 20, 25, 30, 35]
    assert data["messages"][4]["media"][0]["kind"] == "image"
    assert data["messages"][6]["content"] == "Describe both,\nin detail."
    interrupted = data["messages"][9]
    assert interrupted.get("interrupted") is True and interrupted["content"].startswith("car")
    assert 0 < len(interrupted["content"].split()) < 2500
    assert "interrupted" not in data["messages"][11]
    history = (tmp_path / "state" / "llava" / "history").read_text()
    assert "Why is this funny?" in history and "/set max-new-tokens 3000" in history


def test_chat_reads_a_pipe_without_prompts(tiny_model, media_files, tmp_path, env):
    """Not a terminal: lines are messages and commands; stdout holds only the answers."""
    clip = media_files["clip"]
    script = "Why is this funny?\n/set temperature 0\nAnd then?\n/bye\nnever asked\n"
    result = run(["chat", "-m", str(tiny_model), "-n", "5", str(clip)], env, stdin=script)
    assert result.returncode == 0, result.stderr
    answers = result.stdout.splitlines()
    assert len(answers) == 2 and all(answers), result.stdout
    assert ">>>" not in result.stdout
    assert "Set temperature to 0." in result.stderr


def test_chat_bad_media_is_one_line(tiny_model, tmp_path, env):
    result = run(["chat", "-m", str(tiny_model), str(tmp_path / "missing.mp4")], env, stdin="")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llava: error: ") and "missing.mp4" in lines[0]
