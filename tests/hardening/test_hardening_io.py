"""An adversarial corpus for untrusted work, files, streams and the CLI surface (issue 12, part B).

Generated at test time and seeded, like a fuzzer's corpus:

* mutated media of every container family we read (mp4, mkv, webm, avi, gif, png, jpg):
  truncations, byte flips, zeroed ranges, garbage runs, each loaded in-process (a
  MediaError or an answer, never another exception, never a hang) and a sample of them
  through `llava batch` (every input one line, exit 0 or 3);
* hostile chat templates: loops, exponential macros, string/number blow-ups, recursion,
  attribute access the sandbox forbids (in-process, and end to end through a model folder);
* odd file names (not UTF-8, a newline, a leading dash, very long) in batch, ask and stdin;
* devices and FIFOs (/dev/zero, /dev/full, /proc/version, a FIFO, a folder) as media, as
  -o, as --resume output, as LLAVA_CONFIG, to /load and /save;
* slow and broken HTTP servers on 127.0.0.1 (trickling, stalling, cut short, lying about
  their length, error statuses), each stopping by itself;
* the CLI surface: questions that are not UTF-8 (argv, stdin, chat), bad /set values,
  config files nested too deeply.

Every case asserts what a user sees: an answer, or one ``llava: error:`` line, never a
traceback, an "internal error" or a hang.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import shutil
import socketserver
import stat
import threading
import time
from pathlib import Path

import pytest

from support.adversarial import assert_clean_error, run_case
from support.cli import clean_env
from support.media import make_animation, make_image, make_video

from llava_cli import media as media_mod
from llava_cli import prompt as prompt_mod
from llava_cli.errors import LlavaError, MediaError, PromptError

SEED = 1212
ODD = os.fsdecode(b"odd-\xff\xfe.mp4")  # a name that is not UTF-8, as Python holds it


# --- shared material ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    """One small real file per container family."""
    folder = tmp_path_factory.mktemp("originals")
    return {
        "mp4": make_video(folder / "v.mp4", frames=12, size=(64, 48)),
        "mkv": make_video(folder / "v.mkv", frames=12, size=(64, 48)),
        "webm": make_video(folder / "v.webm", frames=12, size=(64, 48), codec="libvpx-vp9"),
        "avi": make_video(folder / "v.avi", frames=12, size=(64, 48), codec="mpeg4"),
        "gif": make_animation(folder / "v.gif", [100] * 4),
        "png": make_image(folder / "i.png"),
        "jpg": make_image(folder / "i.jpg"),
    }


@pytest.fixture()
def deadline():
    """In-process cases: a hang inside the code under test fails the case (SIGALRM)."""
    import signal

    def on_alarm(signum, frame):
        raise TimeoutError("the case took over 15 s: a hang?")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(15)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    n = len(data)
    if kind == "truncate":
        return data[: rng.randint(1, max(1, n - 1))]
    if kind == "head":
        return data[: rng.randint(8, 64)]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 24)):
            i = rng.randrange(n)
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "zero":
        start = rng.randrange(n)
        return data[:start] + bytes(min(n - start, rng.randint(16, 4096))) + data[start + rng.randint(16, 4096):]
    if kind == "garbage":
        start = rng.randrange(n)
        length = rng.randint(16, 2048)
        return data[:start] + rng.randbytes(length) + data[start + length:]
    if kind == "header-zero":
        return bytes(min(n, 64)) + data[64:]
    if kind == "duplicate":
        start = rng.randrange(n)
        return data[:start] + data[start:start + 4096] * 3 + data[start:]
    if kind == "tail-only":
        return data[n // 2:]
    raise AssertionError(kind)


MUTATIONS = ("truncate", "head", "flip", "zero", "garbage", "header-zero", "duplicate", "tail-only")
CONTAINERS = ("mp4", "mkv", "webm", "avi", "gif", "png", "jpg")
MUTANTS = [(c, m, k) for c in CONTAINERS for m in MUTATIONS for k in range(2)]  # 112 cases


@pytest.mark.parametrize("container, mutation, variant", MUTANTS,
                         ids=[f"{c}-{m}-{k}" for c, m, k in MUTANTS])
def test_mutated_media_load_or_fail_cleanly(deadline, originals, tmp_path, container, mutation, variant):
    rng = random.Random(f"{SEED}-{container}-{mutation}-{variant}")
    path = tmp_path / f"mutant.{container}"
    path.write_bytes(_mutate(originals[container].read_bytes(), mutation, rng))
    try:
        loaded = media_mod.load_media(path, 4)
    except MediaError as error:
        assert "\n" not in error.message and error.message
        return
    except LlavaError as error:  # a sampling problem of a strange stream, also one line
        assert "\n" not in error.message
        return
    assert loaded.frames.ndim == 4 and loaded.frames.shape[-1] == 3 and len(loaded.frames) >= 1


def test_mutants_through_batch_every_input_one_line(tiny_model, originals, tmp_path, env):
    """A folder of mutants: each gets exactly one line, answered or with its one-line
    error, and the run ends with 0 or 3."""
    rng = random.Random(SEED)
    folder = tmp_path / "mutants"
    folder.mkdir()
    for container in CONTAINERS:
        for mutation in (rng.choice(("truncate", "flip", "garbage")),):
            data = _mutate(originals[container].read_bytes(), mutation, rng)
            (folder / f"{container}-{mutation}.{container}").write_bytes(data)
    out = tmp_path / "out.jsonl"
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "1", "-q", str(folder), "what?", "-o", str(out)],
                       env, timeout=120)
    assert outcome.code in (0, 3), outcome.describe()
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, outcome.describe()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(list(folder.iterdir()))
    for record in lines:
        assert (record["answer"] is None) != (record["error"] is None)
        if record["error"] is not None:
            assert "\n" not in record["error"]


# --- hostile chat templates ----------------------------------------------------------------------

HOSTILE_TEMPLATES = {
    "nested-range": "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}",
    "nested-range-output": "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
    "triple-loop": "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
                   "{% endfor %}{% endfor %}{% endfor %}",
    "loop-over-messages-blowup": "{% for i in range(100000) %}{% for m in messages * 1000 %}{% endfor %}{% endfor %}",
    "exponential-macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "infinite-recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "recursive-loop": "{% for x in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}",
    "string-repeat": "{{ 'x' * 10**9 }}",
    "list-repeat": "{{ ([0] * 10**9)|length }}",
    "string-doubling-macro": "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n-1) }}{% else %}{{ s|length }}{% endif %}"
                             "{% endmacro %}{{ d('x', 60) }}",
    "string-doubling-namespace": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
                                 "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "concat-doubling": "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "huge-output": "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    "center-filter": "{{ 'x'|center(1000000000) }}",
    "center-method": "{{ 'x'.center(1000000000) }}",
    "ljust-method": "{{ 'x'.ljust(10**9) }}",
    "zfill-method": "{{ 'x'.zfill(10**9) }}",
    "indent-filter": "{{ 'a\nb'|indent(10**9) }}",
    "wordwrap-filter": "{{ 'a b'|wordwrap(10**9) }}",
    "percent-width": "{{ '%0999999999d' % 1 }}",
    "percent-star": "{{ '%*d' % (999999999, 1) }}",
    "format-width": "{{ '{:>999999999}'.format(1) }}",
    "format-filter": "{{ '%999999999s'|format('x') }}",
    "replace-empty": "{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(20) %}"
                     "{% set ns.s = ns.s.replace('', 'yyyyyyyyyy') %}{% endfor %}",
    "replace-filter": "{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(20) %}"
                      "{% set ns.s = ns.s|replace('', 'yyyyyyyyyy') %}{% endfor %}",
    "join-separator": "{{ range(100000)|join('x' * 1000) }}",
    "slice-filter": "{{ [1]|slice(10**9)|list|length }}",
    "bigint-squaring": "{% set ns = namespace(n=3) %}{% for i in range(100) %}{% set ns.n = ns.n * ns.n %}"
                       "{% endfor %}",
    "power": "{{ 7 ** 999999 }}",
    "dunder-class": "{{ messages.__class__.__mro__ }}",
    "subclasses": "{{ ''.__class__.__subclasses__() }}",
    "globals": "{{ raise_exception.__globals__['os'].system('id') }}",
    "list-append": "{% set l = [] %}{{ l.append(1) }}",
    "dict-update": "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "format-attribute-call": "{{ '{0.__class__.__subclasses__}'.format(1)() }}",
    "deep-parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "syntax-error": "{% for m in messages %}",
    "raise-exception": "{{ raise_exception('rejected by the template') }}",
    "undefined-chain": "{{ nothing.at.all }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_templates_are_one_error_naming_the_template(deadline, name, monkeypatch):
    monkeypatch.setattr(prompt_mod, "TEMPLATE_TIME_LIMIT_S", 2.0)
    origin = "the chat template in /models/x/chat_template.json"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    started = time.monotonic()
    with pytest.raises(PromptError) as info:
        prompt_mod.render_chat(prompt_mod.TemplateText(HOSTILE_TEMPLATES[name], origin), messages)
    assert time.monotonic() - started < prompt_mod.TEMPLATE_TIME_LIMIT_S + 3
    assert "\n" not in info.value.message
    assert origin in info.value.message


def test_every_builtin_template_renders_within_budget():
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q" * 1000}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a" * 1000}]}] * 200
    messages.append({"role": "user", "content": [{"type": "text", "text": "last"}]})
    for name, template in prompt_mod.BUILTIN_TEMPLATES.items():
        if name == "mistral":
            continue  # allows no video parts
        assert prompt_mod.render_chat(template, messages).count("last") == 1


def _model_copy(tiny_model: Path, folder: Path, template: str) -> Path:
    folder.mkdir()
    for item in tiny_model.iterdir():
        if item.name not in ("chat_template.json", "chat_template.jinja", "processor_config.json"):
            (folder / item.name).symlink_to(item)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    return folder


@pytest.mark.parametrize("name", ["nested-range", "string-repeat", "huge-output"])
def test_hostile_template_end_to_end(tiny_model, tmp_path, env, name):
    folder = _model_copy(tiny_model, tmp_path / "hostile", HOSTILE_TEMPLATES[name])
    outcome = run_case(["ask", "-m", str(folder), "-n", "2", "hi"], env, timeout=60)
    assert_clean_error(outcome, f"the chat template in {folder}/chat_template.json", code=1)
    assert outcome.wall_s < 45


# --- odd file names in batch and ask --------------------------------------------------------------


def test_batch_with_a_non_utf8_name_answers_every_good_input(tiny_model, media_files, tmp_path, env):
    """The acceptance case: the odd name is an error line, every good input is answered, exit 3."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(media_files["clip"], folder / "a.mp4")
    shutil.copy(media_files["image"], folder / "b.png")
    shutil.copy(media_files["clip2"], os.fsencode(folder) + b"/odd-\xff.mp4")
    shutil.copy(media_files["image"], folder / "c.png")
    out = tmp_path / "out.jsonl"
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", str(folder), "what?", "-o", str(out)], env)
    assert outcome.code == 3, outcome.describe()
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, outcome.describe()
    records = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]
    assert len(records) == 4
    good = [r for r in records if r["error"] is None]
    assert sorted(Path(r["path"]).name for r in good) == ["a.mp4", "b.png", "c.png"]
    assert all(r["answer"] for r in good)
    (bad,) = [r for r in records if r["error"] is not None]
    assert os.fsencode(bad["path"]) == os.fsencode(folder) + b"/odd-\xff.mp4"  # the escapes round-trip
    assert "not valid UTF-8" in bad["error"]
    assert "\\udcff" in out.read_text()
    # --resume keeps the answers and retries only the odd one
    again = run_case(["batch", "-m", str(tiny_model), "-n", "2", str(folder), "what?", "-o", str(out), "--resume"],
                     env)
    assert again.code == 3, again.describe()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and sum(r["error"] is None for r in records) == 3


