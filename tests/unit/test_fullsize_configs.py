"""Every published checkpoint's real config builds on the meta device, has the published
parameter count, and expects exactly the weight names the reference would save."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support.fullsize_configs import CONFIGS, PUBLISHED_PARAMS

from llava_cli.families import family_for
from llava_cli.loading import Checkpoint, our_name, skippable

REFERENCE_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "video_llava": "VideoLlavaForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
}


def build_ours(name: str):
    family = family_for(Checkpoint(folder=Path(name), config=CONFIGS[name]))
    with torch.device("meta"):
        return family, family.build()


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_matches_the_published_size(name):
    _, model = build_ours(name)
    ours = count(model)
    published = PUBLISHED_PARAMS[name]
    # Ours leaves out the vision layers past the feature layer (never run), which is
    # well inside the tolerance.
    assert abs(ours - published) / published <= 0.005, f"{name}: {ours / 1e9:.3f}B vs {published / 1e9:.3f}B"


def test_alias_sizes_are_the_published_counts():
    """The alias table's parameter counts (the `--aliases` size column) agree with the
    published counts of the checkpoints reconstructed here."""
    from llava_cli import hub

    checked = 0
    for alias, (repo, billions) in hub.ALIAS_TABLE.items():
        if repo in PUBLISHED_PARAMS:
            assert abs(billions * 1e9 - PUBLISHED_PARAMS[repo]) / PUBLISHED_PARAMS[repo] <= 0.005, alias
            checked += 1
    assert checked >= 10


def test_onevision_05b_is_tied_and_893m():
    _, model = build_ours("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
    assert model.text.lm_head.weight is model.text.embed.weight
    assert abs(count(model) - 893.7e6) / 893.7e6 <= 0.005


@pytest.mark.parametrize("name, tied", [("llava-hf/llava-interleave-qwen-0.5b-hf", True),
                                        ("llava-hf/llava-interleave-qwen-7b-hf", False)])
def test_interleave_is_llava_with_siglip_and_qwen2(name, tied):
    """LLaVA-Interleave runs as the LLaVA-1.5 family: SigLIP-384 at layer -1, all 729
    patch tokens, squashed 384-px views with mean/std 0.5, a Qwen2 decoder (q/k/v bias).
    The 0.5b ties its head to the embedding (text_config says so, as Qwen1.5-0.5B-Chat
    does); the 7b stores none and gets Qwen2's default, untied."""
    family, model = build_ours(name)
    assert family.name == "llava" and family.token_ids() == {"image": 151646}
    assert family.vision_config.kind == "siglip_vision_model" and family.tokens_per_view == 729
    assert family.text_config.qkv_bias and family.text_config.tie_word_embeddings == tied
    pixels = family.image_pixels
    assert (pixels.shortest_edge, pixels.height, pixels.width, pixels.crop) == (None, 384, 384, None)
    assert pixels.mean == pixels.std == (0.5, 0.5, 0.5)
    assert (model.text.lm_head.weight is model.text.embed.weight) == tied


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_expected_weight_names_equal_what_the_reference_saves(name):
    import transformers

    config = CONFIGS[name]
    ref_config = transformers.AutoConfig.for_model(**config)
    cls = getattr(transformers, REFERENCE_CLASSES[config["model_type"]])
    with torch.device("meta"):
        reference = cls(ref_config)
    saved = set(reference.state_dict())
    lm = reference.language_model
    if lm.lm_head.weight is lm.get_input_embeddings().weight:
        saved.discard("language_model.lm_head.weight")  # save_pretrained drops tied copies

    _, model = build_ours(name)
    ours = {n for n, _ in model.named_parameters()}
    mapped: set[str] = set()
    for key in saved:
        target = our_name(key)
        assert target is not None, f"{name}: no rule for {key}"
        if target in ours:
            mapped.add(target)
        else:
            assert skippable(target), f"{name}: {key} → {target} is neither ours nor a known unused weight"
    unfed = ours - mapped
    if model.text.cfg.tie_word_embeddings:
        unfed.discard("text.lm_head.weight")
    assert not unfed, f"{name}: no checkpoint key feeds {sorted(unfed)[:5]}"
