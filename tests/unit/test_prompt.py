"""Chat templates render exactly as transformers 4.48.3 renders them; placeholder expansion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import tokenizers as factory
from llava_cli.errors import ModelError, PromptError
from llava_cli.prompt import (
    BUILTIN_TEMPLATES,
    build_messages,
    expand_placeholders,
    load_chat_template,
    render_chat,
)

TEMPLATES_FILE = factory.SHARED / "reference" / "chat_templates.json"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _user(*parts, text=None):
    content = [{"type": kind} for kind in parts]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


# The conversations the json's rendered_examples were made from, keyed like those examples.
EXAMPLE_CONVERSATIONS = {
    "single_image_user_turn__add_generation_prompt": [_user("image", text="What is shown in this image?")],
    "single_video_user_turn__add_generation_prompt": [_user("video", text="Why is this video funny?")],
    "system+user(text before image in content list)+assistant+user__add_generation_prompt": [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is shown in this image?"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "What color is it?"}]},
    ],
}

CONVERSATIONS = {
    **EXAMPLE_CONVERSATIONS,
    "image_and_video_then_text": [_user("video", "image", text="Compare them.")],
    "two_images": [_user("image", "image", text="What differs?")],
    "media_only": [_user("video")],
    "multi_turn_video": [
        _user("video", text="What do you see in this video?"),
        {"role": "assistant", "content": [{"type": "text", "text": "A baby reading a book."}]},
        _user(text="Why is it funny?"),
    ],
    "unicode_and_braces": [_user("image", text="Was ist {{ das }}? 你好 🦙 <b>&</b>")],
}


def _load_templates() -> dict:
    if not TEMPLATES_FILE.is_file():
        pytest.skip(f"shared chat templates not found at {TEMPLATES_FILE}")
    return json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))


def _hub_templates() -> dict[str, dict]:
    data = _load_templates()
    return {key: value for key, value in data.items() if key not in ("_meta", "_alternates")}


def _all_template_texts() -> dict[str, str]:
    """Every template in the json: the hub entries and the alternates that are templates."""
    data = _load_templates()
    texts = {key: entry["chat_template"] for key, entry in _hub_templates().items()}
    for key, value in data.get("_alternates", {}).items():
        if isinstance(value, str) and "{%" in value:
            texts[f"_alternates/{key}"] = value
    return texts


@pytest.fixture(scope="module")
def reference_tokenizer():
    """A bare transformers fast tokenizer, only for its apply_chat_template."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    raw = RawTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=raw, **SPECIAL_TOKENS)


def _reference_render(tokenizer, template: str, messages, add_generation_prompt: bool):
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _reference_render_raw(template: str, messages, add_generation_prompt: bool):
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(template).render(
        messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **SPECIAL_TOKENS
    )


def test_every_template_matches_transformers(reference_tokenizer):
    import jinja2

    checked = 0
    for name, template in _all_template_texts().items():
        for conversation_name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                where = (name, conversation_name, add_generation_prompt)
                try:
                    expected = _reference_render(reference_tokenizer, template, messages, add_generation_prompt)
                except jinja2.TemplateError:
                    with pytest.raises(PromptError):
                        render_chat(template, messages, add_generation_prompt, **SPECIAL_TOKENS)
                    continue
                ours = render_chat(template, messages, add_generation_prompt, **SPECIAL_TOKENS)
                assert ours == expected, where
                assert ours == _reference_render_raw(template, messages, add_generation_prompt), where
                checked += 1
    assert checked > 100


def test_rendered_examples_in_the_json():
    checked = 0
    for name, entry in _hub_templates().items():
        for example_name, expected in entry.get("rendered_examples", {}).items():
            assert example_name in EXAMPLE_CONVERSATIONS, f"unknown example {example_name!r} for {name}"
            messages = EXAMPLE_CONVERSATIONS[example_name]
            assert render_chat(entry["chat_template"], messages, add_generation_prompt=True) == expected, name
            checked += 1
    assert checked >= 13


def test_mistral_template_rejects_unknown_roles():
    template = _hub_templates()["llava-hf/llava-v1.6-mistral-7b-hf"]["chat_template"]
    messages = [{"role": "tool", "content": [{"type": "text", "text": "x"}]}]
    with pytest.raises(PromptError, match="Only user and assistant roles are supported!"):
        render_chat(template, messages)


