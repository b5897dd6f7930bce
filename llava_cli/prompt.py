"""Prompts: the checkpoint's multimodal chat template (or a built-in one) and placeholder expansion.

Templates are Jinja source from the model folder, i.e. untrusted input, so they are rendered
in Jinja's immutable sandbox. The environment matches the one transformers 4.48.3 uses for
`apply_chat_template` (`_compile_jinja_template`): trim_blocks and lstrip_blocks, the
loopcontrols extension, a `{% generation %}` block tag, a `tojson` filter that does not
escape HTML, and the globals `raise_exception` and `strftime_now`. Same environment, same
string: the prompt tests compare against transformers' renderer for every hub template.

A template is also a program, and an untrusted one: each rendering runs on a budget
(``TEMPLATE_WORK_LIMIT`` steps: loop iterations, calls, attribute and item look-ups;
``TEMPLATE_TIME_LIMIT_S`` seconds of wall-clock time; ``TEMPLATE_OUTPUT_LIMIT``
characters of output or of any one string or list it builds), checked as it runs, so a
template with nested ``range(10**5)`` loops, exponential macros or string doubling is one
error naming the template, not a hang or a memory runaway.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping, NoReturn, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.runtime
import jinja2.visitor
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llava_cli.chat_templates import BUILTIN_TEMPLATES, TemplateText, builtin_template_for  # noqa: F401 - also importable from here
from llava_cli.errors import ModelError, PromptError

MEDIA_KINDS = ("image", "video")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body unchanged.

    transformers uses the tag to find assistant tokens for training masks; a prompt for
    inference only needs the text, so the block is transparent here.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> NoReturn:
    # Templates call this to reject a conversation (e.g. an unsupported role).
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML, which would corrupt a prompt.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    return datetime.now().strftime(format)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# The rendering budget of a chat template (see the module notes). Real templates use a
# few hundred steps per message and render in milliseconds.
TEMPLATE_WORK_LIMIT = 1_000_000  # loop iterations + calls + attribute/item look-ups
TEMPLATE_TIME_LIMIT_S = 5.0  # wall-clock seconds for one rendering
TEMPLATE_OUTPUT_LIMIT = 16_000_000  # characters of output, or of any one string/list built
_SIZE_ARGUMENT_LIMIT = 100_000  # widths and counts given to str methods and filters (center, indent ...)
_MAX_BITS = 100_000  # integers a template computes
_MAX_TEMPLATE_FILE_BYTES = 16 * 1024 * 1024
_CHECKER = "llava_cli.prompt._BudgetChecks"  # the extension's identifier, for ExtensionAttribute


class _OverBudget(Exception):
    """Raised inside a rendering that ran out of its budget. Not a jinja TemplateError,
    and jinja has no try/except: a template cannot catch it."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _Budget:
    __slots__ = ("work", "deadline")

    def __init__(self) -> None:
        self.work = 0
        self.deadline = time.monotonic() + TEMPLATE_TIME_LIMIT_S

    def tick(self, amount: int = 1) -> None:
        self.work += amount
        if self.work > TEMPLATE_WORK_LIMIT:
            raise _OverBudget(f"more than {TEMPLATE_WORK_LIMIT:,} steps")
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"more than {TEMPLATE_TIME_LIMIT_S:g} s")


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > TEMPLATE_OUTPUT_LIMIT:
        raise _OverBudget(f"a value of more than {TEMPLATE_OUTPUT_LIMIT:,} characters or items")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_BITS:
        raise _OverBudget(f"a number of more than {_MAX_BITS:,} bits")
    return value