def test_batch_odd_names_from_stdin_and_arguments(tiny_model, media_files, tmp_path, env):
    names = [b"new\nline.png", b"-dash.png", b"x" * 240 + b".png", b"sp ace.png", b"\xe9t\xe9.png"]
    folder = tmp_path / "names"
    folder.mkdir()
    for name in names:
        shutil.copy(media_files["image"], os.path.join(os.fsencode(folder), name))
    stdin = b"".join(os.path.join(os.fsencode(folder), n) + b"\n" for n in names if b"\n" not in n)
    stdin += b"/no/such/\xff\xfe.png\n"
    out = tmp_path / "out.jsonl"
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", "-", "-Q", "what?", "-o", str(out)], env,
                       stdin=stdin)
    assert outcome.code == 3, outcome.describe()
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, outcome.describe()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5
    assert sum(r["error"] is None for r in records) == 3  # the Latin-1 name and the missing one fail


@pytest.mark.parametrize("name", [b"\xff.png", b"a\xc3(.mp4", b"\xed\xa0\x80.mp4"])
def test_ask_with_a_non_utf8_media_name(tiny_model, media_files, tmp_path, env, name):
    path = os.path.join(os.fsencode(tmp_path), name)
    shutil.copy(media_files["image"], path)
    outcome = run_case(["ask", "-m", str(tiny_model), os.fsdecode(path), "what?"], env)
    assert_clean_error(outcome, "not valid UTF-8")


