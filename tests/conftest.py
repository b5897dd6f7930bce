"""Fixtures shared by the CLI tests: one tiny checkpoint and a few media files per run."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where a CUDA device is present; elsewhere they skip."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random LLaVA-NeXT-Video checkpoint (its greedy answers never reach a stop
    token, so --max-new-tokens decides their length)."""
    from checkpoints import make_next_video

    return make_next_video(tmp_path_factory.mktemp("shared-ckpt") / "tiny")


@pytest.fixture(scope="session")
def media_files(tmp_path_factory) -> dict[str, Path]:
    from media_factory import make_image, make_video

    folder = tmp_path_factory.mktemp("shared-media")
    return {
        "clip": make_video(folder / "clip.mp4", frames=40, size=(96, 64), fps=24),
        "clip2": make_video(folder / "clip2.mp4", frames=30, size=(80, 64), fps=24),
        "image": make_image(folder / "photo.png", size=(64, 48)),
    }