def _check_size_arguments(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SIZE_ARGUMENT_LIMIT:
            raise _OverBudget(f"{name}() with a size of {value}")


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


def _check_replace(text: Any, new: Any) -> None:
    # str.replace('', new) puts new between every two characters: len(text) * len(new).
    if isinstance(text, str) and isinstance(new, str) and (len(text) + 1) * (len(new) + 1) > TEMPLATE_OUTPUT_LIMIT:
        raise _OverBudget("a replace() whose result could exceed the size limit")


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(separator, str) and separator and _length(items) * len(separator) > TEMPLATE_OUTPUT_LIMIT:
        raise _OverBudget("a join() whose result exceeds the size limit")


_FORMAT_SPEC = re.compile(r"%[^a-zA-Z%]*|\{[^{}]*\}")
_SIZED_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_SIZED_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice", "random"})


def _check_format(template: Any, arguments: Any) -> None:
    """``"%0999999999d" % 1`` builds a gigabyte before any later check could see it."""
    if not isinstance(template, str):
        return
    for spec in _FORMAT_SPEC.findall(template):
        if any(int(n) > _SIZE_ARGUMENT_LIMIT for n in re.findall(r"\d+", spec)):
            raise _OverBudget(f"a format width in {spec[:40]!r}")
        if "*" in spec:
            values = arguments if isinstance(arguments, tuple) else (arguments,)
            _check_size_arguments("%", values, {})


class _BudgetChecks(jinja2.ext.Extension):
    """The hooks the rewritten tree calls (see `_Rewriter`), reached as extension
    attributes: a template cannot name or replace them."""

    identifier = _CHECKER

    def _iterate(self, iterable: Any) -> Iterator[Any]:
        budget = self.environment.budget()
        for item in iterable:
            budget.tick()
            yield item

    def _concat(self, value: Any) -> Any:
        return _check_size(value)


class _Rewriter(jinja2.visitor.NodeTransformer):
    """Every `for` loop's iterable counts its items against the budget; every `~`
    concatenation checks its length."""

    @staticmethod
    def _hook(name: str, node: jinja2.nodes.Node, lineno: int) -> jinja2.nodes.Call:
        return jinja2.nodes.Call(jinja2.nodes.ExtensionAttribute(_CHECKER, name), [node], [], None, None,
                                 lineno=lineno)

    def visit_For(self, node: jinja2.nodes.For) -> jinja2.nodes.Node:
        self.generic_visit(node)
        node.iter = self._hook("_iterate", node.iter, node.lineno)
        return node

    def visit_Concat(self, node: jinja2.nodes.Concat) -> jinja2.nodes.Node:
        self.generic_visit(node)
        return self._hook("_concat", node, node.lineno)


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a work/time/size budget for each rendering."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local = threading.local()
        self.origin = "the chat template"

    def budget(self) -> _Budget:
        budget = getattr(self._local, "budget", None)
        return budget if budget is not None else _Budget()  # outside a rendering: constant folding

    def start(self) -> _Budget:
        self._local.budget = _Budget()
        return self._local.budget

    def stop(self) -> None:
        self._local.budget = None

    def _parse(self, source: str, name: str | None, filename: str | None) -> jinja2.nodes.Template:
        return _Rewriter().visit(super()._parse(source, name, filename))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.budget().tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            method = getattr(__obj, "__name__", "")
            if method in _SIZED_STR_METHODS:
                _check_size_arguments(method, args, kwargs)
            elif method == "replace" and len(args) >= 2:
                _check_replace(owner, args[1])
            elif method == "join" and args:
                _check_join(owner, args[0])
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.budget().tick()
        if operator == "**" and isinstance(left, int) and isinstance(right, (int, float)) \
                and abs(left) > 1 and right * max(left.bit_length(), 1) > _MAX_BITS:
            raise _OverBudget(f"a power of more than {_MAX_BITS:,} bits")
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, (str, list, tuple)) and isinstance(b, int) and len(a) * b > TEMPLATE_OUTPUT_LIMIT:
                    raise _OverBudget(f"a repetition of more than {TEMPLATE_OUTPUT_LIMIT:,} characters or items")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > _MAX_BITS:
                raise _OverBudget(f"a number of more than {_MAX_BITS:,} bits")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                and len(left) + len(right) > TEMPLATE_OUTPUT_LIMIT:
            raise _OverBudget(f"a value of more than {TEMPLATE_OUTPUT_LIMIT:,} characters or items")
        if operator == "%":
            _check_format(left, right)
        return _check_size(super().call_binop(context, operator, left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.budget().tick()
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            _check_format(obj, ())  # the sandbox hands out a wrapper, not the bound method
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.budget().tick()
        return super().getitem(obj, argument)


def _budgeted_filter(name: str, function: Any) -> Any:
    import functools

    @functools.wraps(function)  # keeps jinja's pass_context/pass_environment marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment,
                                                        jinja2.nodes.EvalContext))]
        if name in _SIZED_FILTERS:
            _check_size_arguments(name, values[1:], kwargs)
        elif name == "format" and values:
            _check_format(values[0], tuple(values[1:]))
        elif name == "replace" and len(values) >= 3:
            _check_replace(values[0], values[2])
        elif name == "join" and len(values) >= 2:
            _check_join(values[1], values[0])
        return _check_size(function(*args, **kwargs))

    return checked


