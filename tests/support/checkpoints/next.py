"""Tiny random LLaVA-NeXT (v1.6) checkpoints for every language backbone the llava-hf uploads use.

Each spec mirrors one hub checkpoint's text side (architecture flags, GQA ratio, RoPE theta,
sliding-window setting, BOS/EOS tokens and tokenizer kind) at tiny widths, with the real
336-px CLIP geometry and anyres pinpoints, and that checkpoint's hub chat template. Written by
transformers 4.48.3's `save_pretrained` (the test oracle; imported inside functions only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from support.checkpoints.common import hub_template
from support.parity import load_pretrained
from support.tokenizers import (SHARED, add_tokens, real_llama2_tokenizer, real_qwen2_tokenizer,
                                train_llama3_tokenizer, train_llama_tokenizer, train_qwen2_tokenizer_next,
                                train_yi_tokenizer)


@dataclass
class NextSpec:
    """Knobs of one tiny LLaVA-NeXT checkpoint."""

    template_key: str  # the hub checkpoint whose chat template (and text side) this mirrors
    builtin: str  # our BUILTIN_TEMPLATES key for that checkpoint (template fallback without shared)
    tokenizer: str  # "trained" | "llama2" | "yi" | "llama3" | "qwen2" | "qwen2-trained"
    model_type: str = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    rope_theta: float = 10000.0
    vision_hidden: int = 32
    vision_layers: int = 3
    image_size: int = 336
    init_std: float = 0.1  # wider than the default 0.02 so greedy choices are well separated
    seed: int = 0  # chosen per spec so that greedy continuations are not one repeated token
    text_config: dict = field(default_factory=dict)  # extra text_config keys
    config_patch: dict = field(default_factory=dict)  # text_config keys written into config.json afterwards
    eos: str = "</s>"  # the stop token generation_config must carry


SPECS: dict[str, NextSpec] = {
    # llava-v1.6-vicuna-7b: Llama-2 (MHA), θ 1e4, pad 0.
    "vicuna": NextSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "vicuna", "trained", seed=4,
                       text_config={"pad_token_id": 0}),
    "vicuna-llama2": NextSpec("llava-hf/llava-v1.6-vicuna-7b-hf", "vicuna", "llama2", seed=2,
                              text_config={"pad_token_id": 0}),
    # llava-v1.6-mistral-7b: GQA 4:1, θ 1e6, sliding_window null.
    "mistral": NextSpec("llava-hf/llava-v1.6-mistral-7b-hf", "mistral", "trained", model_type="mistral",
                        hidden=128, heads=8, kv_heads=2, rope_theta=1e6, seed=4,
                        text_config={"sliding_window": None}),
    # Same, with a window far smaller than the image prompt (and than the text-only one).
    "mistral-swa": NextSpec("llava-hf/llava-v1.6-mistral-7b-hf", "mistral", "trained", model_type="mistral",
                            hidden=128, heads=8, kv_heads=2, rope_theta=1e6, seed=1,
                            text_config={"sliding_window": 16}),
    # llava-v1.6-34b: Yi-34B = Llama architecture, GQA 7:1, θ 5e6, BOS <|startoftext|> 1, EOS <|im_end|> 7.
    "yi": NextSpec("llava-hf/llava-v1.6-34b-hf", "chatml_yi", "yi", hidden=224, heads=14, kv_heads=2,
                   rope_theta=5e6, seed=2, text_config={"pad_token_id": 0}, eos="<|im_end|>"),
    # llama3-llava-next-8b: GQA 4:1, θ 5e5, BOS <|begin_of_text|>, EOS <|eot_id|>.
    "llama3": NextSpec("llava-hf/llama3-llava-next-8b-hf", "llama3", "llama3", hidden=128, heads=8, kv_heads=2,
                       rope_theta=5e5, eos="<|eot_id|>"),
    # llava-next-72b: Qwen1.5 = qwen2 type, q/k/v bias, no GQA, no BOS, EOS <|im_end|>, rms eps default
    # (absent), and the hub's stale sliding_window with use_sliding_window false.
    "qwen": NextSpec("llava-hf/llava-next-72b-hf", "qwen", "qwen2", model_type="qwen2", rope_theta=1e6, seed=2,
                     config_patch={"sliding_window": 16, "use_sliding_window": False, "max_window_layers": 0},
                     eos="<|im_end|>"),
    "qwen-trained": NextSpec("llava-hf/llava-next-72b-hf", "qwen", "qwen2-trained", model_type="qwen2",
                             rope_theta=1e6,
                             config_patch={"sliding_window": 16, "use_sliding_window": False,
                                           "max_window_layers": 0},
                             eos="<|im_end|>"),
}


def template_for(spec: NextSpec) -> str:
    """The hub checkpoint's chat template from ../shared, else our verbatim built-in copy."""
    if (SHARED / "reference" / "chat_templates.json").is_file():
        return hub_template(spec.template_key)
    from llava_cli.prompt import BUILTIN_TEMPLATES

    return BUILTIN_TEMPLATES[spec.builtin]


