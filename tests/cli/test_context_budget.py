"""Prompts longer than the model's context: a clear error that says how many frames fit,
or, with --long-video, linear RoPE stretched by ceil(tokens / context)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from support.checkpoints.next_video import TinySpec, make_next_video
from support.cli import assert_one_line_error, run_llava
from support.parity import reference_frames, reference_inputs

from llava_cli.engine import Engine
from llava_cli.errors import PromptError
from llava_cli.media import load_media

CONTEXT = 512  # 144 tokens per frame: 8 frames cannot fit, 3 can


@pytest.fixture(scope="module")
def short_context(tmp_path_factory) -> Path:
    spec = TinySpec(extra_text_config={"max_position_embeddings": CONTEXT})
    return make_next_video(tmp_path_factory.mktemp("ckpt") / "short-context", spec)


def test_overflow_error_says_how_many_frames_fit(short_context, clip):
    result = run_llava("ask", "--model", str(short_context), "-n", "3", str(clip), "What happens?")
    assert_one_line_error(result, "context is 512", "--long-video")
    fit = int(re.search(r"at most (\d+) frames", result.stderr).group(1))
    assert fit >= 1

    ok = run_llava("ask", "--model", str(short_context), "-n", "3", "--frames", str(fit), str(clip), "What happens?")
    assert ok.returncode == 0, ok.stderr
    too_many = run_llava("ask", "--model", str(short_context), "-n", "3", "--frames", str(fit + 1), str(clip),
                         "What happens?")
    assert_one_line_error(too_many, f"at most {fit} frames")


def test_long_video_makes_the_same_request_succeed(short_context, clip):
    result = run_llava("ask", "--model", str(short_context), "-n", "3", "--long-video", str(clip), "What happens?")
    assert result.returncode == 0, result.stderr
    assert "RoPE stretched" in result.stderr


def test_long_video_matches_reference_with_stretched_rope(short_context, clip, tmp_path):
    """--long-video = the reference run with rope factor × ceil(tokens / context)."""
    from transformers import LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor

    engine = Engine.load(short_context, device="cpu", dtype="float32")
    media = [load_media(clip, num_frames=8)]
    with pytest.raises(PromptError):
        engine.prepare(media, "What happens?")
    prepared = engine.prepare(media, "What happens?", long_video=True)
    stretch = math.ceil((len(prepared.input_ids) + 1) / CONTEXT)
    assert stretch >= 2
    assert prepared.rope_factor == pytest.approx(2.5 * stretch)
    assert prepared.context == CONTEXT * stretch

    folder = tmp_path / "stretched"
    shutil.copytree(short_context, folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["rope_scaling"] = {"type": "linear", "factor": 2.5 * stretch}
    (folder / "config.json").write_text(json.dumps(config))
    ref = LlavaNextVideoForConditionalGeneration.from_pretrained(folder).eval()
    processor = LlavaNextVideoProcessor.from_pretrained(folder)
    inputs = reference_inputs(processor, [("video", reference_frames(clip, 8))], "What happens?")
    assert inputs["input_ids"][0].tolist() == prepared.input_ids
    with torch.no_grad():
        ref_logits = ref(**inputs).logits[0, -1]
    assert (engine.logits(prepared) - ref_logits).abs().max().item() <= 1e-4

    # The next prompt that fits runs with the checkpoint's own factor again.
    short = engine.prepare([load_media(clip, num_frames=2)], "What happens?")
    assert short.rope_factor == 2.5
    engine.logits(short)
    assert engine.model.text.rotary.factor == 2.5


def test_frames_default_is_eight(short_context, clip):
    """Without --frames, 8 frames are sampled (so the 512-token context overflows)."""
    engine = Engine.load(short_context, device="cpu", dtype="float32")
    assert engine.family.default_frames == 8
    result = run_llava("ask", "--model", str(short_context), "--long-video", "-n", "1", str(clip), "What?")
    assert result.returncode == 0, result.stderr
    tokens = int(re.search(r"for (\d+) prompt tokens", result.stderr).group(1))
    assert tokens > 8 * 144