def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a chat template once, for rendering many times with `render_compiled`.
    Errors name the template (a `TemplateText` knows its file)."""
    origin = getattr(template, "origin", "the chat template")
    environment = _BudgetedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols, _BudgetChecks],
    )
    environment.origin = origin
    environment.filters["tojson"] = _tojson
    environment.filters = {name: _budgeted_filter(name, f) for name, f in environment.filters.items()}
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(str(template))
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(f"{origin} has a syntax error (line {exc.lineno}): {_one_line(exc.message or '')}") from exc
    except RecursionError:
        raise PromptError(f"{origin} is nested too deeply to compile") from None
    except MemoryError:
        raise PromptError(f"{origin} is too large to compile") from None
    except Exception as exc:  # noqa: BLE001 - a template is data: a failure compiling it is its own
        raise PromptError(f"{origin} cannot be compiled: {exc.__class__.__name__}: {_one_line(str(exc))}") from exc


def render_compiled(
    compiled: jinja2.Template,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render a compiled template with the variables transformers passes.

    `extra` carries the rest, e.g. the tokenizer's special tokens (bos_token, eos_token, ...),
    which transformers also hands to every template. The rendering runs on the budget the
    module notes describe; running out of it is a PromptError naming the template.
    """
    variables: dict[str, Any] = {"tools": None, "documents": None, **extra}
    environment = compiled.environment
    origin = getattr(environment, "origin", "the chat template")
    budgeted = isinstance(environment, _BudgetedEnvironment)
    try:
        if not budgeted:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        budget = environment.start()
        pieces: list[str] = []
        size = 0
        for piece in compiled.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                       **variables):
            size += len(piece)
            if size > TEMPLATE_OUTPUT_LIMIT:
                raise _OverBudget(f"more than {TEMPLATE_OUTPUT_LIMIT:,} characters of output")
            budget.tick()
            pieces.append(piece)
        return "".join(pieces)
    except _OverBudget as exc:
        raise PromptError(f"{origin} exceeds its rendering budget ({exc.what})") from None
    except jinja2.exceptions.SecurityError as exc:
        raise PromptError(f"{origin} tried an unsafe operation: {_one_line(str(exc))}") from exc
    except jinja2.TemplateError as exc:
        raise PromptError(f"{origin}: {_one_line(exc.message or exc.__class__.__name__)}") from exc
    except RecursionError:
        raise PromptError(f"{origin} recurses too deeply") from None
    except MemoryError:
        raise PromptError(f"{origin} exceeds its rendering budget (out of memory)") from None
    except Exception as exc:  # a template is data: any failure inside it is a prompt problem
        raise PromptError(f"{origin} failed: {exc.__class__.__name__}: {_one_line(str(exc))}") from exc
    finally:
        if budgeted:
            environment.stop()


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render a HF-style multimodal chat template to the prompt string (no BOS: the tokenizer adds it)."""
    return render_compiled(compile_chat_template(template), messages, add_generation_prompt, **extra)


def _template_from_value(value: Any, source: Path) -> str:
    origin = f"the chat template in {source}"
    if isinstance(value, str):
        return TemplateText(value, origin)
    # tokenizer_config-style list of named templates: [{"name": "default", "template": "..."}].
    if isinstance(value, list):
        named = {entry.get("name"): entry.get("template") for entry in value if isinstance(entry, dict)}
        if isinstance(named.get("default"), str):
            return TemplateText(named["default"], origin)
    raise ModelError(f"{source}: 'chat_template' should be a string")


def _read_template_file(path: Path) -> str:
    """A template file's text: a regular file, at most _MAX_TEMPLATE_FILE_BYTES."""
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise ModelError(f"{path} is not a regular file")
        if status.st_size > _MAX_TEMPLATE_FILE_BYTES:
            raise ModelError(f"{path} is too large for a chat template ({status.st_size:,} bytes; "
                             f"at most {_MAX_TEMPLATE_FILE_BYTES >> 20} MiB)")
        with open(path, "rb") as handle:
            data = handle.read(_MAX_TEMPLATE_FILE_BYTES + 1)
        if len(data) > _MAX_TEMPLATE_FILE_BYTES:
            raise ModelError(f"{path} is too large for a chat template (over {_MAX_TEMPLATE_FILE_BYTES >> 20} MiB)")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def load_chat_template(folder: Path) -> str | None:
    """The checkpoint's multimodal (processor) chat template, or None when it ships none.
    The text is a `TemplateText` that names its file, for the errors rendering it may raise.

    tokenizer_config.json's template is deliberately not used: it is the text-only LLM
    template, written for string content rather than typed parts.
    """
    folder = Path(folder)
    jinja_file = folder / "chat_template.jinja"
    if os.path.lexists(jinja_file) and not jinja_file.is_dir():
        return TemplateText(_read_template_file(jinja_file), f"the chat template in {jinja_file}")
    for name in ("chat_template.json", "processor_config.json"):
        path = folder / name
        if not os.path.lexists(path) or path.is_dir():
            continue
        try:
            data = json.loads(_read_template_file(path))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
        except RecursionError:
            raise ModelError(f"{path} is nested too deeply") from None
        if isinstance(data, dict) and data.get("chat_template") is not None:
            return _template_from_value(data["chat_template"], path)
    return None


