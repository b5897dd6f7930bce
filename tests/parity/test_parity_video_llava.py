"""Parity of our Video-LLaVA pipeline with transformers 4.48.3 on tiny random checkpoints.

Images: image_tower, class token dropped (256 tokens at 224 px). Videos: 8 frames, each
through video_tower, class token kept (257 per frame → 2056). The reference frames come
from a full PyAV decode at np.arange(0, total, total/8) (the model card recipe).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.checkpoints.llava import load_video_llava_reference, make_video_llava
from support.media import image_file, video_file
from support.parity import Pair, image, video

FRAMES = 8


# conftest's media_dir fixture writes these into one folder for this module.
MEDIA_FILES = {
    "clip.mp4": video_file(frames=30, size=(96, 64), fps=24),
    "wide.png": image_file(size=(640, 480)),
}


def video_llava_pair(folder: Path) -> Pair:
    """Image pixels under pixel_values_images; one 224-px view per image, no batch padding."""
    return Pair(folder, load_video_llava_reference, image_key="pixel_values_images")


def media(media_dir: Path, kinds: list[str]):
    return [image(media_dir / "wide.png") if kind == "image" else video(media_dir / "clip.mp4", FRAMES)
            for kind in kinds]


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Pair:
    return video_llava_pair(make_video_llava(tmp_path_factory.mktemp("ckpt") / "tiny-video-llava"))


@pytest.fixture(scope="module")
def llama2_pair(tmp_path_factory) -> Pair:
    return video_llava_pair(make_video_llava(tmp_path_factory.mktemp("ckpt") / "tiny-video-llava-llama2",
                                             tokenizer="llama2"))


CASES = {"image": ["image"], "video-8": ["video"], "image+video": ["image", "video"], "text-only": []}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_trained_tokenizer(trained_pair, media_dir, case):
    trained_pair.check(media(media_dir, CASES[case]))


@pytest.mark.parametrize("case", list(CASES))
def test_parity_llama2_tokenizer(llama2_pair, media_dir, case):
    assert llama2_pair.engine.family.token_ids() == {"image": 32000, "video": 32001}
    llama2_pair.check(media(media_dir, CASES[case]))


def test_parity_with_system_prompt(trained_pair, media_dir):
    """The Video-LLaVA template writes the system text bare, with no role prefix."""
    trained_pair.check(media(media_dir, ["video"]), system="You are a helpful assistant.")


def test_trained_frames(trained_pair):
    family = trained_pair.engine.family
    assert family.name == "video_llava"
    assert family.trained_frames == 8


def test_token_counts_and_towers(trained_pair, media_dir):
    """224 px from CLIP's default (the config names no image_size); CLS kept for frames only."""
    family = trained_pair.engine.family
    assert family.vision_config.image_size == 224
    prepared, ref = trained_pair.prepare(media(media_dir, ["image", "video"]))
    assert [item.num_tokens for item in prepared.items] == [256, 257 * FRAMES]
    assert family.video_tokens(FRAMES) == 2056
    ids = family.token_ids()
    assert prepared.input_ids.count(ids["image"]) == 256
    assert prepared.input_ids.count(ids["video"]) == 2056
    # Two towers with different weights: swapping them must change the logits.
    model = trained_pair.engine.model
    before = trained_pair.engine.logits(prepared)
    model.image_tower, model.video_tower = model.video_tower, model.image_tower
    try:
        swapped = trained_pair.engine.logits(prepared)
    finally:
        model.image_tower, model.video_tower = model.video_tower, model.image_tower
    assert (before - swapped).abs().max().item() > 1e-3