def test_builtin_vicuna_is_the_next_video_template():
    entry = _hub_templates()["llava-hf/LLaVA-NeXT-Video-7B-hf"]
    assert BUILTIN_TEMPLATES["vicuna"] == entry["chat_template"]


def test_builtin_vicuna_renders_without_shared_files():
    messages = build_messages("Why is this video funny?", ["video"], None)
    assert render_chat(BUILTIN_TEMPLATES["vicuna"], messages) == "USER: <video>\nWhy is this video funny? ASSISTANT:"


# -- jinja environment -----------------------------------------------------------------------------

ENVIRONMENT_TEMPLATES = [
    "{{ messages | tojson }}",
    "{{ messages | tojson(indent=2, sort_keys=True) }}",
    "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}",
    "{% for m in messages %}{% if m.role == 'user' %}{% continue %}{% endif %}{{ m.role }}{% endfor %}",
    "  {% if add_generation_prompt %}\n   yes\n  {% endif %}\nend",
    "{{ bos_token }}{{ eos_token }}{{ undefined_name }}|{{ tools }}|{{ documents }}",
    "{% generation %}{{ 'x' }}{% endgeneration %}{%- generation -%} y {%- endgeneration -%}",
    "{{ strftime_now('%Y') | length }}",
    "{{ ''.__class__ }}|{{ raise_exception.__globals__ }}",  # unsafe attributes render as undefined
]


@pytest.mark.parametrize("template", ENVIRONMENT_TEMPLATES)
def test_environment_matches_transformers(reference_tokenizer, template):
    messages = CONVERSATIONS["multi_turn_video"]
    expected = _reference_render(reference_tokenizer, template, messages, True)
    assert render_chat(template, messages, True, **SPECIAL_TOKENS) == expected


def test_extra_variables_reach_the_template():
    assert render_chat("{{ bos_token }}-{{ custom }}", [], custom="c", bos_token="<s>") == "<s>-c"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
        "{% set _ = messages.append(1) %}",
        "{{ raise_exception.__globals__['__builtins__'] }}",
    ],
)
def test_sandbox_blocks_unsafe_access(template):
    with pytest.raises(PromptError) as info:
        render_chat(template, [_user(text="hi")])
    assert "\n" not in str(info.value)
    assert "pwned" not in str(info.value)


@pytest.mark.parametrize(
    "template, match",
    [
        ("{% for m in messages %}", "syntax error"),
        ("{{ raise_exception('no system role here') }}", "no system role here"),
        ("{{ messages[0]['content'] + 'x' }}", "TypeError"),
        ("{{ nothing.at.all }}", "undefined"),
    ],
)
def test_template_errors_are_one_line_prompt_errors(template, match):
    with pytest.raises(PromptError, match=match) as info:
        render_chat(template, [_user(text="hi")])
    assert "\n" not in str(info.value)


# -- load_chat_template -------------------------------------------------------------------------------


def _write(folder: Path, name: str, data) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    (folder / name).write_text(text, encoding="utf-8")


def test_load_prefers_jinja_then_chat_template_json_then_processor_config(tmp_path):
    _write(tmp_path, "tokenizer_config.json", {"chat_template": "tokenizer"})
    assert load_chat_template(tmp_path) is None  # the text-only LLM template is not used
    _write(tmp_path, "processor_config.json", {"chat_template": "processor"})
    assert load_chat_template(tmp_path) == "processor"
    _write(tmp_path, "chat_template.json", {"chat_template": "json"})
    assert load_chat_template(tmp_path) == "json"
    _write(tmp_path, "chat_template.jinja", "jinja {{ x }}\n")
    assert load_chat_template(tmp_path) == "jinja {{ x }}\n"


def test_load_skips_files_without_a_template(tmp_path):
    _write(tmp_path, "chat_template.json", {"other": 1})
    _write(tmp_path, "processor_config.json", {"patch_size": 14, "chat_template": "from processor"})
    assert load_chat_template(tmp_path) == "from processor"
    (tmp_path / "processor_config.json").unlink()
    assert load_chat_template(tmp_path) is None
    assert load_chat_template(tmp_path / "missing") is None


