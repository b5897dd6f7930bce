"""`llava chat`: the read-answer loop around a ChatSession, in the manner of ollama's REPL.

On a terminal, lines are read with the standard ``readline`` module (editing keys, and a
history kept in ``platformdirs.user_state_dir("llava")/history``). When standard input is
not a terminal, lines are read from it as they come, without prompts, so a conversation
can be scripted: ``printf 'why?\\n/bye\\n' | llava chat clip.mp4``.

Answers go to standard output; everything else (command feedback, notices, errors) to
standard error. Ctrl-C during an answer stops it and keeps the session; Ctrl-C at the
prompt clears the line; Ctrl-D (end of input) or /bye ends the session with status 0.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, TextIO

from .errors import LlavaError, UsageError
from .generate import Sampling
from .media import FrameSpec
from .render import AnswerWriter, Notices
from .session import ChatSession, MediaEntry, read_conversation, save_conversation

HELP = """\
Commands:
  /attach PATH...          attach images or videos to your next message
  /reset                   forget the conversation (the system prompt and settings stay)
  /system [TEXT]           set the system prompt (without TEXT: remove it)
  /save FILE               save the conversation as JSON
  /load FILE               load a conversation saved with /save
  /set frames N            frames sampled from videos attached from now on
  /set temperature T       0 = greedy; > 0 samples
  /set max-new-tokens N    longest answer, in tokens
  /help                    this help
  /bye                     leave (or Ctrl-D)

