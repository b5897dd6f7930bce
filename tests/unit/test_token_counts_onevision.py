"""LLaVA-OneVision token counts for the real hub geometry (384-px SigLIP, 27×27, 36 pinpoints).

Every row of pipeline_notes.md §4.1, plus §4.2 (multi-image, newer transformers) and §4.3
(video), checked on the pure functions, on the family built from a hub-shaped config.json
(no weights needed), and against transformers 4.48.3's processor arithmetic.
"""

from __future__ import annotations

import json
import math

import pytest

from llava_cli import processing as px
from llava_cli.families import family_for
from llava_cli.families.llava_onevision import (ONEVISION_PINPOINTS, LlavaOnevision, anyres_max_shape,
                                                onevision_image_grid, onevision_image_tokens,
                                                onevision_square_image_tokens, onevision_video_tokens)
from llava_cli.loading import Checkpoint

# pipeline_notes.md §4.1: H×W, best (h, w), tile grid, h′×w′, r, h″×w″, tokens.
TABLE_4_1 = [
    ((899, 1024), (1152, 1152), (3, 3), (71, 81), 0.936, (71, 81), 6551),
    ((480, 640), (768, 768), (2, 2), (40, 54), 0.574, (40, 54), 2929),
    ((384, 384), (384, 384), (1, 1), (27, 27), 0.333, (27, 27), 1485),
    ((1000, 200), (1152, 384), (3, 1), (81, 17), 0.458, (81, 17), 2187),
    ((300, 2500), (384, 2304), (1, 6), (19, 162), 0.685, (19, 162), 3826),
    ((1080, 1920), (1152, 1920), (3, 5), (75, 135), 1.242, (60, 108), 7269),
    ((2000, 3000), (1536, 2304), (4, 6), (108, 162), 1.633, (66, 99), 7329),
    ((4000, 4000), (2304, 2304), (6, 6), (162, 162), 2.000, (81, 81), 7371),
]
IDS = [f"{h}x{w}" for (h, w), *_ in TABLE_4_1]


def test_pinpoints_are_the_36_hub_pairs():
    assert len(ONEVISION_PINPOINTS) == 36
    assert ONEVISION_PINPOINTS[:7] == ((384, 384), (384, 768), (384, 1152), (384, 1536), (384, 1920),
                                       (384, 2304), (768, 384))
    assert ONEVISION_PINPOINTS[-1] == (2304, 2304)


@pytest.mark.parametrize("size,best,tiles,unpadded,ratio,reduced,tokens", TABLE_4_1, ids=IDS)
def test_table_4_1(size, best, tiles, unpadded, ratio, reduced, tokens):
    height, width = size
    assert px.select_best_resolution(height, width, ONEVISION_PINPOINTS) == best
    assert (best[0] // 384, best[1] // 384) == tiles
    assert px.unpadded_shape(height, width, tiles[0] * 27, tiles[1] * 27) == unpadded
    assert math.sqrt(unpadded[0] * unpadded[1] / (9 * 27 ** 2)) == pytest.approx(ratio, abs=5e-4)
    assert anyres_max_shape(*unpadded, grid=27) == reduced
    assert onevision_image_grid(height, width) == reduced
    assert onevision_image_tokens(height, width) == tokens == 729 + reduced[0] * (reduced[1] + 1)


def test_table_4_2_square_multi_image():
    assert onevision_square_image_tokens() == 730


@pytest.mark.parametrize("frames,tokens", [(8, 1569), (16, 3137), (32, 6273), (1, 197)])
def test_table_4_3_video(frames, tokens):
    assert onevision_video_tokens(frames) == tokens == 196 * frames + 1


# ---------------------------------------------------------------------------------------
# The family, from a hub-shaped config (what llava-onevision-qwen2-0.5b-ov-hf stores).

HUB_CONFIG = {
    "architectures": ["LlavaOnevisionForConditionalGeneration"], "model_type": "llava_onevision",
    "image_token_index": 151646, "video_token_index": 151647, "vision_aspect_ratio": "anyres_max_9",
    "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
    "image_grid_pinpoints": [list(p) for p in ONEVISION_PINPOINTS], "tie_word_embeddings": False,
    "text_config": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                    "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1000000.0,
                    "vocab_size": 152000, "tie_word_embeddings": True, "max_position_embeddings": 32768},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26,
                      "patch_size": 14, "vision_use_head": False},
}
HUB_PREPROCESSOR = {"image_processor_type": "LlavaOnevisionImageProcessor", "do_pad": True,
                    "image_grid_pinpoints": [list(p) for p in ONEVISION_PINPOINTS], "image_mean": [0.5] * 3,
                    "image_std": [0.5] * 3, "resample": 3, "rescale_factor": 1 / 255,
                    "size": {"height": 384, "width": 384}}