def build_messages(question: str, media_kinds: Sequence[str], system: str | None = None) -> list[dict[str, Any]]:
    """One user turn: the media parts in the given order, then the question; system turn first if given."""
    unknown = [kind for kind in media_kinds if kind not in MEDIA_KINDS]
    if unknown:
        raise PromptError(f"unknown media kind {unknown[0]!r} (expected one of: {', '.join(MEDIA_KINDS)})")
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content: list[dict[str, Any]] = [{"type": kind} for kind in media_kinds]
    content.append({"type": "text", "text": question})
    messages.append({"role": "user", "content": content})
    return messages


# -- LLaVA-Video's time instruction ---------------------------------------------------------
#
# LLaVA-Video (lmms-lab/LLaVA-Video-7B-Qwen2, config "add_time_instruction": true) was trained
# with this sentence before each video question. The text, character for character, is the
# authors' (github.com/LLaVA-VL/LLaVA-NeXT at df179663ae8b83207df100a1f7af24caec633ff9,
# llava/train/train.py lines 1201-1203 and playground/demo/video_demo.py lines 209-211):
#
#     time_instruciton = f"The video lasts for {video_time:.2f} seconds, and {num_frames} frames are
#         uniformly sampled from it. These frames are located at {frame_time}.Please answer the
#         following questions related to this video."
#
# (one line there; no space after "{frame_time}."), with frame_time = ",".join(f"{t:.2f}s" ...)
# (llava/utils.py process_video_with_decord, video_demo.py load_video) and the user turn
# f"<image>\n{time_instruction}\n{question}" (train.py; video_demo.py builds the same). Their
# video_time is the frame count over the average frame rate (decord's len(vr) /
# vr.get_avg_fps()), their frame times index / average rate; ours are the sampled frames' own
# timestamps, which are the same numbers for a constant-rate video and the truth otherwise.

