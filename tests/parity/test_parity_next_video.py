"""Parity of our LLaVA-NeXT-Video pipeline with transformers 4.48.3 on tiny random checkpoints.

For each case the reference gets exactly what a transformers user would give it: the
chat template rendered by the processor, frames from a full sequential PyAV decode at
the reference indices, a PIL image. Ours goes through our own media, prompt, tokenizer,
preprocessing and networks. The checks are parity.check_parity's: prompt ids, pixel values,
last-token logits and a 20-token greedy continuation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from support.checkpoints.next_video import TinySpec, load_reference, make_next_video
from support.media import image_file, video_file
from support.parity import LOGITS_TOL, QUESTION, Pair, image, video

from llava_cli.engine import Engine
from llava_cli.generate import Sampling


# conftest's media_dir fixture writes these into one folder for this module.
MEDIA_FILES = {
    "clip.mp4": video_file(frames=30, size=(96, 64), fps=24),
    "long.mp4": video_file(frames=75, size=(80, 112), fps=25),
    "wide.png": image_file(size=(640, 480)),  # (width, height): anyres 2x2 grid, unpadded rows
}


MEDIA = {
    "video-8": lambda d: [video(d / "clip.mp4", 8)],
    "video-12": lambda d: [video(d / "long.mp4", 12)],
    "image-anyres": lambda d: [image(d / "wide.png")],
    "text-only": lambda d: [],
    "image+video": lambda d: [image(d / "wide.png"), video(d / "clip.mp4", 8)],
}
CASES = list(MEDIA)


def next_video_pair(folder: Path) -> Pair:
    return Pair(folder, load_reference, padded_images=True)


def check_case(pair: Pair, media_dir: Path, case: str, system: str | None = None) -> None:
    pair.check(MEDIA[case](media_dir), system)


def case_inputs(pair: Pair, media_dir: Path, case: str):
    return pair.prepare(MEDIA[case](media_dir))


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Pair:
    return next_video_pair(make_next_video(tmp_path_factory.mktemp("ckpt") / "tiny-next-video"))


@pytest.fixture(scope="module")
def llama2_pair(tmp_path_factory) -> Pair:
    return next_video_pair(make_next_video(tmp_path_factory.mktemp("ckpt") / "tiny-next-video-llama2",
                                           TinySpec(tokenizer="llama2")))


@pytest.mark.parametrize("case", CASES)
def test_parity_trained_tokenizer(trained_pair, media_dir, case):
    check_case(trained_pair, media_dir, case)


@pytest.mark.parametrize("case", CASES)
def test_parity_llama2_tokenizer(llama2_pair, media_dir, case):
    check_case(llama2_pair, media_dir, case)


def test_parity_with_system_prompt(trained_pair, media_dir):
    check_case(trained_pair, media_dir, "video-8", system="You are a helpful assistant.")


def test_config_is_what_we_think(trained_pair):
    """The checkpoint really exercises GQA and linear RoPE 2.5 (else the parity is weaker)."""
    cfg = trained_pair.engine.family.text_config
    assert cfg.num_kv_heads < cfg.num_heads
    assert cfg.rope_linear_factor == 2.5
    raw = json.loads((trained_pair.folder / "config.json").read_text())
    assert raw["text_config"]["rope_scaling"]["factor"] == 2.5


def test_rope_factor_matters(trained_pair, media_dir):
    """Dropping the RoPE factor must change the logits, so the parity test can see it."""
    import dataclasses

    prepared, _ = case_inputs(trained_pair, media_dir, "video-8")
    assert prepared.rope_factor == 2.5
    with_factor = trained_pair.engine.logits(prepared)
    without = trained_pair.engine.logits(dataclasses.replace(prepared, rope_factor=1.0))
    assert (with_factor - without).abs().max().item() > 1e-3
    assert torch.equal(trained_pair.engine.logits(prepared), with_factor)


# ---------------------------------------------------------------------------------------
# Other layouts of the same weights must give the same logits.

def _rename_newer_layout(key: str) -> str:
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.vision_model.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector."),
                     ("vision_resampler.", "model.vision_resampler.")):
        if key.startswith(old):
            return new + key[len(old):]
    return "model.image_newline" if key == "image_newline" else key


def test_newer_layout_and_rope_parameters(trained_pair, media_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "newer"
    shutil.copytree(trained_pair.folder, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    save_file({_rename_newer_layout(k): v for k, v in weights.items()}, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    text = config["text_config"]
    scaling = text.pop("rope_scaling")
    text["rope_parameters"] = {"rope_type": scaling["type"], "factor": scaling["factor"], "rope_theta": 10000.0}
    (folder / "config.json").write_text(json.dumps(config))

    engine = Engine.load(folder, device="cpu", dtype="float32")
    prepared, _ = case_inputs(trained_pair, media_dir, "image+video")
    again = engine.prepare(prepared.media, QUESTION)
    assert torch.equal(engine.logits(again), trained_pair.engine.logits(prepared))


def test_sharded_checkpoint(trained_pair, media_dir, tmp_path):
    from transformers import LlavaNextVideoForConditionalGeneration

    folder = tmp_path / "sharded"
    shutil.copytree(trained_pair.folder, folder)
    (folder / "model.safetensors").unlink()
    model = LlavaNextVideoForConditionalGeneration.from_pretrained(trained_pair.folder)
    model.save_pretrained(folder, max_shard_size="300KB", safe_serialization=True)
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*.safetensors"))) > 2

    engine = Engine.load(folder, device="cpu", dtype="float32")
    prepared, _ = case_inputs(trained_pair, media_dir, "video-8")
    again = engine.prepare(prepared.media, QUESTION)
    assert torch.equal(engine.logits(again), trained_pair.engine.logits(prepared))


def test_first_upload_config_with_stray_rope_keys(trained_pair, media_dir, tmp_path):
    """The first NeXT-Video upload: model_type llava_next, factor/type as stray text keys.

    The reference ignores the stray keys (no scaling); so must we.
    """
    from transformers import LlavaNextVideoForConditionalGeneration

    folder = tmp_path / "first-upload"
    shutil.copytree(trained_pair.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llava_next"
    text = config["text_config"]
    text.pop("rope_scaling")
    text["factor"], text["type"] = 2.0, "linear"
    (folder / "config.json").write_text(json.dumps(config))

    engine = Engine.load(folder, device="cpu", dtype="float32")
    assert engine.family.name == "llava_next_video"
    assert engine.family.text_config.rope_linear_factor == 1.0
    ref_model = LlavaNextVideoForConditionalGeneration.from_pretrained(folder).eval()
    prepared, ref = case_inputs(trained_pair, media_dir, "video-8")
    with torch.no_grad():
        ref_logits = ref_model(**ref).logits[0, -1]
    again = engine.prepare(prepared.media, QUESTION)
    assert (engine.logits(again) - ref_logits).abs().max().item() <= LOGITS_TOL


def test_stream_pieces_join_to_the_decode(trained_pair, media_dir):
    prepared, _ = case_inputs(trained_pair, media_dir, "image+video")
    sampling = Sampling(max_new_tokens=40, temperature=1.5, seed=3)
    tokens = list(trained_pair.engine.answer(prepared, sampling).tokens())
    pieces = list(trained_pair.engine.answer(prepared, sampling))
    assert "".join(pieces) == trained_pair.engine.tokenizer.decode(tokens)
    assert len(pieces) > 1


def test_sampling_is_seeded(trained_pair, media_dir):
    prepared, _ = case_inputs(trained_pair, media_dir, "text-only")
    run = lambda seed: list(trained_pair.engine.answer(prepared, Sampling(max_new_tokens=15, temperature=1.0,
                                                                          top_p=0.9, top_k=50, seed=seed)).tokens())
    assert run(1) == run(1)
    assert run(1) != run(2)