def test_load_hub_template_round_trip(tmp_path):
    entry = _hub_templates()["llava-hf/llava-onevision-qwen2-0.5b-ov-hf"]
    (tmp_path / "chat_template.json").write_text(
        json.dumps({"chat_template": entry["chat_template"]}, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    assert load_chat_template(tmp_path) == entry["chat_template"]


def test_load_invalid_json_is_a_model_error(tmp_path):
    _write(tmp_path, "chat_template.json", "{broken")
    with pytest.raises(ModelError) as info:
        load_chat_template(tmp_path)
    assert "\n" not in str(info.value)


# -- build_messages -------------------------------------------------------------------------------------


def test_build_messages_order_and_system():
    assert build_messages("why?", ["video", "image"], None) == [
        {"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "why?"}]}
    ]
    assert build_messages("q", [], "be brief") == [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
    ]


def test_build_messages_rejects_unknown_media():
    with pytest.raises(PromptError, match="audio"):
        build_messages("q", ["audio"], None)


# -- expand_placeholders ---------------------------------------------------------------------------------

IMAGE, VIDEO = 32001, 32000


def test_expand_single_kind():
    ids = [1, 10, IMAGE, 13, 11]
    assert expand_placeholders(ids, {IMAGE: [3]}) == [1, 10, IMAGE, IMAGE, IMAGE, 13, 11]


def test_expand_interleaved_kinds_in_order():
    ids = [1, IMAGE, 5, VIDEO, 6, IMAGE, VIDEO]
    out = expand_placeholders(ids, {IMAGE: [2, 1], VIDEO: [3, 0]})
    assert out == [1, IMAGE, IMAGE, 5, VIDEO, VIDEO, VIDEO, 6, IMAGE]


def test_expand_leaves_ids_without_placeholders_alone():
    assert expand_placeholders([1, 2, 3], {}) == [1, 2, 3]
    assert expand_placeholders([1, 2, 3], {IMAGE: []}) == [1, 2, 3]


def test_expand_matches_processor_string_expansion():
    """Expanding ids equals expanding the "<image>" string before tokenizing (what processors do)."""
    tok = factory.real_llama2_tokenizer()
    factory.add_tokens(tok, ["<video>", "<image>"])
    prompt = "USER: <video>\n<image>\nWhy? ASSISTANT:"
    by_string = tok(prompt.replace("<video>", "<video>" * 4).replace("<image>", "<image>" * 2)).input_ids
    assert expand_placeholders(tok(prompt).input_ids, {VIDEO: [4], IMAGE: [2]}) == by_string


@pytest.mark.parametrize(
    "ids, counts, message",
    [
        ([IMAGE, IMAGE], {IMAGE: [5]}, "2 <image> placeholder(s) but 1 media item(s)"),
        ([1, 2], {IMAGE: [5]}, "0 <image> placeholder(s) but 1 media item(s)"),
        ([IMAGE], {IMAGE: [5, 5, 5]}, "1 <image> placeholder(s) but 3 media item(s)"),
        ([IMAGE, VIDEO], {IMAGE: [1], VIDEO: []}, "1 <video> placeholder(s) but 0 media item(s)"),
    ],
)
def test_expand_mismatch_is_a_prompt_error(ids, counts, message):
    names = {IMAGE: "<image>", VIDEO: "<video>"}
    with pytest.raises(PromptError) as info:
        expand_placeholders(ids, counts, names)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_expand_mismatch_without_names_mentions_the_id():
    with pytest.raises(PromptError, match=f"token-{IMAGE}"):
        expand_placeholders([IMAGE, IMAGE], {IMAGE: [1]})


def test_expand_rejects_negative_counts():
    with pytest.raises(PromptError, match="negative"):
        expand_placeholders([IMAGE], {IMAGE: [-1]})


def test_template_text_survives_copies():
    """Built-in templates carry their origin for error messages; copying one (transformers'
    processors deep-copy the template a test checkpoint is saved with) rebuilds it whole."""
    import copy
    import pickle

    from llava_cli.prompt import BUILTIN_TEMPLATES, TemplateText

    for template in BUILTIN_TEMPLATES.values():
        for clone in (copy.copy(template), copy.deepcopy(template), pickle.loads(pickle.dumps(template))):
            assert isinstance(clone, TemplateText)
            assert clone == template and clone.origin == template.origin