def video_seconds(media: Any) -> float:
    """How long a video lasts, as the LLaVA-Video authors count it: its frames over its
    average frame rate. Without a rate, the last frame's time plus one typical frame step."""
    if media.fps:
        return media.total_frames / media.fps
    times = list(media.timestamps)
    steps = sorted(b - a for a, b in zip(times, times[1:]))
    return (times[-1] + steps[len(steps) // 2]) if steps else (times[-1] if times else 0.0)


def time_instruction(media: Any) -> str:
    """LLaVA-Video's time instruction for one sampled video (``media``: a video Media):
    its length, how many frames were sampled and the time of each."""
    frame_time = ",".join(f"{t:.2f}s" for t in media.timestamps)
    return (f"The video lasts for {video_seconds(media):.2f} seconds, and {len(media.timestamps)} frames are "
            f"uniformly sampled from it. These frames are located at {frame_time}.Please answer the following "
            f"questions related to this video.")


def with_time_instructions(messages: Sequence[Mapping[str, Any]], media: Sequence[Any]) -> list[dict[str, Any]]:
    """``messages`` with each video's time instruction, then a newline, before the text of
    the message that holds the video (as the authors' f"{time_instruction}\\n{question}").
    ``media``: the Media of the messages' media parts, in order. The messages given are not
    changed; messages without a video are returned as they are."""
    out: list[dict[str, Any]] = []
    queue = iter(media)
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(dict(message))
            continue
        lines = []
        for part in content:
            if part.get("type") in MEDIA_KINDS:
                medium = next(queue, None)
                if medium is None:
                    raise PromptError("the messages hold more media parts than media were given")
                if part["type"] == "video":
                    lines.append(time_instruction(medium))
        if not lines:
            out.append(dict(message))
            continue
        prefix = "\n".join(lines) + "\n"
        parts, done = [], False
        for part in content:
            if part.get("type") == "text" and not done:
                part, done = {**part, "text": prefix + part["text"]}, True
            parts.append(part)
        if not done:
            parts.append({"type": "text", "text": prefix.rstrip("\n")})
        out.append({**message, "content": parts})
    return out


def expand_placeholders(
    ids: Sequence[int],
    counts: Mapping[int, Sequence[int]],
    names: Mapping[int, str] | None = None,
) -> list[int]:
    """Replace the k-th occurrence of each placeholder id with counts[id][k] copies of it.

    This is what the processors do with "<image>" * N before tokenizing; doing it on ids gives
    the same sequence because each copy of an added special token is exactly one id.
    `names` (id -> "<image>") only makes error messages readable.
    """
    for placeholder, per_item in counts.items():
        negative = [count for count in per_item if count < 0]
        if negative:
            raise PromptError(f"negative token count {negative[0]} for placeholder {_label(placeholder, names)}")
    found = {placeholder: 0 for placeholder in counts}
    for token_id in ids:
        if token_id in found:
            found[token_id] += 1
    for placeholder, occurrences in found.items():
        given = len(counts[placeholder])
        if occurrences != given:
            raise PromptError(
                f"the prompt has {occurrences} {_label(placeholder, names)} placeholder(s) "
                f"but {given} media item(s) were given for it"
            )

    expanded: list[int] = []
    seen = {placeholder: 0 for placeholder in counts}
    for token_id in ids:
        if token_id in seen:
            expanded.extend([token_id] * counts[token_id][seen[token_id]])
            seen[token_id] += 1
        else:
            expanded.append(token_id)
    return expanded


def _label(placeholder: int, names: Mapping[int, str] | None) -> str:
    if names and placeholder in names:
        return names[placeholder]
    return f"token-{placeholder}"
