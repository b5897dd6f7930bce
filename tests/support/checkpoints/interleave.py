"""Tiny random LLaVA-Interleave checkpoints (``LlavaForConditionalGeneration`` with a SigLIP
tower and a Qwen2 backbone, as llava-hf/llava-interleave-qwen-0.5b-hf / -7b-hf), written by
transformers 4.48.3.

Real geometry (SigLIP at 384 px, 14-px patches → 27×27 = 729 tokens per image, layer -1,
strategy "full"), the hub's SiglipImageProcessor settings (squash to 384×384, mean/std 0.5),
``<image>`` right after the Qwen2 specials (151646 with the real tokenizer), tiny widths.
transformers is imported inside functions: it is the test oracle, never a dependency.
"""

from __future__ import annotations

from pathlib import Path

from support.parity import load_pretrained
from support.tokenizers import add_tokens, real_qwen2_tokenizer, train_qwen2_tokenizer_onevision

# The llava-hf Interleave checkpoints' chat template, verbatim: llava-hf/llava-interleave-qwen-0.5b-hf
# chat_template.json at 1abeb3a994bf01d53d492318a1c9517950cd9f1b ("Update chat_template.json to incorporate
# `generation` tag", 699 bytes; the -7b-hf repo got the same update, dfc07ed, also 699 bytes). ChatML turns,
# each message's images first as bare "<image>" (no newline between them), then "\n" + each text.
# (It is not in ../shared/reference/chat_templates.json, so it is written out here; both sides render
# this same file.)
INTERLEAVE_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(kind: str):
    if kind == "qwen2":
        tok = real_qwen2_tokenizer()
        assert add_tokens(tok, ["<image>"]) == [151646]  # the hub's image_token_index
    elif kind == "trained":
        tok = train_qwen2_tokenizer_onevision()
        add_tokens(tok, ["<image>"])
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    return tok


def make_llava_siglip(folder: Path, tokenizer: str = "trained", tied: bool = True, *, hidden: int = 64,
                      layers: int = 2, heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32,
                      vision_layers: int = 2, init_std: float = 0.1, seed: int = 0) -> Path:
    """Write a tiny random LLaVA-Interleave checkpoint to ``folder`` and return it.

    ``tied``: the LM head is the embedding matrix (text_config's flag, which is what
    4.48.3 ties by) and no ``language_model.lm_head.weight`` is stored.
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, SiglipImageProcessor
    from transformers import Qwen2Config, SiglipVisionConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(tokenizer)
    image_id = tok.convert_tokens_to_ids("<image>")
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    vocab = -(-len(tok) // 64) * 64
    text_config = Qwen2Config(
        hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, vocab_size=vocab, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, initializer_range=init_std, bos_token_id=endoftext, eos_token_id=im_end,
        tie_word_embeddings=tied, use_sliding_window=False,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=384, patch_size=14, vision_use_head=False,
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_id,
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_seq_length=729, initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases and norms start at constants; randomise them too
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * init_std)
    lm = model.language_model
    assert (lm.lm_head.weight is lm.model.embed_tokens.weight) == tied
    model.save_pretrained(folder, safe_serialization=True)

    processor = LlavaProcessor(
        image_processor=SiglipImageProcessor(size={"height": 384, "width": 384}, resample=3, do_resize=True,
                                             do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
        tokenizer=tok, chat_template=INTERLEAVE_TEMPLATE, patch_size=14, vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
    )
    processor.save_pretrained(folder)
    return folder


def load_reference(folder: Path):
    """The reference model and processor, loaded from the folder as a user would."""
    return load_pretrained(folder, "LlavaForConditionalGeneration", "LlavaProcessor")
