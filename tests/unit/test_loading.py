"""Weights from safetensors shards: mapped, not copied, when they can be used as stored;
converted tensor by tensor (their mapped pages handed back) when not; each header parsed
once per run; clear errors for dtypes we do not load."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from support.checkpoints.next_video import TinySpec, make_next_video
from support.cli import clean_env, run


def _mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (from /proc/self/maps)."""
    target = str(path.resolve())
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            begin, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((begin, end))
    return ranges


def _rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    target = str(path.resolve())
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if parts and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", parts[0]):
            inside = len(parts) == 6 and parts[5] == target
        elif inside and line.startswith("Rss:"):
            total += int(parts[1])
    return total


needs_proc = pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory) -> Path:
    return make_next_video(tmp_path_factory.mktemp("ckpt") / "f32")


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory) -> Path:
    return make_next_video(tmp_path_factory.mktemp("ckpt") / "bf16", TinySpec(save_dtype="bfloat16"))


@needs_proc
def test_weights_stored_as_computed_are_the_mapped_file(f32_model):
    from llava_cli.engine import Engine

    engine = Engine.load(f32_model, device="cpu", dtype="float32")
    shard = f32_model / "model.safetensors"
    ranges = _mappings(shard)
    assert ranges, "the shard is not mapped"
    params = dict(engine.model.named_parameters())
    inside = [name for name, p in params.items() if any(b <= p.data_ptr() < e for b, e in ranges)]
    assert set(inside) == set(params), f"copied instead of mapped: {sorted(set(params) - set(inside))[:5]}"
    # A copy-on-write mapping: writing to a weight never reaches the file.
    before = shard.read_bytes()
    weight = params["text.layers.0.attn.q.weight"]
    weight.data.add_(1.0)
    assert shard.read_bytes() == before


@needs_proc
def test_converted_weights_leave_the_mapping(bf16_model):
    from llava_cli.engine import Engine

    engine = Engine.load(bf16_model, device="cpu", dtype="float32")
    ranges = _mappings(bf16_model / "model.safetensors")
    for name, param in engine.model.named_parameters():
        assert param.dtype == torch.float32, name
        assert not any(b <= param.data_ptr() < e for b, e in ranges), f"{name} still points into the file"


@needs_proc
def test_release_hands_a_converted_tensors_pages_back(tmp_path):
    from safetensors.torch import save_file

    from llava_cli.loading import MappedShard

    path = tmp_path / "big.safetensors"
    save_file({"a": torch.randn(1024, 1024).to(torch.bfloat16), "b": torch.randn(1024, 1024)}, str(path))
    shard = MappedShard(path)
    tensors = dict((entry.name, (entry, tensor)) for entry, tensor in shard.tensors())
    entry, tensor = tensors["a"]
    converted = tensor.float()  # touches every page of "a": 2 MiB resident
    assert _rss_kb(path) >= 1900
    shard.release(entry)
    assert _rss_kb(path) <= 8  # at most the two pages "a" shares with its neighbours
    assert torch.equal(converted, tensor.float())  # released pages read back from the file


def test_each_header_is_parsed_once_per_run(f32_model, monkeypatch):
    import llava_cli.checkpoint as checkpoint_mod
    from llava_cli.engine import Engine
    from llava_cli.hub import open_checkpoint

    calls: list[Path] = []
    real = checkpoint_mod.read_safetensors_header

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(checkpoint_mod, "read_safetensors_header", counting)
    monkeypatch.setattr("llava_cli.loading.read_safetensors_header", counting)
    checkpoint = open_checkpoint(str(f32_model), progress=False)  # verifies every shard
    Engine.load(checkpoint, device="cpu", dtype="float32")
    assert calls == [f32_model / "model.safetensors"]


def test_fp8_weights_are_an_unsupported_dtype(f32_model, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "fp8"
    shutil.copytree(f32_model, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(n for n in tensors if n.endswith("q_proj.weight"))
    tensors[name] = tensors[name].to(torch.float8_e4m3fn)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    env = clean_env(tmp_path)
    result = run(["ask", "-m", str(folder), "hello?"], env, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llava: error: "), result.stderr
    assert "unsupported dtype F8_E4M3" in lines[0] and name in lines[0]
    assert "corrupt" not in lines[0]
    info = run(["models", "info", str(folder)], env, timeout=120)
    assert info.returncode == 1 and "unsupported dtype F8_E4M3" in info.stderr


def test_unaligned_tensors_are_copied_correctly(tmp_path):
    """A hand-written file may place a float32 tensor at an offset that is not a multiple
    of 4: it is read by copy, with the right values."""
    import struct

    from llava_cli.loading import iter_tensors

    a = torch.arange(3, dtype=torch.uint8)
    b = torch.randn(5, 7)
    header = {"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "b": {"dtype": "F32", "shape": [5, 7], "data_offsets": [3, 3 + b.numel() * 4]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + a.numpy().tobytes() + b.numpy().tobytes())
    loaded = dict(iter_tensors(path))
    assert torch.equal(loaded["a"], a) and torch.equal(loaded["b"], b)
