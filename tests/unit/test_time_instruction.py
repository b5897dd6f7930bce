"""LLaVA-Video's time instruction (--time-instruction): the authors' text exactly, built from
the timestamps of the frames our sampler took, on by default only for checkpoints whose
config declares add_time_instruction, and placed before the question of the message that
holds the video.

The authors' format, quoted from github.com/LLaVA-VL/LLaVA-NeXT at
df179663ae8b83207df100a1f7af24caec633ff9 (llava/train/train.py lines 1201-1203,
playground/demo/video_demo.py lines 209-211; frame_time from llava/utils.py line 41):

    time_instruciton = f"The video lasts for {video_time:.2f} seconds, and {num_frames_to_sample} frames are uniformly sampled from it. These frames are located at {frame_time}.Please answer the following questions related to this video."
    frame_time = ",".join([f"{i:.2f}s" for i in frame_time])
    sources[0]["conversations"][0]["value"] = f'{DEFAULT_IMAGE_TOKEN}\\n{time_instruciton}\\n{...question...}'

with video_time = len(vr) / vr.get_avg_fps() and frame times = index / vr.get_avg_fps().
"""

from __future__ import annotations

import copy
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from support.fullsize_configs import CONFIGS
from support.media import make_image, make_video

from llava_cli.errors import ModelError
from llava_cli.families import family_for
from llava_cli.loading import Checkpoint
from llava_cli.media import FrameSpec, load_media
from llava_cli.media.spec import Media
from llava_cli.prompt import build_messages, time_instruction, video_seconds, with_time_instructions

OV = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


def fake_video(timestamps, total_frames, fps) -> Media:
    return Media(source="clip.mp4", kind="video", frames=np.zeros((len(timestamps), 2, 2, 3), np.uint8),
                 frame_indices=list(range(len(timestamps))), timestamps=list(timestamps),
                 total_frames=total_frames, fps=fps)


def test_text_is_the_authors_format_character_for_character():
    media = fake_video([0.0, 1.5, 3.0, 4.5], total_frames=150, fps=30.0)
    assert time_instruction(media) == (
        "The video lasts for 5.00 seconds, and 4 frames are uniformly sampled from it. These frames are "
        "located at 0.00s,1.50s,3.00s,4.50s.Please answer the following questions related to this video.")


def test_two_decimals_round_as_python_formats_them():
    # Their f-string's :.2f, so 0.625 (exact in binary) rounds half to even and 1/3 s shows as 0.33s.
    media = fake_video([0.0, 1 / 3, 0.625, 12.345678], total_frames=371, fps=30.0)
    text = time_instruction(media)
    assert "The video lasts for 12.37 seconds, and 4 frames" in text
    assert "located at 0.00s,0.33s,0.62s,12.35s.Please" in text


def test_duration_without_a_rate_is_the_last_frame_plus_a_frame_step():
    assert video_seconds(fake_video([0.0, 0.5, 1.0, 1.5], total_frames=4, fps=None)) == pytest.approx(2.0)
    assert video_seconds(fake_video([0.0], total_frames=1, fps=None)) == 0.0


def test_timestamps_come_from_our_sampler(tmp_path):
    """A real encoded clip: 30 frames at 24 fps, 4 sampled (indices 0, 7, 15, 22). Constant
    rate, so our timestamps are the authors' index / average rate."""
    path = make_video(tmp_path / "clip.mp4", frames=30, size=(64, 48), fps=24)
    media = load_media(path, FrameSpec(frames=4))
    assert media.frame_indices == [0, 7, 15, 22]
    assert media.timestamps == pytest.approx([i / 24 for i in media.frame_indices])
    assert time_instruction(media) == (
        "The video lasts for 1.25 seconds, and 4 frames are uniformly sampled from it. These frames are "
        "located at 0.00s,0.29s,0.62s,0.92s.Please answer the following questions related to this video.")