@pytest.fixture(scope="module")
def hub_family(tmp_path_factory) -> LlavaOnevision:
    folder = tmp_path_factory.mktemp("ov-hub-config")
    (folder / "config.json").write_text(json.dumps(HUB_CONFIG))
    (folder / "preprocessor_config.json").write_text(json.dumps(HUB_PREPROCESSOR))
    family = family_for(Checkpoint.open(folder))
    assert isinstance(family, LlavaOnevision)
    return family


def test_hub_family_config(hub_family):
    assert hub_family.token_ids() == {"image": 151646, "video": 151647}
    assert hub_family.vision_config.grid == 27 and hub_family.vision_config.num_layers == 26
    assert not hub_family.vision_config.has_class_token
    assert hub_family.tokens_per_view == 729
    assert hub_family.text_config.qkv_bias and hub_family.text_config.num_kv_heads == 2
    assert hub_family.text_config.tie_word_embeddings  # text_config decides, as in 4.48.3
    assert hub_family.image_pixels.tile == 384 and hub_family.image_pixels.crop is None
    assert hub_family.image_pixels.mean == (0.5, 0.5, 0.5) and hub_family.video_pixels.std == (0.5, 0.5, 0.5)
    assert hub_family.max_tiles == 9


@pytest.mark.parametrize("size,best,tiles,unpadded,ratio,reduced,tokens", TABLE_4_1, ids=IDS)
def test_hub_family_counts(hub_family, size, best, tiles, unpadded, ratio, reduced, tokens):
    assert hub_family.grid_after_unpad(*size) == unpadded
    assert hub_family.image_grid(*size) == reduced
    assert hub_family.image_tokens(*size) == tokens


def test_hub_family_video_and_square(hub_family):
    assert [hub_family.video_tokens(f) for f in (8, 16, 32)] == [1569, 3137, 6273]
    assert hub_family.square_image_tokens() == 730


def test_family_without_vision_or_preprocessor_uses_defaults(tmp_path):
    config = {k: v for k, v in HUB_CONFIG.items() if k not in ("vision_config", "image_grid_pinpoints")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    family = family_for(Checkpoint.open(tmp_path))
    assert family.vision_config.kind == "siglip_vision_model" and family.vision_config.grid == 27
    assert family.pinpoints == ONEVISION_PINPOINTS
    assert family.image_pixels.mean == (0.5, 0.5, 0.5) and family.image_pixels.tile == 384
    assert family.image_tokens(1080, 1920) == 7269


# ---------------------------------------------------------------------------------------
# transformers 4.48.3's processor arithmetic agrees on the table and on many more sizes.

def _reference_processor():
    pytest.importorskip("transformers")
    from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor

    processor = LlavaOnevisionProcessor.__new__(LlavaOnevisionProcessor)
    processor.image_processor = LlavaOnevisionImageProcessor(image_grid_pinpoints=[list(p) for p in ONEVISION_PINPOINTS])
    processor.num_image_tokens = 729
    processor.vision_feature_select_strategy = "full"
    return processor


def test_reference_processor_agrees():
    processor = _reference_processor()
    sizes = [size for size, *_ in TABLE_4_1]
    sizes += [(h, w) for h in (17, 100, 233, 384, 500, 767, 1151, 1500, 3001) for w in (19, 240, 384, 641, 1000, 2600)]
    for height, width in sizes:
        reference = processor._get_number_of_features(height, width, 384, 384)
        assert onevision_image_tokens(height, width) == reference, (height, width)
