"""Checkpoint folders → configs and weights in our modules.

Weights are read from safetensors files only. We parse the header ourselves (8-byte
length, JSON) and read each tensor's bytes with ``readinto`` straight into the buffer of
the tensor that the module will own: no memory map counted twice, no second full copy,
and a truncated or corrupt shard is caught before anything is built on it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .errors import ModelError

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc.__class__.__name__}: line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object")
    return data


def read_optional_json(path: Path) -> dict:
    return read_json(path, path.name) if path.is_file() else {}


@dataclass
class Checkpoint:
    """A model folder in the Hub layout, its configs parsed, nothing loaded yet."""

    folder: Path
    config: dict
    generation: dict = field(default_factory=dict)
    preprocessor: dict = field(default_factory=dict)
    processor: dict = field(default_factory=dict)

    @classmethod
    def open(cls, folder: str | Path) -> "Checkpoint":
        folder = Path(folder)
        if not folder.exists():
            raise ModelError(f"model folder not found: {folder}")
        if not folder.is_dir():
            raise ModelError(f"model path is not a folder: {folder}")
        return cls(
            folder=folder,
            config=read_json(folder / "config.json", "config.json"),
            generation=read_optional_json(folder / "generation_config.json"),
            preprocessor=read_optional_json(folder / "preprocessor_config.json"),
            processor=read_optional_json(folder / "processor_config.json"),
        )

    def shard_files(self) -> list[Path]:
        """The safetensors files that hold the weights, checked against the index."""
        index_path = self.folder / "model.safetensors.index.json"
        if index_path.is_file():
            index = read_json(index_path, "weight index")
            names = sorted(set((index.get("weight_map") or {}).values()))
            if not names:
                raise ModelError(f"{index_path} lists no weights")
            missing = [n for n in names if not (self.folder / n).is_file()]
            if missing:
                raise ModelError(f"shard {missing[0]} named in {index_path.name} is missing from {self.folder}")
            return [self.folder / n for n in names]
        shards = sorted(self.folder.glob("*.safetensors"))
        if shards:
            return shards
        if any(self.folder.glob("*.bin")) or any(self.folder.glob("*.pt")) or any(self.folder.glob("*.pth")):
            raise ModelError(f"{self.folder} has only pickle weights (.bin/.pt); llava-cli loads safetensors only")
        raise ModelError(f"no *.safetensors weights in {self.folder}")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_safetensors_header(path: Path) -> list[TensorEntry]:
    """Parse and validate a shard's header; offsets are made absolute."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise ModelError(f"{path} is truncated (no safetensors header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(_MAX_HEADER, size - 8):
                raise ModelError(f"{path} is not a valid safetensors file (bad header length)")
            header = json.loads(handle.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{path} has a corrupt safetensors header") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    base = 8 + header_len
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path} has a corrupt safetensors header entry for {name}") from None
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * dtype.itemsize or begin < 0:
            raise ModelError(f"{path}: tensor {name} has inconsistent size in its header")
        if base + end > size:
            raise ModelError(f"{path} is truncated ({size} bytes, tensor {name} needs {base + end})")
        entries.append(TensorEntry(name, dtype, shape, base + begin, base + end))
    return entries


