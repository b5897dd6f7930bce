"""Tiny random LLaVA-OneVision checkpoints in the Hub layout, written by transformers 4.48.3.

Real geometry (SigLIP at 384 px, 14-px patches → 27×27 = 729 tokens per view, the 36
anyres pinpoints, the hub's preprocessor settings and chat template) with tiny widths, so
every token count and every resize is the real one while a forward pass stays cheap.

transformers is imported inside functions: it is the test oracle, never a dependency.
"""

from __future__ import annotations

from pathlib import Path

from support.checkpoints.common import hub_template
from support.parity import load_pretrained
from support.tokenizers import add_tokens, real_qwen2_tokenizer, train_qwen2_tokenizer_onevision

ONEVISION_TEMPLATE_KEY = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
ONEVISION_PINPOINTS = [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]


def build_tokenizer(kind: str):
    if kind == "qwen2":
        tok = real_qwen2_tokenizer()
        # LLaVA-OneVision: <image> 151646 then <video> 151647 after the Qwen2 specials.
        assert add_tokens(tok, ["<image>", "<video>"]) == [151646, 151647]
    elif kind == "trained":
        tok = train_qwen2_tokenizer_onevision()
        add_tokens(tok, ["<image>", "<video>"])
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    return tok


def make_onevision(folder: Path, tokenizer: str = "trained", tied: bool = True, *, hidden: int = 64,
                   layers: int = 2, heads: int = 4, kv_heads: int = 2, vision_hidden: int = 32,
                   vision_layers: int = 2, init_std: float = 0.1, seed: int = 0, text_overrides: dict | None = None,
                   vision_overrides: dict | None = None, save_dtype: str | None = None) -> Path:
    """Write a tiny random LLaVA-OneVision checkpoint to ``folder`` and return it.

    ``tied``: the 0.5B layout, where the LM head is the embedding matrix and no
    ``language_model.lm_head.weight`` is stored; else a separate head (7B).
    """
    import torch
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor,
                              LlavaOnevisionVideoProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(tokenizer)
    image_id, video_id = tok.convert_tokens_to_ids(["<image>", "<video>"])
    endoftext, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    vocab = -(-len(tok) // 64) * 64  # the hub pads the vocabulary to a multiple of 64
    text_config = {
        "model_type": "qwen2", "hidden_size": hidden, "intermediate_size": hidden * 2,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "vocab_size": vocab, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "initializer_range": init_std, "bos_token_id": endoftext, "eos_token_id": im_end,
        # 4.48.3 ties the LM head by the *text* config's flag (the composite's tie_weights
        # delegates to the language model); the hub 0.5B config sets it there.
        "tie_word_embeddings": tied,
        **(text_overrides or {}),
    }
    vision_config = {
        "model_type": "siglip_vision_model", "hidden_size": vision_hidden, "intermediate_size": vision_hidden * 2,
        "num_hidden_layers": vision_layers, "num_attention_heads": 4, "image_size": 384, "patch_size": 14,
        "vision_use_head": False,
        **(vision_overrides or {}),
    }
    config = LlavaOnevisionConfig(
        text_config=text_config, vision_config=vision_config, image_token_index=image_id,
        video_token_index=video_id, vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=ONEVISION_PINPOINTS,
        # The composite's own flag is left at its class default (False), as the hub
        # conversion script leaves it: only text_config says whether the head is tied.
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases and norms start at constants; randomise them too
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * init_std)
            elif name == "image_newline":
                param.normal_(0.0, 1.0)
    if tied:
        assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight
    else:
        assert model.language_model.lm_head.weight is not model.language_model.model.embed_tokens.weight
    if save_dtype:
        model.to(getattr(torch, save_dtype))
    model.save_pretrained(folder, safe_serialization=True)

    common = dict(size={"height": 384, "width": 384}, resample=3, do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(image_grid_pinpoints=ONEVISION_PINPOINTS, do_pad=True,
                                                     **common),
        video_processor=LlavaOnevisionVideoProcessor(**common),
        tokenizer=tok, chat_template=hub_template(ONEVISION_TEMPLATE_KEY), num_image_tokens=729,
        vision_feature_select_strategy="full",
    )
    processor.save_pretrained(folder)
    return folder


def load_reference(folder: Path):
    """The reference model and processor, loaded from the folder as a user would."""
    return load_pretrained(folder, "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor")


def make_onevision_sized(folder: Path, dims: dict) -> Path:
    """A random OneVision checkpoint with a benchmark's widths (bench/bench_ask.py SIZES).
    By default: untied head as in the 7B, SigLIP-so400m's vision shapes, saved in bfloat16;
    ``dims`` may set vision_hidden/vision_layers/vision_heads/vision_inter, tied and
    save_dtype (None: float32)."""
    return make_onevision(folder, "trained", tied=dims.get("tied", False), hidden=dims["hidden"],
                          layers=dims["layers"], heads=dims["heads"], kv_heads=dims["kv_heads"],
                          vision_hidden=dims.get("vision_hidden", 1152), vision_layers=dims.get("vision_layers", 26),
                          init_std=0.02, text_overrides={"intermediate_size": dims["inter"],
                                                         "vocab_size": dims["vocab"]},
                          vision_overrides={"num_attention_heads": dims.get("vision_heads", 16),
                                            "intermediate_size": dims.get("vision_inter", 4304)},
                          save_dtype=dims.get("save_dtype", "bfloat16"))
