"""Parity of our LLaVA-Interleave pipeline (the LLaVA-1.5 family with a SigLIP tower and a
Qwen2 backbone) with transformers 4.48.3 on tiny random checkpoints.

Real geometry (384-px SigLIP squash, 729 tokens per image, layer -1, strategy "full"), tiny
widths. The reference gets what a transformers user gives it (the processor's chat template,
PIL images); ours goes through our media, prompt, tokenizer, preprocessing and networks.
Checked per case with the harness: prompt ids, pixel values (≤ 1e-5), last-token logits
(≤ 1e-4) and a 20-token greedy continuation, alone and batched; with a small trained
Qwen2-shaped tokenizer and, when ../shared holds it, the real Qwen2 BPE (the prompt ids are then
exactly what the hub checkpoints' processor gives). Both render the hub's chat template.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.checkpoints.interleave import load_reference, make_llava_siglip
from support.media import image_file
from support.parity import Pair, check_outputs, check_pixels, check_prompt, image

from llava_cli.families.llava import Llava
from llava_cli.media import load_media

QUESTION = "What differs between these pictures?"

# conftest's media_dir fixture writes these into one folder for this module.
MEDIA_FILES = {
    "wide.png": image_file(size=(640, 480)),  # (width, height): squashed to 384×384
    "tall.png": image_file(size=(200, 500)),
}

CASES = {"image": ["wide.png"], "two-images": ["wide.png", "tall.png"], "text-only": []}


def interleave_pair(folder: Path) -> Pair:
    """One squashed 384-px view per image; Qwen2 prompts open with <|im_start|>, no BOS."""
    return Pair(folder, load_reference, question=QUESTION)


def check(pair: Pair, media_dir: Path, names: list[str]) -> None:
    prepared, ref = pair.prepare([image(media_dir / name) for name in names])
    check_prompt(pair.engine, prepared, ref, opening="<|im_start|>")
    check_pixels(prepared, ref)
    check_outputs(pair.engine, pair.ref_model, prepared, ref)


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Pair:
    return interleave_pair(make_llava_siglip(tmp_path_factory.mktemp("ckpt") / "tiny-interleave", "trained",
                                             tied=True))


@pytest.fixture(scope="module")
def qwen2_pair(tmp_path_factory) -> Pair:
    """The real Qwen2 BPE from ../shared (skips when it is absent), <image> = 151646 as on the hub."""
    return interleave_pair(make_llava_siglip(tmp_path_factory.mktemp("ckpt") / "tiny-interleave-qwen2", "qwen2",
                                             tied=True, seed=2))


@pytest.mark.parametrize("case", list(CASES))
def test_parity(trained_pair, media_dir, case):
    check(trained_pair, media_dir, CASES[case])


@pytest.mark.parametrize("case", list(CASES))
def test_parity_qwen2_tokenizer(qwen2_pair, media_dir, case):
    check(qwen2_pair, media_dir, CASES[case])


def test_qwen2_prompt_is_the_hub_template(qwen2_pair, media_dir):
    """With the real tokenizer the prompt is the hub template's ChatML, ids as on the hub:
    <|im_start|> 151644, "user", "\n", the images' 151646 runs back to back, "\n" + question."""
    prepared, _ = qwen2_pair.prepare([image(media_dir / "wide.png"), image(media_dir / "tall.png")])
    ids = prepared.input_ids
    tok = qwen2_pair.engine.tokenizer
    assert ids[:3] == [151644, tok.token_to_id("user"), tok.token_to_id("Ċ")]
    assert ids[3:3 + 2 * 729] == [151646] * (2 * 729)
    assert ids[3 + 2 * 729] == tok.token_to_id("Ċ") and ids.count(151645) == 1


def test_family_and_geometry(trained_pair, media_dir):
    family = trained_pair.engine.family
    assert isinstance(family, Llava)
    assert family.vision_config.kind == "siglip_vision_model" and family.vision_config.image_size == 384
    assert (family.feature_layer, family.select_strategy) == (-1, "full")
    assert family.text_config.num_kv_heads < family.text_config.num_heads  # GQA is exercised
    assert family.text_config.qkv_bias and family.text_config.tie_word_embeddings  # Qwen2, tied head
    pixels = family.image_pixels
    assert (pixels.shortest_edge, pixels.height, pixels.width, pixels.crop) == (None, 384, 384, None)
    assert pixels.mean == pixels.std == (0.5, 0.5, 0.5)
    text = trained_pair.engine.model.text
    assert text.lm_head.weight is text.embed.weight
    prepared = trained_pair.engine.prepare([load_media(media_dir / n) for n in ("wide.png", "tall.png")], QUESTION)
    assert [item.num_tokens for item in prepared.items] == [729, 729]
    assert prepared.input_ids.count(family.token_ids()["image"]) == 2 * 729
