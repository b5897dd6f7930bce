"""Family.encode_many: one vision-tower call per (tower, view shape) for all media items of
a prompt, with the same embeddings, in the same order, as encoding each item alone.

Every family is checked on a tiny checkpoint with a mix of items of different kinds and
sizes (different view counts per item), so the tower's passes of ``views_per_pass`` views
straddle item boundaries. Media are built in memory (no files, no decoding).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from support.media import frame_pattern

from llava_cli.engine import Engine
from llava_cli.families.base import Family, MediaInput
from llava_cli.media import Media


def image(width: int, height: int, seed: int = 0) -> Media:
    frames = frame_pattern(seed, (width, height))[None]
    return Media(f"image-{width}x{height}.png", "image", frames, [0], [0.0], 1, None)


def video(frames: int, width: int = 96, height: int = 64) -> Media:
    pixels = np.stack([frame_pattern(i, (width, height)) for i in range(frames)])
    return Media("clip.mp4", "video", pixels, list(range(frames)), [i / 24 for i in range(frames)], frames, 24.0)


# Per family: the prompts (lists of media) whose items are encoded together.
WIDE, TALL, SQUARE = image(200, 100, 1), image(90, 300, 2), image(64, 64, 3)
PROMPTS = {
    "llava15": [[WIDE, TALL, SQUARE]],
    "next": [[WIDE, TALL, SQUARE]],
    "next_video": [[WIDE, video(3), TALL, video(2, 80, 64)]],
    "onevision": [[image(640, 480)], [WIDE, TALL], [TALL, video(3), WIDE]],
    "video_llava": [[WIDE, video(3), TALL, video(2, 80, 64)]],
}


def build(name: str, folder: Path) -> Path:
    """``name``'s tiny checkpoint, written to ``folder``."""
    from support.checkpoints import SPECS, make_llava15, make_next, make_next_video, make_onevision, make_video_llava

    makers = {"llava15": make_llava15, "next": lambda f: make_next(f, SPECS["vicuna"]),
              "next_video": make_next_video, "onevision": make_onevision, "video_llava": make_video_llava}
    return makers[name](folder)


class Engines:
    """Each family's tiny checkpoint, built and loaded on first use, once for this module."""

    def __init__(self, request, tmp_path_factory) -> None:
        self.request, self.tmp = request, tmp_path_factory
        self.loaded: dict[str, Engine] = {}

    def __getitem__(self, name: str) -> Engine:
        if name not in self.loaded:
            if name == "next_video":  # conftest's session checkpoint
                folder = self.request.getfixturevalue("tiny_model")
            else:
                folder = build(name, self.tmp.mktemp(f"encode-many-{name}") / "tiny")
            self.loaded[name] = Engine.load(folder, device="cpu", dtype="float32")
        return self.loaded[name]


@pytest.fixture(scope="module")
def engines(request, tmp_path_factory) -> Engines:
    return Engines(request, tmp_path_factory)


def towers(family: Family, model: nn.Module) -> dict[str, nn.Module]:
    return {name: getattr(model, name) for name in family.towers}