def test_ask_with_a_newline_in_the_name_of_a_missing_file(tiny_model, tmp_path, env):
    outcome = run_case(["ask", "-m", str(tiny_model), str(tmp_path / "a\nb.mp4"), "what?"], env)
    assert_clean_error(outcome, "a\\nb.mp4")


# --- devices, FIFOs and special files -------------------------------------------------------------


@pytest.fixture()
def fifo(tmp_path) -> Path:
    path = tmp_path / "fifo.mp4"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "/dev/full", "/proc/version", "FIFO", "DIR",
                                     "/dev/stdin"])
def test_special_files_as_media(tiny_model, tmp_path, env, fifo, special):
    target = {"FIFO": str(fifo), "DIR": str(tmp_path)}.get(special, special)
    outcome = run_case(["ask", "-m", str(tiny_model), target, "what?"], env, timeout=30)
    assert_clean_error(outcome)


@pytest.mark.parametrize("special", ["/dev/full", "/proc/version", "FIFO", "DIR", "/dev/zero", "MISSING-DIR"])
def test_special_files_as_batch_output(tiny_model, media_files, tmp_path, env, fifo, special):
    target = {"FIFO": str(fifo), "DIR": str(tmp_path), "MISSING-DIR": str(tmp_path / "no" / "out.jsonl")
              }.get(special, special)
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", str(media_files["image"]), "what?",
                        "-o", target], env, timeout=60)
    assert_clean_error(outcome)
    if special == "/dev/full":
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize("special", ["/dev/zero", "FIFO", "DIR", "/dev/null", "/proc/self/status"])
def test_special_files_as_resume_output(tiny_model, media_files, tmp_path, env, fifo, special):
    target = {"FIFO": str(fifo), "DIR": str(tmp_path)}.get(special, special)
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", str(media_files["image"]), "what?",
                        "-o", target, "--resume"], env, timeout=30)
    assert_clean_error(outcome)
    assert outcome.peak_rss_mb < 1000


