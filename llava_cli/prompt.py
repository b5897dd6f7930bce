"""Prompts: the checkpoint's multimodal chat template (or a built-in one) and placeholder expansion.

Templates are Jinja source from the model folder, i.e. untrusted input, so they are rendered
in Jinja's immutable sandbox. The environment matches the one transformers 4.48.3 uses for
`apply_chat_template` (`_compile_jinja_template`): trim_blocks and lstrip_blocks, the
loopcontrols extension, a `{% generation %}` block tag, a `tojson` filter that does not
escape HTML, and the globals `raise_exception` and `strftime_now`. Same environment, same
string: the prompt tests compare against transformers' renderer for every hub template.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llava_cli.errors import ModelError, PromptError

# LLaVA-NeXT-Video-7B's template (llava-hf/LLaVA-NeXT-Video-7B-hf, chat_template.json): the
# Vicuna "USER: ... ASSISTANT:" format with images, then videos, then text. It is the
# fallback for checkpoints that ship no multimodal template. (The second "Render all images
# first" comment really does sit before the video loop in the hub file.)
_VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# llava-hf/llava-v1.6-mistral-7b-hf (revision "support system msg"): [INST] ... [/INST], a
# <<SYS>> block before the first turn, "</s> " after answers; other roles raise.
_MISTRAL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)

# ChatML as the Yi-34B checkpoints use it. This is llava-hf/LLaVA-NeXT-Video-34B-hf's text: the
# llava-v1.6-34b-hf template plus a video loop and (transparent) generation tags, so it renders
# every image/text conversation exactly as llava-v1.6-34b-hf does.
_CHATML_YI_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all videos next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# llava-hf/llama3-llava-next-8b-hf: Llama-3 headers, images right after the header, each text
# part as "\n" + text + "<|eot_id|>".
_LLAMA3_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# llava-hf/llava-next-72b-hf (Qwen1.5-72B-Chat): ChatML, images right after the role line,
# each text part prefixed by "\n".
_QWEN_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{{'<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf (revision "Update chat_template.json"): a space
# after the role, no newline between turns.
_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Keyed by template family; `builtin_template_for` picks one for a checkpoint without a template.
BUILTIN_TEMPLATES: dict[str, str] = {
    "vicuna": _VICUNA_TEMPLATE,
    "mistral": _MISTRAL_TEMPLATE,
    "chatml_yi": _CHATML_YI_TEMPLATE,
    "llama3": _LLAMA3_TEMPLATE,
    "qwen": _QWEN_TEMPLATE,
    "onevision": _ONEVISION_TEMPLATE,
}

_YI_VOCAB_SIZES = (64000, 64064)  # Yi-34B's vocabulary, as is and padded by the llava-hf conversion


def builtin_template_for(family_name: str, text_model_type: str, vocab_size: int, bos_token: str | None) -> str:
    """The BUILTIN_TEMPLATES key for a checkpoint that ships no chat template.

    The family and the language model decide, as they did for the llava-hf uploads:
    OneVision → "onevision"; Qwen backbones → "qwen" (llava-next-72b); Mistral under
    LLaVA-NeXT → "mistral"; Llama-architecture Yi (BOS <|startoftext|>, 64k vocabulary) →
    "chatml_yi"; Llama-3 (BOS <|begin_of_text|>, ≥128k vocabulary) → "llama3"; anything else
    (Vicuna, LLaVA-1.5's Mistral-based BakLLaVA, Video-LLaVA) → "vicuna".
    """
    if family_name == "llava_onevision":
        return "onevision"
    if text_model_type == "qwen2":
        return "qwen"
    if text_model_type == "mistral":
        return "mistral" if family_name in ("llava_next", "llava_next_video") else "vicuna"
    if text_model_type == "llama":
        if bos_token == "<|startoftext|>" or vocab_size in _YI_VOCAB_SIZES:
            return "chatml_yi"
        if bos_token == "<|begin_of_text|>" or vocab_size >= 128000:
            return "llama3"
    return "vicuna"

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


def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a chat template once, for rendering many times with `render_compiled`."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(f"chat template has a syntax error (line {exc.lineno}): {_one_line(exc.message or '')}") from exc


def render_compiled(
    compiled: jinja2.Template,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render a compiled template with the variables transformers passes.

    `extra` carries the rest, e.g. the tokenizer's special tokens (bos_token, eos_token, ...),
    which transformers also hands to every template.
    """
    variables: dict[str, Any] = {"tools": None, "documents": None, **extra}
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.SecurityError as exc:
        raise PromptError(f"chat template tried an unsafe operation: {_one_line(str(exc))}") from exc
    except jinja2.TemplateError as exc:
        raise PromptError(f"chat template error: {_one_line(exc.message or exc.__class__.__name__)}") from exc
    except Exception as exc:  # a template is data: any failure inside it is a prompt problem
        raise PromptError(f"chat template failed: {exc.__class__.__name__}: {_one_line(str(exc))}") from exc


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render a HF-style multimodal chat template to the prompt string (no BOS: the tokenizer adds it)."""
    return render_compiled(compile_chat_template(template), messages, add_generation_prompt, **extra)


def _template_from_value(value: Any, source: Path) -> str:
    if isinstance(value, str):
        return value
    # tokenizer_config-style list of named templates: [{"name": "default", "template": "..."}].
    if isinstance(value, list):
        named = {entry.get("name"): entry.get("template") for entry in value if isinstance(entry, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ModelError(f"{source}: 'chat_template' should be a string")


def load_chat_template(folder: Path) -> str | None:
    """The checkpoint's multimodal (processor) chat template, or None when it ships none.

    tokenizer_config.json's template is deliberately not used: it is the text-only LLM
    template, written for string content rather than typed parts.
    """
    folder = Path(folder)
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"cannot read {jinja_file}: {exc}") from exc
    for name in ("chat_template.json", "processor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
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