Use \"\"\" to begin and end a multi-line message.
Ctrl-C stops an answer and keeps the conversation."""

HISTORY_LENGTH = 1000


def history_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("llava")) / "history"


class LineReader:
    """Lines from a terminal (prompt, editing, persistent history) or from a pipe."""

    def __init__(self, stdin: TextIO, interactive: bool, notices: Notices, *, editing: bool = True) -> None:
        self.stdin = stdin
        self.interactive = interactive
        # input() edits lines only when stdout is the terminal too; with stdout redirected
        # the prompt goes to stderr and the terminal's own line discipline edits.
        self.editing = interactive and editing
        self.notices = notices
        reconfigure = getattr(stdin, "reconfigure", None)
        if reconfigure is not None:
            # A line that is not UTF-8 must not end the session with a decoding error:
            # its bytes become surrogate escapes, and Repl refuses the line.
            try:
                reconfigure(errors="surrogateescape")
            except (ValueError, OSError):
                pass
        self._readline = None
        self._history_start = 0
        self._history: Path | None = None
        if self.editing:
            try:
                import readline
            except ImportError:  # Windows without pyreadline: plain input()
                readline = None
            self._readline = readline
            if readline is not None:
                self._history = history_path()
                try:
                    readline.read_history_file(self._history)
                except (OSError, UnicodeDecodeError):
                    pass
                readline.set_history_length(HISTORY_LENGTH)
                self._history_start = readline.get_current_history_length()

    def read(self, prompt: str) -> str:
        """One line without its newline; EOFError at the end of input."""
        if self.editing:
            return input(prompt)
        if self.interactive:
            sys.stderr.write(prompt)
            sys.stderr.flush()
        line = self.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def close(self) -> None:
        readline = self._readline
        if readline is None or self._history is None:
            return
        added = readline.get_current_history_length() - self._history_start
        if added <= 0:
            return
        try:
            self._history.parent.mkdir(parents=True, exist_ok=True)
            if not self._history.exists():
                self._history.touch(mode=0o600)
            readline.append_history_file(added, self._history)
            # Keep the file bounded even with many sessions appending to it.
            readline.clear_history()
            readline.read_history_file(self._history)
            readline.write_history_file(self._history)
        except OSError as exc:
            self.notices.warn(f"history not saved to {self._history}: {exc.strerror or exc}")


@dataclass
class ChatSettings:
    spec: FrameSpec  # for videos attached from now on
    sampling: Sampling
    model: str  # for /save


class Repl:
    def __init__(self, session: ChatSession, settings: ChatSettings, notices: Notices, *,
                 load: Callable[[str, FrameSpec], MediaEntry], stdin: TextIO | None = None,
                 stdout: TextIO | None = None, stream: bool = True) -> None:
        self.session = session
        self.settings = settings
        self.notices = notices
        self.load = load
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.stream = stream
        self.interactive = self.stdin.isatty()
        self.reader = LineReader(self.stdin, self.interactive, notices, editing=self.stdout.isatty())

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            while True:
                try:
                    message = self._read_message()
                except KeyboardInterrupt:
                    if not self.interactive:
                        raise
                    # As ollama: Ctrl-C at the prompt abandons the line, it does not exit.
                    self._err("\nUse Ctrl + d or /bye to exit.")
                    continue
                except EOFError:
                    if self.interactive:
                        self._err("")
                    return 0
                if message is None:
                    continue
                if message is _BYE:
                    return 0
                self._answer(message)
        finally:
            self.reader.close()

    def _read_message(self):
        line = self.reader.read(">>> " if self.interactive else "")
        if _NOT_UTF8.search(line):
            # Bytes that are not UTF-8 arrive as surrogate escapes (see LineReader).
            self.notices.error("that line is not valid UTF-8 text; it was ignored")
            return None
        stripped = line.strip()
        if stripped.startswith('"""'):
            return self._read_multiline(stripped[3:])
        if not stripped:
            return None
        if stripped.startswith("/"):
            return self._command(stripped)
        return stripped

    def _read_multiline(self, first: str) -> str | None:
        if first.endswith('"""'):
            body = first[:-3]
        else:
            lines = [first]
            while True:
                line = self.reader.read("... " if self.interactive else "")
                if _NOT_UTF8.search(line):
                    self.notices.error("that line is not valid UTF-8 text; the message was dropped")
                    return None
                if line.rstrip().endswith('"""'):
                    lines.append(line.rstrip()[:-3])
                    break
                lines.append(line)
            body = "\n".join(lines)
        body = body.strip("\n")
        return body if body.strip() else None

    # -- answers -----------------------------------------------------------------------------
    def _answer(self, question: str) -> None:
        writer = AnswerWriter(self.stdout, live=self.stream)
        turn = self.session.ask(question, self.settings.sampling)
        interrupted = False
        try:
            for piece in turn:
                writer.write(piece)
        except KeyboardInterrupt:
            interrupted = True
        except (LlavaError, MemoryError) as exc:
            turn.close()
            if writer.parts:
                writer.end()
            self.notices.error(exc.message if isinstance(exc, LlavaError) else "out of memory")
            return
        except BrokenPipeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug, but the conversation must survive it
            turn.close()
            if writer.parts:
                writer.end()
            self.notices.error(f"internal error: {exc.__class__.__name__}: {exc} (the session goes on)")
            return
        finally:
            turn.close()  # ends the turn even when Ctrl-C landed outside the generator
        writer.end()
        if self.interactive and self.stdout.isatty():
            self._out("\n")
        if interrupted:
            self.notices.info("(stopped)" if self.session.messages and
                              self.session.messages[-1].role == "assistant" else "(stopped before the answer began)")
        self._stats()

    def _stats(self) -> None:
        if not self.notices.verbose:
            return
        last = self.session.last
        timings = last.timings
        rate = f", {timings.tokens_per_s:.1f} tokens/s" if timings.tokens_per_s else ""
        self.notices.detail(
            f"prompt {last.prompt_tokens} tokens ({last.reused_tokens} already in the cache), "
            f"{last.media_encoded} media encoded, answer {timings.answer_tokens} tokens "
            f"({timings.stop_reason}); prefill {timings.prefill_s:.2f} s{rate}")

    # -- commands ----------------------------------------------------------------------------
    def _command(self, line: str):
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        handler = {
            "/attach": self._attach, "/reset": self._reset, "/clear": self._reset, "/system": self._system,
            "/save": self._save, "/load": self._load, "/set": self._set, "/help": self._help, "/?": self._help,
        }.get(name)
        if name in ("/bye", "/exit", "/quit"):
            return _BYE
        if handler is None:
            self._err(f"Unknown command '{name}'. Type /help for help.")
            return None
        try:
            handler(rest)
        except LlavaError as exc:
            self.notices.error(exc.message)
        except KeyboardInterrupt:
            self._err(f"\n{name} interrupted")
        except MemoryError:
            self.notices.error(f"{name}: out of memory")
        except Exception as exc:  # noqa: BLE001 - a bug, but the conversation must survive it
            self.notices.error(f"internal error in {name}: {exc.__class__.__name__}: {exc} (the session goes on)")
        return None

    def _attach(self, rest: str) -> None:
        paths = _split_paths(rest)
        if not paths:
            self._err("Usage: /attach PATH...")
            return
        entries = [self.load(path, self.settings.spec) for path in paths]  # all or none
        for entry in entries:
            self.session.attach(entry)
            self._err(f"attached {_describe(entry)}")

    def _reset(self, rest: str) -> None:
        self.session.reset()
        self._err("Cleared the conversation.")

    def _system(self, rest: str) -> None:
        self.session.set_system(rest or None)
        self._err("Set the system prompt." if rest else "Removed the system prompt.")

    def _save(self, rest: str) -> None:
        paths = _split_paths(rest)
        if len(paths) != 1:
            self._err("Usage: /save FILE")
            return
        settings = {"frames": self.settings.spec.frames, "fps": self.settings.spec.fps,
                    "temperature": self.settings.sampling.temperature,
                    "max_new_tokens": self.settings.sampling.max_new_tokens}
        target = save_conversation(paths[0], self.session.to_json(self.settings.model, settings))
        self._err(f"Saved the conversation to {target}.")

    def _load(self, rest: str) -> None:
        paths = _split_paths(rest)
        if len(paths) != 1:
            self._err("Usage: /load FILE")
            return
        data = read_conversation(paths[0])
        saved_model = data.get("model") if isinstance(data, dict) else None
        self.session.load_json(data, self.load)
        turns = sum(m.role == "user" for m in self.session.messages)
        self._err(f"Loaded {turns} turn{'s' if turns != 1 else ''} from {paths[0]}.")
        if saved_model and saved_model != self.settings.model:
            self.notices.warn(f"the conversation was saved with {saved_model}; continuing with {self.settings.model}")

    def _set(self, rest: str) -> None:
        """Each value is checked as its flag's is (config.py's settings): /set temperature
        nan is refused like --temperature nan."""
        from .config import BY_KEY, _check

        key, _, value = rest.partition(" ")
        value = value.strip()
        usage = "Usage: /set frames N | temperature T | max-new-tokens N"
        if not key or not value:
            self._err(usage)
            return
        name = {"frames": "frames", "temperature": "temperature", "max-new-tokens": "max_new_tokens",
                "max_new_tokens": "max_new_tokens"}.get(key)
        if name is None:
            self._err(f"Unknown setting '{key}'. {usage}")
            return
        setting = BY_KEY[name]
        try:
            parsed = setting.kind(value)
        except (ValueError, OverflowError):
            kind = "a whole number" if setting.kind is int else "a number"
            raise UsageError(f"/set {key} needs {kind}, not {value!r}. {usage}") from None
        try:
            checked = _check(setting, parsed, "/set", UsageError)
        except LlavaError as exc:
            raise UsageError(exc.message.replace(f"/set: '{name}'", f"/set {key}")) from None
        if name == "frames":
            self.settings.spec = replace(self.settings.spec, frames=checked, fps=None)
            self._err(f"Set frames to {checked} for videos attached from now on.")
        elif name == "temperature":
            self.settings.sampling = replace(self.settings.sampling, temperature=checked)
            self._err(f"Set temperature to {checked:g}.")
        else:
            self.settings.sampling = replace(self.settings.sampling, max_new_tokens=checked)
            self._err(f"Set max-new-tokens to {checked}.")

    def _help(self, rest: str) -> None:
        self._err(HELP)

    # -- output ------------------------------------------------------------------------------
    def _out(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _err(self, text: str) -> None:
        if not self.notices.quiet:
            print(text, file=sys.stderr, flush=True)


_BYE = object()
_NOT_UTF8 = re.compile("[\ud800-\udfff]")


def _split_paths(rest: str) -> list[str]:
    """Arguments as a shell would split them ('my clip.mp4' or my\\ clip.mp4); a lone
    path with spaces and no quotes is taken whole when it exists."""
    if rest and os.path.exists(os.path.expanduser(rest)):
        return [rest]
    try:
        return shlex.split(rest)
    except ValueError:
        return [rest] if rest else []


def _describe(entry: MediaEntry) -> str:
    media = entry.media
    if media.kind == "image":
        return f"image {media.source}"
    return f"video {media.source} ({len(media.frame_indices)} frames)"