def test_batch_output_to_dev_stdout_is_standard_output(tiny_model, media_files, tmp_path, env):
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", str(media_files["image"]), "what?",
                        "-o", "/dev/stdout"], env)
    assert outcome.code == 0, outcome.describe()
    assert json.loads(outcome.stdout)["answer"]


def test_resume_keeps_one_line_per_pair(tiny_model, media_files, tmp_path, env):
    out = tmp_path / "out.jsonl"
    image = str(media_files["image"])
    line = {"path": image, "question": "what?", "answer": "an answer", "error": None}
    other = {"path": image, "question": "other?", "answer": "x", "error": None}
    out.write_text("".join(json.dumps(r) + "\n" for r in (line, line, other, line, other)) + '{"broken')
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", image, "-Q", "what?", "-Q", "other?",
                        "-o", str(out), "--resume"], env)
    assert outcome.code == 0, outcome.describe()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted((r["path"], r["question"]) for r in records) == [(image, "other?"), (image, "what?")]


def test_resume_of_a_huge_line_is_bounded(tiny_model, media_files, tmp_path, env):
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as handle:
        handle.write(b'{"path": "' + b"a" * (80 * 1024 * 1024) + b'"}\n')
    image = str(media_files["image"])
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", image, "what?", "-o", str(out), "--resume"],
                       env)
    assert outcome.code == 0, outcome.describe()
    assert len(out.read_text().splitlines()) == 1


