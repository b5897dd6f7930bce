"""LLaVA-Video's time instruction, end to end against transformers 4.48.3: a tiny OneVision
checkpoint whose config.json declares "add_time_instruction": true (as
lmms-lab/LLaVA-Video-7B-Qwen2's does) gets the instruction before a video question by
default, and the prompt is exactly what a transformers user gets by writing the authors'
instruction before the question themselves.

The reference's instruction is computed here the authors' way, independently of ours:
video_time = frames / average rate, frame times = index / average rate, indices from the
model cards' uniform recipe (github.com/LLaVA-VL/LLaVA-NeXT at
df179663ae8b83207df100a1f7af24caec633ff9, llava/utils.py process_video_with_decord and
llava/train/train.py lines 1201-1203). Checked with the harness: prompt ids, pixel values,
last-token logits and a greedy continuation.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from support.checkpoints.onevision import load_reference, make_onevision
from support.media import video_file
from support.parity import Pair, check_parity, reference_inputs, video

from llava_cli.media import load_media
from llava_cli.prompt import time_instruction

QUESTION = "Why is this funny?"
FRAMES = 8

# conftest's media_dir fixture writes these into one folder for this module.
MEDIA_FILES = {"clip.mp4": video_file(frames=30, size=(96, 64), fps=24)}


def authors_instruction(path: Path, num_frames: int) -> str:
    """The LLaVA-Video authors' f-string, fed the numbers their decord loader would give."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        avg_fps = float(stream.average_rate)
        total = sum(1 for _ in container.decode(video=0))
    indices = np.arange(0, total, total / num_frames).astype(int)  # the model cards' recipe
    video_time = total / avg_fps
    frame_time = ",".join([f"{i:.2f}s" for i in [i / avg_fps for i in indices]])
    return (f"The video lasts for {video_time:.2f} seconds, and {len(indices)} frames are uniformly sampled from "
            f"it. These frames are located at {frame_time}.Please answer the following questions related to this "
            f"video.")


def declare_time_instruction(folder: Path) -> Path:
    """Write "add_time_instruction": true into config.json, as LLaVA-Video's config has it
    (transformers keeps unknown keys as config attributes and ignores them)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["add_time_instruction"] = True
    path.write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module", params=["trained", "qwen2"])
def video_pair(request, tmp_path_factory) -> Pair:
    folder = make_onevision(tmp_path_factory.mktemp("ckpt") / f"tiny-llava-video-{request.param}", request.param,
                            tied=True, seed=3)
    return Pair(declare_time_instruction(folder), load_reference, question=QUESTION)


def test_declared_checkpoint_turns_it_on(video_pair):
    assert video_pair.engine.family.declares_time_instruction
    assert video_pair.engine.time_instruction  # auto, from config.json


def test_prompt_ids_match_the_reference_given_the_authors_text(video_pair, media_dir):
    clip = media_dir / "clip.mp4"
    ours = load_media(clip, num_frames=FRAMES)
    expected = authors_instruction(clip, FRAMES)
    assert time_instruction(ours) == expected  # our sampler's times, the authors' numbers

    prepared = video_pair.engine.prepare([ours], QUESTION)
    assert f"{expected}\n{QUESTION}" in prepared.text
    medium = video(clip, FRAMES)
    ref = reference_inputs(video_pair.processor, [("video", medium.reference)], f"{expected}\n{QUESTION}")
    check_parity(video_pair.engine, video_pair.ref_model, prepared, ref, padded_images=True, opening="<|im_start|>")


def test_off_leaves_the_question_alone(video_pair, media_dir):
    """--no-time-instruction: the plain question, as the reference renders it."""
    clip = media_dir / "clip.mp4"
    engine = video_pair.engine
    engine.time_instruction = False
    try:
        prepared = engine.prepare([load_media(clip, num_frames=FRAMES)], QUESTION)
    finally:
        engine.time_instruction = True
    assert "The video lasts" not in prepared.text
    ref = reference_inputs(video_pair.processor, [("video", video(clip, FRAMES).reference)], QUESTION)
    assert prepared.input_ids == ref["input_ids"][0].tolist()