@contextmanager
def count_calls(modules: dict[str, nn.Module]):
    """Records the view count of every forward call of each module, by name."""
    calls: dict[str, list[int]] = {name: [] for name in modules}
    handles = [module.register_forward_pre_hook(lambda _m, args, name=name: calls[name].append(args[0].shape[0]))
               for name, module in modules.items()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def expected_groups(family: Family, model: nn.Module, items: list[MediaInput]) -> dict[str, list[int]]:
    """Views per tower call that encode_many should make: one call per (tower, view shape)."""
    names = {id(module): name for name, module in towers(family, model).items()}
    groups: dict[tuple[str, tuple[int, ...]], int] = {}
    for item in items:
        key = (names[id(family.tower(model, item))], tuple(item.pixels.shape[1:]))
        groups[key] = groups.get(key, 0) + item.pixels.shape[0]
    out: dict[str, list[int]] = {name: [] for name in names.values()}
    for (name, _), views in groups.items():
        out[name].append(views)
    return out


def check_prompt(family: Family, model: nn.Module, media: list[Media]) -> None:
    items = family.prepare(media)
    with torch.inference_mode():
        alone = [family.encode(model, item) for item in items]
        with count_calls(towers(family, model)) as calls:
            together = family.encode_many(model, items)
    assert calls == expected_groups(family, model, items)
    assert len(together) == len(alone)
    for item, one, many in zip(items, alone, together):
        assert many.shape == one.shape == (item.num_tokens, model.projector.fc2.out_features)
        torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_encode_many_matches_encode(engines, name):
    """At the default 4 views per pass, so passes mix views of several items."""
    engine = engines[name]
    assert all(t.views_per_pass == 4 for t in towers(engine.family, engine.model).values())
    for media in PROMPTS[name]:
        check_prompt(engine.family, engine.model, media)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_one_tower_run_per_group(engines, name):
    """With views_per_pass above a prompt's views, each group is exactly one _forward."""
    engine = engines[name]
    family, model = engine.family, engine.model
    items = [item for media in PROMPTS[name] for item in family.prepare(media)]
    runs: dict[str, int] = {}
    saved = {}
    for tower_name, tower in towers(family, model).items():
        saved[tower_name] = tower.views_per_pass
        tower.views_per_pass = 1000
        inner = tower._forward

        def counted(pixels, inner=inner, tower_name=tower_name):
            runs[tower_name] = runs.get(tower_name, 0) + 1
            return inner(pixels)

        tower._forward = counted
    try:
        with torch.inference_mode():
            family.encode_many(model, items)
    finally:
        for tower_name, tower in towers(family, model).items():
            del tower._forward
            tower.views_per_pass = saved[tower_name]
    expected = {n: len(v) for n, v in expected_groups(family, model, items).items() if v}
    assert runs == expected
    assert sum(runs.values()) == (2 if name == "video_llava" else 1)


def test_onevision_square_multi_image(engines):
    """Newer transformers' one-view multi-image path goes through encode_many too."""
    engine = engines["onevision"]
    family = engine.family
    family.square_multi_image = True
    try:
        media = [WIDE, TALL, video(2), SQUARE]
        assert [i.pixels.shape[0] for i in family.prepare(media)] == [1, 1, 2, 1]
        check_prompt(family, engine.model, media)
    finally:
        del family.square_multi_image


@pytest.mark.parametrize("name", ["llava15", "video_llava"])
def test_empty(engines, name):
    engine = engines[name]
    with count_calls(towers(engine.family, engine.model)) as calls:
        assert engine.family.encode_many(engine.model, []) == []
    assert all(not c for c in calls.values())


# -- grouping by view shape, on a stub family whose tower takes any size -----------------


class StubTower(nn.Module):
    """(views, 3, S, S) → (views, S, 3): per-view, so batching must not change a value."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 3, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(pixels).mean(dim=3).transpose(1, 2)


class StubFamily(Family):
    title = "stub"

    def __init__(self) -> None:  # no checkpoint: only the encode path is used
        pass

    def encode(self, model: nn.Module, item: MediaInput, *, hidden: torch.Tensor | None = None) -> torch.Tensor:
        return self.run_tower(model, item, hidden).flatten(0, 1) * 2


@dataclass
class StubModel:
    vision: StubTower


def test_groups_by_view_shape_and_keeps_order():
    torch.manual_seed(0)
    model = StubModel(StubTower())
    sides = [8, 16, 8, 12, 16, 8]
    items = [MediaInput("image", torch.randn(views, 3, side, side), 0, 0, (side, side))
             for views, side in zip([1, 3, 2, 1, 2, 4], sides)]
    family = StubFamily()
    with count_calls({"vision": model.vision}) as calls:
        together = family.encode_many(model, items)
    assert calls == {"vision": [1 + 2 + 4, 3 + 2, 1]}  # sides 8, 16, 12 in first-seen order
    for item, many in zip(items, together):
        torch.testing.assert_close(many, family.encode(model, item), atol=1e-6, rtol=1e-6)
