"""What every tiny-checkpoint builder shares: each family's hub chat template.

A builder writes the real chat template of the hub checkpoint it mirrors, read from
../shared/reference/chat_templates.json when present; without ../shared it writes our built-in
template that renders the same (HUB_BUILTIN maps one to the other; test_builtin_templates checks
that table against the real templates when ../shared is present).
"""

from __future__ import annotations

import json

from support.tokenizers import SHARED

# The built-in (llava_cli.prompt.BUILTIN_TEMPLATES) that renders what each hub template
# renders; test_builtin_templates checks this table against the real templates when
# ../shared is present.
HUB_BUILTIN = {
    "llava-hf/llava-1.5-7b-hf": "vicuna",
    "llava-hf/llava-v1.6-vicuna-7b-hf": "vicuna",
    "llava-hf/llava-v1.6-mistral-7b-hf": "mistral",
    "llava-hf/llava-v1.6-34b-hf": "chatml_yi",
    "llava-hf/llama3-llava-next-8b-hf": "llama3",
    "llava-hf/llava-next-72b-hf": "qwen",
    "llava-hf/LLaVA-NeXT-Video-7B-hf": "vicuna",
    "llava-hf/LLaVA-NeXT-Video-34B-hf": "chatml_yi",
    "LanguageBind/Video-LLaVA-7B-hf": "vicuna",
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": "onevision",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "onevision",
    "llava-hf/llava-onevision-qwen2-0.5b-si-hf": "onevision",
    "llava-hf/llava-onevision-qwen2-7b-si-hf": "onevision",
}


def hub_template(key: str) -> str:
    """A checkpoint's real chat template from ../shared, else the built-in that renders the same."""
    path = SHARED / "reference" / "chat_templates.json"
    if path.is_file():
        return json.loads(path.read_text())[key]["chat_template"]
    from llava_cli.prompt import BUILTIN_TEMPLATES

    return BUILTIN_TEMPLATES[HUB_BUILTIN[key]]