def build_tokenizer(spec: NextSpec, workdir: Path):
    """The tokenizer with LLaVA-NeXT's extra tokens appended, as the conversion scripts did."""
    kind = spec.tokenizer
    if kind == "trained":
        tok = train_llama_tokenizer(workdir / "spm")
    elif kind == "llama2":
        tok = real_llama2_tokenizer()
    elif kind == "yi":
        tok = train_yi_tokenizer(workdir / "spm-yi")
    elif kind == "llama3":
        tok = train_llama3_tokenizer()
    elif kind == "qwen2":
        tok = real_qwen2_tokenizer()
    elif kind == "qwen2-trained":
        tok = train_qwen2_tokenizer_next()
    else:
        raise ValueError(kind)
    if spec.model_type == "mistral" or kind == "llama3":
        add_tokens(tok, ["<image>", "<pad>"])  # v1.6-mistral / llama3-llava-next: <image> then <pad>
        tok.pad_token = "<pad>"
    else:
        add_tokens(tok, ["<image>"])
    if kind == "qwen2":
        assert tok.convert_tokens_to_ids("<image>") == 151646  # llava-next-72b's image_token_index
    return tok


# -- checkpoint -------------------------------------------------------------------------------------

def make_next(folder: Path, spec: NextSpec) -> Path:
    """Write a tiny random LLaVA-NeXT checkpoint for ``spec`` to ``folder`` and return it."""
    import torch
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec, folder.parent / f"{folder.name}-work")
    image_id = tok.convert_tokens_to_ids("<image>")
    eos_id = tok.convert_tokens_to_ids(spec.eos)
    assert tok.eos_token_id == eos_id, (tok.eos_token, spec.eos)
    text_config = {
        "model_type": spec.model_type, "hidden_size": spec.hidden, "intermediate_size": spec.hidden * 2,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "vocab_size": len(tok), "max_position_embeddings": 8192,
        "rope_theta": spec.rope_theta, "initializer_range": spec.init_std,
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.convert_tokens_to_ids(
            "<|endoftext|>"),
        "eos_token_id": eos_id,
        **spec.text_config,
    }
    if spec.model_type != "qwen2":
        text_config["rms_norm_eps"] = 1e-5  # stored by every llava-hf text_config but the 72b's
    vision_config = {
        "model_type": "clip_vision_model", "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * 2, "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": 4, "image_size": spec.image_size, "patch_size": 14, "projection_dim": 32,
    }
    size = spec.image_size
    pinpoints = [[size, 2 * size], [2 * size, size], [2 * size, 2 * size], [3 * size, size], [size, 3 * size]]
    config = LlavaNextConfig(
        text_config=text_config, vision_config=vision_config, image_token_index=image_id,
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2, vision_feature_select_strategy="default",
        use_image_newline_parameter=True, tie_word_embeddings=False, initializer_range=spec.init_std,
    )
    torch.manual_seed(spec.seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases and norms start at constants; randomise them too
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layrnorm" in name:
                param.add_(torch.randn_like(param) * spec.init_std)
    model.save_pretrained(folder, safe_serialization=True)
    if spec.config_patch:
        path = folder / "config.json"
        saved = json.loads(path.read_text())
        saved["text_config"].update(spec.config_patch)
        path.write_text(json.dumps(saved, indent=2))

    common = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
                  do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                  do_convert_rgb=True)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, do_pad=True, **common),
        tokenizer=tok, chat_template=template_for(spec), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def load_reference(folder: Path, attn: str = "sdpa"):
    """The reference model and processor, loaded from the folder as a user would."""
    return load_pretrained(folder, "LlavaNextForConditionalGeneration", "LlavaNextProcessor",
                           attn_implementation=attn)
