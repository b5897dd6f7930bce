"""Parity of our LLaVA-OneVision pipeline with transformers 4.48.3 on tiny random checkpoints.

Real geometry (384-px SigLIP, 729 tokens per view, 36 pinpoints, anyres_max_9), tiny widths.
The reference gets what a transformers user would give it (the processor's chat template,
PIL images, frames from a full decode at the model cards' indices); ours goes through our
media, prompt, tokenizer, preprocessing and networks. Checked per case: prompt ids,
pixel values, last-token logits and a 20-token greedy continuation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support.checkpoints.onevision import load_reference, make_onevision
from support.media import image_file, video_file
from support.parity import Pair, image, video

from llava_cli.families.llava_onevision import LlavaOnevision, onevision_image_tokens

# (width, height) on disk
IMAGES = {
    "small.png": (320, 240),  # best 384×384: base + one tile, unpadded to 21×27
    "mid.png": (640, 480),  # best 768×768: 2×2 tiles, unpadded to 40×54, r = 0.57
    "wide.png": (1920, 1080),  # 3×5 tiles, r = 1.24 > 1.1: bilinear downsampling to 60×108
    "tall.png": (200, 1000),  # 3×1 tiles, unpadded columns (odd slack)
}


# conftest's media_dir fixture writes these into one folder for this module.
MEDIA_FILES = {
    "clip.mp4": video_file(frames=30, size=(96, 64), fps=24),
    **{name: image_file(size=size) for name, size in IMAGES.items()},
}


MEDIA = {
    "image-small": lambda d: [image(d / "small.png")],
    "image-mid": lambda d: [image(d / "mid.png")],
    "image-downsampled": lambda d: [image(d / "wide.png")],
    "image-tall": lambda d: [image(d / "tall.png")],
    "two-images": lambda d: [image(d / "mid.png"), image(d / "tall.png")],
    "video-8": lambda d: [video(d / "clip.mp4", 8)],
    "text-only": lambda d: [],
    "image+video": lambda d: [image(d / "tall.png"), video(d / "clip.mp4", 8)],
}
CASES = list(MEDIA)


def onevision_pair(folder: Path) -> Pair:
    """Anyres images padded to the batch's most views; Qwen2 prompts open with <|im_start|>, no BOS."""
    return Pair(folder, load_reference, padded_images=True, opening="<|im_start|>")


def check_case(pair: Pair, media_dir: Path, case: str, system: str | None = None) -> None:
    pair.check(MEDIA[case](media_dir), system)


def case_inputs(pair: Pair, media_dir: Path, case: str):
    return pair.prepare(MEDIA[case](media_dir))


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Pair:
    return onevision_pair(make_onevision(tmp_path_factory.mktemp("ckpt") / "tiny-ov", "trained", tied=True))


@pytest.fixture(scope="module")
def untied_pair(tmp_path_factory) -> Pair:
    return onevision_pair(make_onevision(tmp_path_factory.mktemp("ckpt") / "tiny-ov-untied", "trained", tied=False,
                                         seed=1))


@pytest.fixture(scope="module")
def qwen2_pair(tmp_path_factory) -> Pair:
    return onevision_pair(make_onevision(tmp_path_factory.mktemp("ckpt") / "tiny-ov-qwen2", "qwen2", tied=True,
                                         seed=2))


@pytest.mark.parametrize("case", CASES)
def test_parity_trained_tokenizer(trained_pair, media_dir, case):
    check_case(trained_pair, media_dir, case)


@pytest.mark.parametrize("case", CASES)
def test_parity_untied_head(untied_pair, media_dir, case):
    check_case(untied_pair, media_dir, case)


@pytest.mark.parametrize("case", CASES)
def test_parity_qwen2_tokenizer(qwen2_pair, media_dir, case):
    check_case(qwen2_pair, media_dir, case)


def test_parity_with_system_prompt(trained_pair, media_dir):
    check_case(trained_pair, media_dir, "image-small", system="You are a helpful assistant.")


# ---------------------------------------------------------------------------------------
# The checkpoints and cases really exercise what they claim to.

