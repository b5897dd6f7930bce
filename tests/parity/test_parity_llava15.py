"""Parity of our LLaVA-1.5 pipeline with transformers 4.48.3 on tiny random checkpoints.

The reference gets what a transformers user gives it (the processor's chat template, a
PIL image); ours goes through our own media, prompt, tokenizer, preprocessing and
networks. Compared: prompt ids, pixel values, last-token logits, 20-token greedy output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.checkpoints.llava import load_llava15_reference, make_llava15
from support.media import image_file, video_file
from support.parity import Pair, image

from llava_cli.errors import ModelError
from llava_cli.media import load_media

QUESTION = "What is shown in this image?"


# conftest's media_dir fixture writes these into one folder for this module.
MEDIA_FILES = {
    "wide.png": image_file(size=(640, 480)),  # (width, height): downscale, crop the sides
    "tall.png": image_file(size=(240, 400)),  # upscale to 336x560, crop top and bottom
    "clip.mp4": video_file(frames=12, size=(64, 48)),
}


def llava15_pair(folder: Path) -> Pair:
    """One 336-px view per image, no batch padding."""
    return Pair(folder, load_llava15_reference, question=QUESTION)


def check(pair: Pair, media_dir: Path, images: list[str]) -> None:
    pair.check([image(media_dir / name) for name in images])


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Pair:
    return llava15_pair(make_llava15(tmp_path_factory.mktemp("ckpt") / "tiny-llava15"))


@pytest.fixture(scope="module")
def llama2_pair(tmp_path_factory) -> Pair:
    return llava15_pair(make_llava15(tmp_path_factory.mktemp("ckpt") / "tiny-llava15-llama2", tokenizer="llama2"))


CASES = {"image-wide": ["wide.png"], "image-tall": ["tall.png"], "text-only": []}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_trained_tokenizer(trained_pair, media_dir, case):
    check(trained_pair, media_dir, CASES[case])


@pytest.mark.parametrize("case", list(CASES))
def test_parity_llama2_tokenizer(llama2_pair, media_dir, case):
    assert llama2_pair.engine.family.token_ids() == {"image": 32000}  # the hub id: <image> right after the Llama-2 pieces
    check(llama2_pair, media_dir, CASES[case])


def test_family_and_geometry(trained_pair, media_dir):
    family = trained_pair.engine.family
    assert family.name == "llava"
    assert family.vision_config.image_size == 336
    assert family.text_config.num_kv_heads < family.text_config.num_heads  # GQA is exercised
    prepared = trained_pair.engine.prepare([load_media(media_dir / "wide.png")], QUESTION)
    assert [item.num_tokens for item in prepared.items] == [576]
    assert prepared.input_ids.count(family.token_ids()["image"]) == 576


def test_videos_are_refused(trained_pair, media_dir):
    with pytest.raises(ModelError, match="does not take videos"):
        trained_pair.engine.prepare([load_media(media_dir / "clip.mp4")], QUESTION)