def test_resume_through_a_symlink_keeps_the_link(tiny_model, media_files, tmp_path, env):
    real = tmp_path / "real.jsonl"
    real.write_text('{"partial')
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    outcome = run_case(["batch", "-m", str(tiny_model), "-n", "2", str(media_files["image"]), "what?",
                        "-o", str(link), "--resume"], env)
    assert outcome.code == 0, outcome.describe()
    assert link.is_symlink() and len(real.read_text().splitlines()) == 1


@pytest.mark.parametrize("special", ["DIR", "FIFO", "/dev/zero", "/dev/null", "/dev/full", "HUGE", "DEEP",
                                     "DEEP-ARRAY", "BINARY", "TABLE-VALUE", "NAN"])
def test_llava_config_hostile(tiny_model, tmp_path, special):
    config = tmp_path / "cfg.toml"
    if special == "FIFO":
        os.mkfifo(config)
    elif special == "HUGE":
        config.write_text("# x\n" * (600 * 1024))
    elif special == "DEEP":
        config.write_text("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    elif special == "DEEP-ARRAY":
        config.write_text("x = " + "[" * 100000 + "]" * 100000 + "\n")
    elif special == "BINARY":
        config.write_bytes(b"model = \"\xff\xfe\"\n")
    elif special == "TABLE-VALUE":
        config.write_text("[frames]\na = 1\n")
    elif special == "NAN":
        config.write_text("temperature = nan\n")
    target = {"DIR": str(tmp_path), "FIFO": str(config), "HUGE": str(config), "DEEP": str(config),
              "DEEP-ARRAY": str(config), "BINARY": str(config), "TABLE-VALUE": str(config),
              "NAN": str(config)}.get(special, special)
    env = clean_env(tmp_path, LLAVA_CONFIG=target)
    outcome = run_case(["ask", "-m", str(tiny_model), "-n", "2", "hi"], env, timeout=30)
    assert_clean_error(outcome)
    if special in ("DIR", "FIFO", "DEEP"):
        assert_clean_error(run_case(["config", "show"], env, timeout=30))


# --- the CLI surface: questions that are not UTF-8 -------------------------------------------------


@pytest.mark.parametrize("question", [b"why\xff?", b"\xc3(", b"\xed\xa0\x80", b"ok \x80\x80"])
def test_non_utf8_question_in_argv(tiny_model, env, question):
    assert_clean_error(run_case(["ask", "-m", str(tiny_model), question], env), "not valid UTF-8", code=2)


@pytest.mark.parametrize("question", [b"why\xff?\n", b"\xfe\xff"])
def test_non_utf8_question_on_stdin(tiny_model, env, question):
    assert_clean_error(run_case(["ask", "-m", str(tiny_model), "-"], env, stdin=question), "not valid UTF-8",
                       code=2)


def test_question_from_dev_zero_is_bounded(tiny_model, env):
    import subprocess
    import sys

    with open("/dev/zero", "rb") as zero:
        result = subprocess.run([sys.executable, "-m", "llava_cli", "ask", "-m", str(tiny_model), "-"],
                                stdin=zero, capture_output=True, env=env, timeout=60)
    assert result.returncode == 2 and b"too long" in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr


def test_non_utf8_batch_question_and_system(tiny_model, media_files, env):
    image = str(media_files["image"])
    assert_clean_error(run_case(["batch", "-m", str(tiny_model), image, "-Q", b"\xff"], env), "not valid UTF-8",
                       code=2)
    assert_clean_error(run_case(["ask", "-m", str(tiny_model), "-s", b"sys\xff", "hi"], env), "not valid UTF-8",
                       code=2)


# --- chat: bad commands, /load and /save of special files, bytes that are not UTF-8 -----------------


def test_chat_survives_every_bad_command(tiny_model, media_files, tmp_path, env, fifo):
    saved = tmp_path / "saved.json"
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "llava-chat/1", "messages": [{"role": "user", "content": "x",
                                                                          "media": [{"path": 3}]}]}))
    spec = tmp_path / "spec.json"
    lines = [
        b"/set temperature nan", b"/set temperature inf", b"/set temperature -1", b"/set temperature 1e999",
        b"/set frames 0", b"/set frames -3", b"/set frames 2.5", b"/set frames 99999999999999999999999",
        b"/set max-new-tokens 0", b"/set max-new-tokens x", b"/set top_p 3", b"/set", b"/set temperature",
        b"/load /dev/zero", b"/load " + os.fsencode(fifo), b"/load " + os.fsencode(tmp_path), b"/load /dev/full",
        b"/load " + os.fsencode(big), b"/load " + os.fsencode(deep), b"/load " + os.fsencode(wrong),
        b"/load /proc/self/status", b"/load /no/such/file", b"/load " + os.fsencode(spec),
        b"/save " + os.fsencode(fifo), b"/save " + os.fsencode(tmp_path), b"/save /no/such/dir/x.json",
        b"/save /dev/null", b"/attach /dev/zero", b"/attach " + os.fsencode(fifo), b"/attach \xff.png",
        b"/attach", b"/nonsense", b"what \xff is this?", b'"""', b"multi \xfe line", b'"""',
        b"/system \xff", b"/set max-new-tokens 2", b"/set temperature 0", b"hello",
        b"/save " + os.fsencode(saved), b"/bye",
    ]
    spec.write_text(json.dumps({"format": "llava-chat/1", "messages": [],
                                "attached": [{"path": str(media_files["image"]), "spec": {"frames": "many"}}]}))
    outcome = run_case(["chat", "-m", str(tiny_model)], env, stdin=b"\n".join(lines) + b"\n", timeout=90)
    assert outcome.code == 0, outcome.describe()
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, outcome.describe()
    assert outcome.stdout.strip(), outcome.describe()  # "hello" was answered
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # never renamed over
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert json.loads(saved.read_text())["messages"]
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("llava: error:")]
    assert len(errors) >= 25, outcome.stderr
    assert outcome.peak_rss_mb < 2000