def test_variable_rate_clip_gets_its_real_frame_times(tmp_path):
    """Where frames are not evenly spaced, the instruction says when the sampled frames
    really were (what our decoder read), not index / rate."""
    times = [0.0, 0.1, 0.2, 1.0, 2.0, 2.1, 3.0, 3.5]
    path = make_video(tmp_path / "vfr.mkv", size=(64, 48), fps=Fraction(10), times=times)
    media = load_media(path, FrameSpec(frames=4))
    assert media.timestamps == pytest.approx([times[i] for i in media.frame_indices], abs=1e-3)
    shown = ",".join(f"{times[i]:.2f}s" for i in media.frame_indices)
    assert f"These frames are located at {shown}.Please answer" in time_instruction(media)


def test_the_instruction_goes_before_the_question_of_the_message_with_the_video():
    video = fake_video([0.0, 1.0], total_frames=60, fps=30.0)
    image = fake_video([0.0], total_frames=1, fps=None)
    image.kind = "image"
    messages = build_messages("What happens?", ["image", "video"], system="Be brief.")
    out = with_time_instructions(messages, [image, video])
    assert out[0] == messages[0]  # the system turn is untouched
    assert out[1]["content"][:2] == [{"type": "image"}, {"type": "video"}]
    assert out[1]["content"][2]["text"] == time_instruction(video) + "\nWhat happens?"
    assert messages[1]["content"][2]["text"] == "What happens?"  # the input is not changed
    # An image alone gets nothing.
    alone = build_messages("What is it?", ["image"])
    assert with_time_instructions(alone, [image]) == alone


def test_each_turn_gets_the_instruction_of_its_own_video():
    first, second = fake_video([0.0], 30, 30.0), fake_video([0.0, 2.0], 120, 30.0)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "One?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Two?"}]}]
    out = with_time_instructions(messages, [first, second])
    assert out[0]["content"][1]["text"] == time_instruction(first) + "\nOne?"
    assert out[1] == messages[1]
    assert out[2]["content"][1]["text"] == time_instruction(second) + "\nTwo?"


# -- auto: what config.json declares --------------------------------------------------------

def family(config: dict, folder: Path = Path("ckpt")):
    return family_for(Checkpoint(folder=folder, config=config))


@pytest.mark.parametrize("declared, expected", [(None, False), (False, False), (True, True)])
def test_auto_follows_add_time_instruction(declared, expected):
    config = copy.deepcopy(CONFIGS[OV])
    if declared is not None:
        config["add_time_instruction"] = declared
    ov = family(config)
    assert ov.declares_time_instruction is expected
    assert ov.wants_time_instruction(None) is expected  # unset: auto
    assert ov.wants_time_instruction(True) is True and ov.wants_time_instruction(False) is False


def test_families_without_it_never_get_it():
    config = {**copy.deepcopy(CONFIGS["llava-hf/llava-interleave-qwen-0.5b-hf"]), "add_time_instruction": True}
    interleave = family(config)
    assert not interleave.takes_time_instruction
    assert interleave.wants_time_instruction(None) is False and interleave.wants_time_instruction(True) is False


def test_a_malformed_flag_is_one_error_naming_it():
    with pytest.raises(ModelError, match="add_time_instruction"):
        family({**copy.deepcopy(CONFIGS[OV]), "add_time_instruction": "yes"})


def test_engine_applies_it_only_with_media_and_only_to_videos(engine, tmp_path):
    """The engine's prompt path: with time_instruction on, a video question's rendered text
    holds the instruction before the question; an image question's does not."""
    clip = load_media(make_video(tmp_path / "c.mp4", frames=12, size=(64, 48), fps=24), FrameSpec(frames=4))
    photo = load_media(make_image(tmp_path / "p.png", size=(64, 48)))
    saved = engine.time_instruction
    try:
        engine.time_instruction = False
        plain = engine.prepare([clip], "Why?")
        engine.time_instruction = True
        timed = engine.prepare([clip], "Why?")
        image_only = engine.prepare([photo], "Why?")
    finally:
        engine.time_instruction = saved
    assert time_instruction(clip) not in plain.text
    assert time_instruction(clip) + "\nWhy?" in timed.text
    assert len(timed.input_ids) > len(plain.input_ids)
    assert "The video lasts" not in image_only.text
