"""LLaVA-NeXT anyres token counts: every worked example of pipeline_notes.md §3.5, through our
pure functions and the family built from a real-size config (no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_cli import processing as px
from llava_cli.families.llava_next import NEXT_PINPOINTS, LlavaNext
from llava_cli.loading import Checkpoint

# (H, W) → best (h, w), resized (h, w), grid (rows, cols), unpadded h′×w′, tokens
ROWS = [
    ((899, 1024), (672, 672), (590, 672), (2, 2), (42, 48), 2634),
    ((480, 640), (672, 672), (504, 672), (2, 2), (36, 48), 2340),
    ((640, 480), (672, 672), (672, 504), (2, 2), (48, 36), 2352),
    ((808, 1100), (672, 672), (494, 672), (2, 2), (36, 48), 2340),
    ((1080, 1920), (672, 672), (378, 672), (2, 2), (28, 48), 1948),
    ((2000, 3000), (672, 672), (448, 672), (2, 2), (32, 48), 2144),
    ((336, 336), (336, 672), (336, 336), (1, 2), (24, 24), 1176),
    ((224, 224), (336, 672), (336, 336), (1, 2), (24, 24), 1176),
    ((1000, 200), (1008, 336), (1008, 202), (3, 1), (72, 14), 1656),
    ((200, 1000), (336, 1008), (202, 1008), (1, 3), (14, 72), 1598),
]

# llava-hf/llava-v1.6-mistral-7b-hf, as on the hub (hub_configs.md §3): diff-only config.json.
CONFIG = {
    "architectures": ["LlavaNextForConditionalGeneration"],
    "model_type": "llava_next",
    "image_token_index": 32000,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "projector_hidden_act": "gelu",
    "use_image_newline_parameter": True,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "vocab_size": 32064,
    "text_config": {
        "_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["MistralForCausalLM"],
        "model_type": "mistral", "intermediate_size": 14336, "max_position_embeddings": 32768,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
        "torch_dtype": "bfloat16", "vocab_size": 32064,
    },
    "vision_config": {
        "model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
        "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
        "vocab_size": 32000,
    },
}
PREPROCESSOR = {
    "aspect_ratio_setting": "anyres", "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
    "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor", "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336},
}


@pytest.fixture(scope="module")
def family() -> LlavaNext:
    return LlavaNext(Checkpoint(folder=Path("."), config=CONFIG, preprocessor=PREPROCESSOR))


@pytest.mark.parametrize("size, best, resized, grid, unpadded, tokens", ROWS, ids=[f"{h}x{w}" for (h, w), *_ in ROWS])
def test_pure_functions(size, best, resized, grid, unpadded, tokens):
    height, width = size
    assert px.select_best_resolution(height, width, NEXT_PINPOINTS) == best
    assert px.fit_within(height, width, *best) == resized
    assert (best[0] // 336, best[1] // 336) == grid
    assert px.unpadded_shape(height, width, grid[0] * 24, grid[1] * 24) == unpadded
    rows, cols = unpadded
    assert 576 + rows * (cols + 1) == tokens
    # The processor's form of the same count (num_additional_image_tokens 1, "default" drops it).
    assert (24 * 24 + 1) + rows * cols + rows - 1 == tokens


@pytest.mark.parametrize("size, best, resized, grid, unpadded, tokens", ROWS, ids=[f"{h}x{w}" for (h, w), *_ in ROWS])
def test_family_counts(family, size, best, resized, grid, unpadded, tokens):
    height, width = size
    assert family.grid_after_unpad(height, width) == unpadded
    assert family.image_tokens(height, width) == tokens


def test_family_geometry(family):
    """The real config gives what §3 assumes: 336-px tiles, a 24×24 grid, 576 tokens per tile."""
    assert family.vision_config.image_size == 336
    assert family.vision_config.grid == 24
    assert family.tokens_per_view == 576
    assert family.pinpoints == NEXT_PINPOINTS
    assert family.token_ids() == {"image": 32000}
    text = family.text_config
    assert (text.num_heads, text.num_kv_heads, text.head_dim, text.rope_theta) == (32, 8, 128, 1e6)
    assert text.sliding_window is None  # the hub config overrides Mistral's 4096 with null


def test_public_dump_prompt_length(family):
    """808×1100 with "[INST] <image>\\n...? [/INST]": 2369 ids = 2340 image + 29 text tokens, 5 views."""
    assert family.image_tokens(808, 1100) + 29 == 2369
    rows, cols = px.select_best_resolution(808, 1100, NEXT_PINPOINTS)
    assert 1 + (rows // 336) * (cols // 336) == 5
