"""Tiny random LLaVA-1.5 and Video-LLaVA checkpoints, written by the reference implementation.

Same approach as next_video.py (which is for LLaVA-NeXT-Video): transformers 4.48.3's
``save_pretrained`` writes the legacy hub layout (``language_model.model.*``,
``vision_tower.vision_model.*`` / ``image_tower.vision_model.*`` / ``video_tower.vision_model.*``),
the processor is saved with the hub's settings and the real chat template. Real pixel
geometry (336 px / 224 px), tiny widths, init std 0.1 with biases and norms randomised too,
so greedy choices are well separated. transformers is imported inside functions only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from support.checkpoints.common import hub_template
from support.parity import load_pretrained
from support.tokenizers import add_tokens, real_llama2_tokenizer, train_llama_tokenizer

LLAVA15_TEMPLATE_KEY = "llava-hf/llava-1.5-7b-hf"
VIDEO_LLAVA_TEMPLATE_KEY = "LanguageBind/Video-LLaVA-7B-hf"

INIT_STD = 0.1


def _tokenizer(kind: str, workdir: Path, specials: list[str]):
    """The trained or the real Llama-2 tokenizer plus the checkpoint's added tokens.

    The conversion scripts add the media tokens as special added tokens, then ``<pad>``
    as the pad token: llava-1.5 ``<image>`` 32000, ``<pad>`` 32001; Video-LLaVA ``<image>``
    32000, ``<video>`` 32001, ``<pad>`` 32002 (with the Llama-2 tokenizer).
    """
    if kind == "llama2":
        tok = real_llama2_tokenizer()
    elif kind == "trained":
        tok = train_llama_tokenizer(workdir / "spm")
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    add_tokens(tok, specials)
    tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def _text_config(tok, *, hidden: int, layers: int, heads: int, kv_heads: int) -> dict:
    return {
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": hidden * 2,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "vocab_size": len(tok), "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "initializer_range": INIT_STD, "pad_token_id": 0,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
    }


def _randomise_and_save(model, folder: Path) -> None:
    with torch.no_grad():  # biases and norms start at constants; randomise them too
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layrnorm" in name:
                param.add_(torch.randn_like(param) * INIT_STD)
    model.save_pretrained(folder, safe_serialization=True)


def _clip_processor_settings(size: int) -> dict:
    return dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
                do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255,
                do_normalize=True, do_convert_rgb=True)


def make_llava15(folder: Path, tokenizer: str = "trained", seed: int = 0) -> Path:
    """A tiny LLaVA-1.5: CLIP 336/14 (3 blocks, width 32), Llama with GQA 4:2 heads."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(tokenizer, folder.parent / f"{folder.name}-work", ["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    vision_config = {
        "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 336, "patch_size": 14,
        "projection_dim": 32,
    }
    config = LlavaConfig(
        text_config=_text_config(tok, hidden=64, layers=2, heads=4, kv_heads=2),
        vision_config=vision_config, image_token_index=image_id, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _randomise_and_save(model, folder)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(**_clip_processor_settings(336)), tokenizer=tok,
        chat_template=hub_template(LLAVA15_TEMPLATE_KEY), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def make_video_llava(folder: Path, tokenizer: str = "trained", seed: int = 0) -> Path:
    """A tiny Video-LLaVA: two CLIP 224/14 towers (3 blocks, width 32), Llama with MHA.

    Like the hub config, vision_config names no image_size, so CLIP's default 224 applies.
    """
    from transformers import (VideoLlavaConfig, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor,
                              VideoLlavaProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(tokenizer, folder.parent / f"{folder.name}-work", ["<image>", "<video>"])
    image_id, video_id = tok.convert_tokens_to_ids(["<image>", "<video>"])
    vision_config = {
        "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 3, "num_attention_heads": 4, "patch_size": 14, "projection_dim": 32,
    }
    config = VideoLlavaConfig(
        text_config=_text_config(tok, hidden=64, layers=2, heads=4, kv_heads=4),
        vision_config=vision_config, image_token_index=image_id, video_token_index=video_id,
        projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(config).eval()
    _randomise_and_save(model, folder)
    processor = VideoLlavaProcessor(
        image_processor=VideoLlavaImageProcessor(**_clip_processor_settings(224)), tokenizer=tok,
        chat_template=hub_template(VIDEO_LLAVA_TEMPLATE_KEY), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def load_llava15_reference(folder: Path):
    return load_pretrained(folder, "LlavaForConditionalGeneration", "LlavaProcessor")


def load_video_llava_reference(folder: Path):
    return load_pretrained(folder, "VideoLlavaForConditionalGeneration", "VideoLlavaProcessor")
