"""Tiny random checkpoints in the Hub layout, written by the reference implementation.

`save_pretrained` of transformers 4.48.3 writes the legacy key layout the hub files use
(`language_model.model.*`, `vision_tower.vision_model.*`, …), a `config.json` in the
diff-only form, the tokenizer files, the processor configs and the chat template.
transformers is imported inside functions: it is the test oracle, never a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from support.checkpoints.common import hub_template
from support.parity import load_pretrained
from support.tokenizers import add_tokens, real_llama2_tokenizer, train_llama_tokenizer

NEXT_VIDEO_TEMPLATE_KEY = "llava-hf/LLaVA-NeXT-Video-7B-hf"


@dataclass
class TinySpec:
    """Knobs of a tiny LLaVA-NeXT-Video checkpoint (real 336-px geometry, tiny widths)."""

    tokenizer: str = "trained"  # "trained" | "llama2"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2  # GQA 2:1
    rope_scaling: dict | None = field(default_factory=lambda: {"type": "linear", "factor": 2.5})
    vision_hidden: int = 32
    vision_layers: int = 3
    image_size: int = 336
    init_std: float = 0.1  # wider than the default 0.02 so greedy choices are well separated
    seed: int = 0
    extra_text_config: dict = field(default_factory=dict)
    extra_vision_config: dict = field(default_factory=dict)
    save_dtype: str | None = None  # e.g. "bfloat16" for the benchmark's full-size checkpoints


def build_tokenizer(spec: TinySpec, workdir: Path):
    if spec.tokenizer == "llama2":
        tok = real_llama2_tokenizer()
    else:
        tok = train_llama_tokenizer(workdir / "spm")
    # LLaVA-NeXT-Video-7B: <video> 32000 then <image> 32001 after the 32000 Llama pieces.
    add_tokens(tok, ["<video>", "<image>"])
    return tok


def make_next_video(folder: Path, spec: TinySpec | None = None) -> Path:
    """Write a tiny random LLaVA-NeXT-Video checkpoint to ``folder`` and return it."""
    import torch
    from transformers import (LlavaNextImageProcessor, LlavaNextVideoConfig,
                              LlavaNextVideoForConditionalGeneration, LlavaNextVideoImageProcessor,
                              LlavaNextVideoProcessor)

    spec = spec or TinySpec()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec, folder.parent / f"{folder.name}-work")
    video_id, image_id = tok.convert_tokens_to_ids(["<video>", "<image>"])
    text_config = {
        "model_type": "llama", "hidden_size": spec.hidden, "intermediate_size": spec.hidden * 2,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "vocab_size": len(tok), "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "initializer_range": spec.init_std, "pad_token_id": 0,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        **spec.extra_text_config,
    }
    if spec.rope_scaling:
        text_config["rope_scaling"] = spec.rope_scaling
    vision_config = {
        "model_type": "clip_vision_model", "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * 2, "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": 4, "image_size": spec.image_size, "patch_size": 14, "projection_dim": 32,
        **spec.extra_vision_config,
    }
    config = LlavaNextVideoConfig(
        text_config=text_config, vision_config=vision_config, image_token_index=image_id,
        video_token_index=video_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        spatial_pool_mode="average", spatial_pool_stride=2, use_image_newline_parameter=True,
        tie_word_embeddings=False, initializer_range=spec.init_std,
    )
    torch.manual_seed(spec.seed)
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases and norms start at constants; randomise them too
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layrnorm" in name:
                param.add_(torch.randn_like(param) * spec.init_std)
    if spec.save_dtype:
        model.to(getattr(torch, spec.save_dtype))
    model.save_pretrained(folder, safe_serialization=True)

    size = spec.image_size
    pinpoints = [[size, 2 * size], [2 * size, size], [2 * size, 2 * size], [3 * size, size], [size, 3 * size]]
    common = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
                  do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  do_convert_rgb=True)
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoImageProcessor(**common),
        image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, do_pad=True, **common),
        tokenizer=tok, chat_template=hub_template(NEXT_VIDEO_TEMPLATE_KEY), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def load_reference(folder: Path):
    """The reference model and processor, loaded from the folder as a user would."""
    return load_pretrained(folder, "LlavaNextVideoForConditionalGeneration", "LlavaNextVideoProcessor")
