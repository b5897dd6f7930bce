"""Parity of our LLaVA-NeXT-Video pipeline with transformers 4.48.3 on tiny random checkpoints.

For each case the reference gets exactly what a transformers user would give it: the
chat template rendered by the processor, frames from a full sequential PyAV decode at
the reference indices, a PIL image. Ours goes through our own media, prompt, tokenizer,
preprocessing and networks. We compare prompt ids, pixel values, last-token logits and a
20-token greedy continuation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints import TinySpec, load_reference, make_next_video
from media_factory import make_image, make_video

from llava_cli.engine import Engine
from llava_cli.generate import Sampling
from llava_cli.media import load_media

LOGITS_TOL = 1e-4
PIXEL_TOL = 1e-5
QUESTION = "Why is this funny?"


def reference_frames(path: Path, num_frames: int) -> np.ndarray:
    """The model cards' recipe: decode everything, keep np.arange(0, total, total/N)."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    indices = np.arange(0, len(frames), len(frames) / num_frames).astype(int)
    return np.stack([frames[i] for i in indices])


def reference_inputs(processor, media: list[tuple[str, object]], question: str, system: str | None = None):
    content = [{"type": kind} for kind, _ in media] + [{"type": "text", "text": question}]
    conversation = [{"role": "user", "content": content}]
    if system:
        conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    images = [obj for kind, obj in media if kind == "image"] or None
    videos = [obj for kind, obj in media if kind == "video"] or None
    return processor(text=prompt, images=images, videos=videos, return_tensors="pt")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    make_video(folder / "clip.mp4", frames=30, size=(96, 64), fps=24)
    make_video(folder / "long.mp4", frames=75, size=(80, 112), fps=25)
    make_image(folder / "wide.png", size=(640, 480))  # (width, height): anyres 2x2 grid, unpadded rows
    return folder


def _cases(media_dir: Path):
    from PIL import Image

    def video(name, n):
        return ("video", media_dir / name, n, reference_frames(media_dir / name, n))

    def image(name):
        return ("image", media_dir / name, 1, Image.open(media_dir / name).convert("RGB"))

    return {
        "video-8": [video("clip.mp4", 8)],
        "video-12": [video("long.mp4", 12)],
        "image-anyres": [image("wide.png")],
        "text-only": [],
        "image+video": [image("wide.png"), video("clip.mp4", 8)],
    }


CASES = ["video-8", "video-12", "image-anyres", "text-only", "image+video"]


class Pair:
    """Our engine and the reference, loaded from the same folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.engine = Engine.load(folder, device="cpu", dtype="float32")
        self.ref_model, self.processor = load_reference(folder)

    def run(self, media_dir: Path, case: str, system: str | None = None):
        spec = _cases(media_dir)[case]
        ours_media = [load_media(path, num_frames=n) for _, path, n, _ in spec]
        prepared = self.engine.prepare(ours_media, QUESTION, system=system)
        ref = reference_inputs(self.processor, [(kind, obj) for kind, _, _, obj in spec], QUESTION, system)
        return prepared, ref


def check_case(pair: Pair, media_dir: Path, case: str, system: str | None = None) -> None:
    prepared, ref = pair.run(media_dir, case, system)

    assert prepared.input_ids == ref["input_ids"][0].tolist()

    images = [i for i in prepared.items if i.kind == "image"]
    videos = [i for i in prepared.items if i.kind == "video"]
    if images:
        for ours, theirs in zip(images, ref["pixel_values"]):
            assert ours.pixels.shape == theirs[: ours.pixels.shape[0]].shape
            assert (ours.pixels - theirs[: ours.pixels.shape[0]]).abs().max().item() <= PIXEL_TOL
    if videos:
        for ours, theirs in zip(videos, ref["pixel_values_videos"]):
            assert ours.pixels.shape == theirs.shape
            assert (ours.pixels - theirs).abs().max().item() <= PIXEL_TOL

    with torch.no_grad():
        ref_logits = pair.ref_model(**ref).logits[0, -1]
    ours_logits = pair.engine.logits(prepared)
    assert (ours_logits - ref_logits).abs().max().item() <= LOGITS_TOL

    with torch.no_grad():
        ref_out = pair.ref_model.generate(**ref, max_new_tokens=20, do_sample=False)
    ref_tokens = ref_out[0, ref["input_ids"].shape[1]:].tolist()
    eos = pair.engine.stop_ids
    ref_tokens = [t for t in ref_tokens if t not in eos]
    ours_tokens = list(pair.engine.generate(prepared, Sampling(max_new_tokens=20)))
    assert len(ref_tokens) >= 5, "the reference stopped at once: the check would be vacuous"
    assert ours_tokens == ref_tokens


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Pair:
    return Pair(make_next_video(tmp_path_factory.mktemp("ckpt") / "tiny-next-video"))


@pytest.fixture(scope="module")
def llama2_pair(tmp_path_factory) -> Pair:
    return Pair(make_next_video(tmp_path_factory.mktemp("ckpt") / "tiny-next-video-llama2",
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

    prepared, _ = trained_pair.run(media_dir, "video-8")
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
    prepared, _ = trained_pair.run(media_dir, "image+video")
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
    prepared, _ = trained_pair.run(media_dir, "video-8")
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
    prepared, ref = trained_pair.run(media_dir, "video-8")
    with torch.no_grad():
        ref_logits = ref_model(**ref).logits[0, -1]
    again = engine.prepare(prepared.media, QUESTION)
    assert (engine.logits(again) - ref_logits).abs().max().item() <= LOGITS_TOL


def test_stream_pieces_join_to_the_decode(trained_pair, media_dir):
    prepared, _ = trained_pair.run(media_dir, "image+video")
    sampling = Sampling(max_new_tokens=40, temperature=1.5, seed=3)
    tokens = list(trained_pair.engine.generate(prepared, sampling))
    pieces = list(trained_pair.engine.stream(prepared, sampling))
    assert "".join(pieces) == trained_pair.engine.tokenizer.decode(tokens)
    assert len(pieces) > 1


def test_sampling_is_seeded(trained_pair, media_dir):
    prepared, _ = trained_pair.run(media_dir, "text-only")
    run = lambda seed: list(trained_pair.engine.generate(prepared, Sampling(max_new_tokens=15, temperature=1.0,
                                                                          top_p=0.9, top_k=50, seed=seed)))
    assert run(1) == run(1)
    assert run(1) != run(2)