def test_chat_save_to_dev_full_never_replaces_the_device(tiny_model, env):
    before = os.stat("/dev/full")
    assert stat.S_ISCHR(before.st_mode)
    outcome = run_case(["chat", "-m", str(tiny_model)], env, stdin="/save /dev/full\n/bye\n", timeout=60)
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert outcome.code == 0 and "not a regular file" in outcome.stderr, outcome.describe()


def test_chat_save_and_load_with_an_unusual_name(tiny_model, media_files, tmp_path, env):
    odd = os.path.join(os.fsencode(tmp_path), "ünï code ✓.png".encode())
    shutil.copy(media_files["image"], odd)
    saved = tmp_path / "s.json"
    script = f"/set max-new-tokens 2\nwhat?\n/save {saved}\n/load {saved}\n/bye\n"
    outcome = run_case(["chat", "-m", str(tiny_model), os.fsdecode(odd)], env, stdin=script, timeout=60)
    assert outcome.code == 0, outcome.describe()
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr, outcome.describe()


# --- slow and broken HTTP servers ----------------------------------------------------------------


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def _serve(behaviour: str, body: bytes, deadline_s: float = 20.0):
    """A misbehaving HTTP server on 127.0.0.1; every handler stops by itself by the deadline."""
    stop_at = time.monotonic() + deadline_s

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _head(self, status=200, length=None):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()

        def do_GET(self):  # noqa: N802
            try:
                if behaviour == "silent":  # accepts, never answers
                    while time.monotonic() < stop_at:
                        time.sleep(0.05)
                    return
                if behaviour == "status-404":
                    self._head(404, 0)
                    return
                if behaviour == "status-500":
                    self._head(500, 0)
                    return
                if behaviour == "trickle":  # the whole body, one byte at a time
                    self._head()
                    for i in range(len(body)):
                        if time.monotonic() > stop_at:
                            return
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                if behaviour == "fast-head-then-trickle":
                    self._head()
                    self.wfile.write(body[:len(body) // 3])
                    for i in range(len(body) // 3, len(body)):
                        if time.monotonic() > stop_at:
                            return
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                if behaviour == "stall":  # headers and a little, then nothing
                    self._head()
                    self.wfile.write(body[:100])
                    self.wfile.flush()
                    while time.monotonic() < stop_at:
                        time.sleep(0.05)
                    return
                if behaviour == "cut":  # promises everything, sends half, hangs up
                    self._head()
                    self.wfile.write(body[:len(body) // 2])
                    return
                if behaviour == "long-length":  # claims more than it has
                    self._head(length=len(body) * 10)
                    self.wfile.write(body)
                    return
                if behaviour == "garbage":
                    self._head(length=4096)
                    self.wfile.write(random.Random(SEED).randbytes(4096))
                    return
                if behaviour == "empty":
                    self._head(length=0)
                    return
                raise AssertionError(behaviour)
            except (BrokenPipeError, ConnectionResetError):
                return

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


HTTP_CASES = [(b, s) for b in ("silent", "trickle", "fast-head-then-trickle", "stall", "cut", "long-length",
                               "garbage", "empty", "status-404", "status-500") for s in (".mp4", ".png", "")]


@pytest.mark.parametrize("behaviour, suffix", HTTP_CASES, ids=[f"{b}{s or '-nosuffix'}" for b, s in HTTP_CASES])
def test_broken_http_servers_end_in_bounded_time(deadline, originals, monkeypatch, behaviour, suffix):
    monkeypatch.setattr(media_mod, "_NETWORK_TIMEOUT_S", 0.6)
    monkeypatch.setattr(media_mod, "_MIN_RATE_GRACE_S", 0.6)
    body = (originals["png"] if suffix == ".png" else originals["mp4"]).read_bytes()
    started = time.monotonic()
    with _serve(behaviour, body) as base:
        try:
            media_mod.load_media(f"{base}/file{suffix}", 2)
        except MediaError as error:
            assert "\n" not in error.message
        else:
            assert behaviour in ("long-length",), "a broken server's file loaded"
    assert time.monotonic() - started < 8, f"took {time.monotonic() - started:.1f} s"
