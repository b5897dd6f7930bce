"""The chat templates llava-cli carries for checkpoints that ship none, copied from the
llava-hf uploads they stand in for, and the rule that picks one for a checkpoint
(prompt.py renders them; tests/unit/test_builtin_templates.py checks each renders as its hub
original)."""

from __future__ import annotations


class TemplateText(str):
    """A chat template's source, remembering where it came from for error messages."""

    origin: str = "the chat template"

    def __new__(cls, text: str, origin: str) -> "TemplateText":
        made = super().__new__(cls, text)
        made.origin = origin
        return made

    def __getnewargs__(self) -> tuple[str, str]:  # copy, deepcopy and pickle rebuild it whole
        return str(self), self.origin


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

BUILTIN_TEMPLATES = {name: TemplateText(text, f"the built-in {name} chat template")
                     for name, text in BUILTIN_TEMPLATES.items()}

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