def _stored_keys(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as handle:
        return set(handle.keys())


def test_tied_checkpoint_shares_the_embedding(trained_pair):
    assert "language_model.lm_head.weight" not in _stored_keys(trained_pair.folder)
    text = trained_pair.engine.model.text
    assert trained_pair.engine.family.text_config.tie_word_embeddings
    assert text.lm_head.weight is text.embed.weight


def test_untied_checkpoint_has_its_own_head(untied_pair):
    assert "language_model.lm_head.weight" in _stored_keys(untied_pair.folder)
    text = untied_pair.engine.model.text
    assert not untied_pair.engine.family.text_config.tie_word_embeddings
    assert not torch.equal(text.lm_head.weight, text.embed.weight)


def test_config_is_what_we_think(trained_pair):
    family = trained_pair.engine.family
    assert isinstance(family, LlavaOnevision)
    assert family.vision_config.kind == "siglip_vision_model" and family.vision_config.grid == 27
    assert len(trained_pair.engine.model.vision.blocks) == family.vision_config.num_layers  # layer -1
    assert family.select_strategy == "full" and family.tokens_per_view == 729
    assert family.text_config.qkv_bias and family.text_config.num_kv_heads < family.text_config.num_heads
    assert trained_pair.engine.tokenizer.bos_token_id is None


def test_cases_hit_the_geometry_they_claim(trained_pair, media_dir):
    prepared, _ = case_inputs(trained_pair, media_dir, "image-downsampled")
    (item,) = prepared.items
    family = trained_pair.engine.family
    assert family.grid_after_unpad(1080, 1920) == (75, 135) and family.image_grid(1080, 1920) == (60, 108)
    assert item.num_tokens == onevision_image_tokens(1080, 1920) == 7269
    assert item.pixels.shape[0] == 16  # base + 3×5 tiles

    prepared, _ = case_inputs(trained_pair, media_dir, "two-images")
    assert [i.num_tokens for i in prepared.items] == [onevision_image_tokens(480, 640),
                                                      onevision_image_tokens(1000, 200)] == [2929, 2187]
    prepared, _ = case_inputs(trained_pair, media_dir, "image-small")
    assert prepared.items[0].pixels.shape[0] == 2 and prepared.items[0].num_tokens == 729 + 21 * 28
    prepared, _ = case_inputs(trained_pair, media_dir, "video-8")
    assert prepared.items[0].num_tokens == 1569


def test_reduce_feature_map_only_above_the_threshold(trained_pair):
    """anyres_max_9 shrinks 75×135 (r = 1.24) and leaves 40×54 (r = 0.57) as it is."""
    family = trained_pair.engine.family
    fmap = torch.randn(8, 75, 135)
    assert family.reduce_feature_map(fmap).shape == (8, 60, 108)
    small = torch.randn(8, 40, 54)
    assert family.reduce_feature_map(small) is small


def test_square_multi_image_path(trained_pair, media_dir, monkeypatch):
    """The newer-transformers multi-image path (off by default): one padded view, 730 tokens."""
    family = trained_pair.engine.family
    monkeypatch.setattr(type(family), "square_multi_image", True)
    prepared, _ = case_inputs(trained_pair, media_dir, "two-images")
    assert [i.num_tokens for i in prepared.items] == [730, 730]
    assert all(i.pixels.shape == (1, 3, 384, 384) for i in prepared.items)
    # the padding is the mean colour: 127 → (127/255 − 0.5)/0.5
    tall = prepared.items[1].pixels[0]
    assert torch.allclose(tall[:, :, 0], torch.full_like(tall[:, :, 0], (127 / 255 - 0.5) / 0.5), atol=1e-6)
    features = family.encode(trained_pair.engine.model, prepared.items[0])
    assert features.shape == (730, trained_pair.engine.family.text_config.hidden_size)
    assert torch.equal(features[-1], trained_pair.engine.model.image_newline)
    assert trained_pair.engine.logits(prepared).isfinite().all()


def test_llava_cli_onevision_does_not_import_transformers():
    code = ("import sys, llava_cli.families, llava_cli.families.llava_onevision, llava_cli.engine; "
            "sys.exit(1 if any(m == 'transformers' or m.startswith('transformers.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
