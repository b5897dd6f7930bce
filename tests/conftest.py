"""Fixtures shared by the whole suite. Test helpers live in tests/support (importable as
`support.*`: pyproject's pytest `pythonpath` puts tests/ on sys.path).

- tiny_model (session): the default tiny LLaVA-NeXT-Video checkpoint.
- media_files (session): a clip, a second clip and a photo.
- clip (session): a 40-frame 96x64 clip in a folder of its own.
- engine (module): tiny_model loaded on the CPU in float32.
- env (function): a clean environment for `support.cli.run` in a fresh home (tmp_path).
- media_dir (module): the media files a module lists in its MEDIA_FILES, in a folder of its own.

A module may still define a fixture of the same name when it means something else (then
pytest uses the module's): test_hub's `env` points at its fake Hub, test_speed_paths' `env`
is one home for the whole module.
"""

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
    from support.checkpoints.next_video import make_next_video

    return make_next_video(tmp_path_factory.mktemp("shared-ckpt") / "tiny")


@pytest.fixture(scope="session")
def media_files(tmp_path_factory) -> dict[str, Path]:
    from support.media import make_image, make_video

    folder = tmp_path_factory.mktemp("shared-media")
    return {
        "clip": make_video(folder / "clip.mp4", frames=40, size=(96, 64), fps=24),
        "clip2": make_video(folder / "clip2.mp4", frames=30, size=(80, 64), fps=24),
        "image": make_image(folder / "photo.png", size=(64, 48)),
    }


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """A 40-frame 96x64 24-fps clip (the CLI tests' question-and-answer video)."""
    from support.media import make_video

    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4", frames=40, size=(96, 64), fps=24)


@pytest.fixture(scope="module")
def engine(tiny_model):
    """tiny_model loaded on the CPU in float32, once per module."""
    from llava_cli.engine import Engine

    return Engine.load(tiny_model, device="cpu", dtype="float32")


@pytest.fixture()
def env(tmp_path) -> dict[str, str]:
    """An environment for `support.cli.run` that cannot see the user's config, history or
    LLAVA_* settings, with its home in this test's tmp_path."""
    from support.cli import clean_env

    return clean_env(tmp_path)


@pytest.fixture(scope="module")
def media_dir(request, tmp_path_factory) -> Path:
    """A folder with the media files the test module lists in MEDIA_FILES, a dict from file
    name to a function that writes that file at the path it is given (see support.media)."""
    from support.media import build_media

    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    return build_media(tmp_path_factory.mktemp(f"media-{name}"), request.module.MEDIA_FILES)