def iter_tensors(path: Path, wanted: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) in file order, each read into a fresh CPU buffer."""
    entries = sorted(read_safetensors_header(path), key=lambda e: e.begin)
    with path.open("rb", buffering=0) as handle:
        for entry in entries:
            if wanted is not None and entry.name not in wanted:
                continue
            buffer = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
            handle.seek(entry.begin)
            view = memoryview(buffer.numpy())
            read = 0
            while read < len(view):
                n = handle.readinto(view[read:])
                if not n:
                    raise ModelError(f"{path} is truncated while reading {entry.name}")
                read += n
            yield entry.name, buffer.view(entry.dtype).reshape(entry.shape)


# ---------------------------------------------------------------------------------------
# Key names: legacy hub layout and the newer one → our module paths

_PREFIX_RULES = [
    (re.compile(r"^(?:model\.)?language_model\.model\."), "text."),
    (re.compile(r"^model\.language_model\."), "text."),
    (re.compile(r"^(?:language_model\.)?lm_head\."), "text.lm_head."),
    (re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?"), "vision."),
    (re.compile(r"^(?:model\.)?image_tower\.(?:vision_model\.)?"), "image_tower."),
    (re.compile(r"^(?:model\.)?video_tower\.(?:vision_model\.)?"), "video_tower."),
    (re.compile(r"^(?:model\.)?multi_modal_projector\.linear_([12])\."), r"projector.fc\1."),
    (re.compile(r"^(?:model\.)?image_newline$"), "image_newline"),
]

_TEXT_RULES = [
    (re.compile(r"^embed_tokens\."), "embed."),
    (re.compile(r"^layers\.(\d+)\.self_attn\.([qkvo])_proj\."), r"layers.\1.attn.\2."),
    (re.compile(r"^layers\.(\d+)\.mlp\.(gate|up|down)_proj\."), r"layers.\1.mlp.\2."),
    (re.compile(r"^layers\.(\d+)\.input_layernorm\."), r"layers.\1.attn_norm."),
    (re.compile(r"^layers\.(\d+)\.post_attention_layernorm\."), r"layers.\1.mlp_norm."),
    (re.compile(r"^norm\."), "norm."),
    (re.compile(r"^lm_head\."), "lm_head."),
]

_VISION_RULES = [
    (re.compile(r"^embeddings\.patch_embedding\."), "patch_embed."),
    (re.compile(r"^embeddings\.position_embedding\."), "pos_embed."),
    (re.compile(r"^embeddings\.class_embedding$"), "class_embed"),
    (re.compile(r"^pre_layrnorm\."), "pre_norm."),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\."), r"blocks.\1.attn.\2."),
    (re.compile(r"^encoder\.layers\.(\d+)\.layer_norm([12])\."), r"blocks.\1.norm\2."),
    (re.compile(r"^encoder\.layers\.(\d+)\.mlp\.(fc[12])\."), r"blocks.\1.\2."),
]

# Weights that exist in checkpoints but that inference never uses.
_UNUSED = [
    re.compile(r"(^|\.)rotary_emb\.inv_freq$"),
    re.compile(r"^(vision|image_tower|video_tower)\.post_layernorm\."),
    re.compile(r"^(vision|image_tower|video_tower)\.head\."),
    re.compile(r"(^|\.)position_ids$"),
]


def _apply(rules, name: str) -> str | None:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, name, count=1)
        if n:
            return new
    return None


def our_name(key: str) -> str | None:
    """Map a checkpoint key to our parameter path; None when no rule knows it."""
    prefixed = _apply(_PREFIX_RULES, key)
    if prefixed is None:
        return None
    head, _, rest = prefixed.partition(".")
    if head == "text":
        inner = _apply(_TEXT_RULES, rest)
    elif head in ("vision", "image_tower", "video_tower"):
        inner = _apply(_VISION_RULES, rest)
        if inner is None and rest.startswith(("post_layernorm.", "head.")):
            inner = rest
    else:
        return prefixed
    return None if inner is None else f"{head}.{inner}"


def skippable(name: str) -> bool:
    """Checkpoint weights (in our naming) that inference never uses: the vision layers past
    the feature layer, post-LayerNorms, attention-pool heads, stale buffers."""
    return any(p.search(name) for p in _UNUSED) or _vision_block_index(name) is not None


def _vision_block_index(name: str) -> int | None:
    match = re.match(r"^(?:vision|image_tower|video_tower)\.blocks\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def load_weights(model: nn.Module, shards: list[Path], *, device: torch.device, dtype: torch.dtype) -> None:
    """Fill a model built on the meta device with the shards' tensors.

    Each tensor is read once into CPU memory, converted to ``dtype`` and moved to
    ``device``, then owned by the module: peak memory is the weights plus one tensor.
    Vision blocks past the feature layer are skipped (they were never built).
    """
    slots: dict[str, tuple[nn.Module, str, bool]] = {}
    for module_name, module in model.named_modules():
        for leaf, _ in module.named_parameters(recurse=False):
            slots[f"{module_name}.{leaf}" if module_name else leaf] = (module, leaf, True)
    filled: set[str] = set()
    for shard in shards:
        for key, tensor in iter_tensors(shard):
            name = our_name(key)
            if name is None:
                raise ModelError(f"unexpected weight '{key}' in {shard.name}: is this the right model family?")
            if name not in slots:
                if skippable(name):
                    continue
                raise ModelError(f"unexpected weight '{key}' in {shard.name}: is this the right model family?")
            module, leaf, _ = slots[name]
            expected = tuple(getattr(module, leaf).shape)
            if tuple(tensor.shape) != expected:
                raise ModelError(f"weight '{key}' in {shard.name} has shape {tuple(tensor.shape)}, "
                                 f"config says {expected}")
            value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
            filled.add(name)
            del tensor, value
    missing = [n for n in slots if n not in filled]
    tied = getattr(model, "tie_missing_weights", None)
    if tied is not None:
        missing = tied(missing)
    if missing:
        raise ModelError(f"weight for '{missing[0]}' is missing from the checkpoint"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but no CUDA GPU is available (try --device cpu)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps asked for, but MPS is not available (try --device cpu)")
    return device


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The dtype to compute in: float32 on CPU, bfloat16 on GPUs that have it, else float16."""
    if name not in (None, "", "auto"):
        if name not in _DTYPES:
            raise ModelError(f"unknown dtype '{name}' (use auto, float32, float16 or bfloat16)")
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32
