"""Frame counts: 8 by default; Video-LLaVA is fixed at 8 and says so when asked for more."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.checkpoints.llava import make_video_llava
from support.cli import run_llava

from llava_cli.families import FAMILIES


@pytest.fixture(scope="module")
def video_llava(tmp_path_factory) -> Path:
    return make_video_llava(tmp_path_factory.mktemp("ckpt") / "video-llava")


def test_every_family_defaults_to_eight_frames():
    assert {family.name: family.default_frames for family in FAMILIES} == {f.name: 8 for f in FAMILIES}


def test_video_llava_warns_when_asked_for_another_frame_count(video_llava, clip):
    result = run_llava("ask", "--model", str(video_llava), "-n", "2", "--frames", "4", str(clip), "What?")
    assert result.returncode == 0, result.stderr
    assert "trained on 8 frames" in result.stderr


def test_video_llava_default_is_quiet(video_llava, clip):
    result = run_llava("ask", "--model", str(video_llava), "-n", "2", str(clip), "What?")
    assert result.returncode == 0, result.stderr
    assert "trained on" not in result.stderr
