"""Safetensors shards → weights in our modules; devices and dtypes.

Weights are read from safetensors files only; checkpoint.py parses and checks the headers.
Each shard is memory-mapped (copy-on-write, so nothing can reach the file): a tensor that
already has the dtype and device the model computes in is the mapped bytes themselves,
paged in from the page cache when first used, as the reference's lazy loading does. Only a
tensor that must change dtype or device is converted, one at a time, and its mapped pages
are handed back to the kernel at once.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .errors import ModelError

# Checkpoint folders and safetensors headers need no torch (`llava models pull` verifies a
# download without importing it); they live in checkpoint.py and are re-exported here.
from .checkpoint import (ST_NAMES, Checkpoint, TensorEntry, read_json, read_optional_json,  # noqa: F401
                         read_safetensors_header)

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class MappedShard:
    """One safetensors file mapped into memory; its tensors are views of the mapping.

    The mapping is private (copy-on-write): writing to a tensor never changes the file.
    It stays alive as long as any tensor viewing it does.
    """

    def __init__(self, path: Path, entries: list[TensorEntry] | None = None) -> None:
        self.path = path
        self.entries = sorted(read_safetensors_header(path) if entries is None else entries,
                              key=lambda e: e.begin)
        try:
            with path.open("rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)

    def tensors(self, wanted: set[str] | None = None) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
        """(entry, tensor) in file order. A tensor whose offset does not suit its dtype's
        alignment (possible in hand-written files) is copied; every other one is a view."""
        for entry in self.entries:
            if wanted is not None and entry.name not in wanted:
                continue
            raw = self._bytes[entry.begin:entry.end]
            dtype = _ST_DTYPES[entry.dtype]
            if entry.begin % dtype.itemsize:
                raw = raw.clone()
                self.release(entry)
            yield entry, raw.view(dtype).reshape(entry.shape)

    def release(self, entry: TensorEntry) -> None:
        """Give back the pages of a tensor that was copied elsewhere (converted, moved to
        a GPU, quantized), so the process does not keep both. Only the pages wholly inside
        the tensor are dropped: a page shared with a neighbour the model keeps is left as is."""
        page = mmap.PAGESIZE
        begin = -(-entry.begin // page) * page
        end = entry.end // page * page
        if end > begin and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, begin, end - begin)


def iter_tensors(path: Path, wanted: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) in file order, each a view of the mapped file."""
    for entry, tensor in MappedShard(path).tensors(wanted):
        yield entry.name, tensor


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


def load_weights(model: nn.Module, shards: list[Path], *, device: torch.device, dtype: torch.dtype,
                 quantizer=None, headers: dict[Path, list[TensorEntry]] | None = None) -> None:
    """Fill a model built on the meta device with the shards' tensors.

    A tensor already in ``dtype`` on the CPU, loading for the CPU, becomes the parameter
    as it is: a view of the mapped shard, no copy. Any other is converted to ``dtype`` and
    moved to ``device`` on its own, and its mapped pages are released, so peak memory is
    the weights plus one tensor. ``headers`` are the shards' parsed headers when the
    caller has them (``Checkpoint.verify`` parsed them already). Vision blocks past the
    feature layer are skipped (they were never built). With a ``quantizer`` (nn/quant.py)
    the layers it wants are replaced, as their weight arrives, by quantized ones.
    """
    slots: dict[str, tuple[nn.Module, str, str]] = {}
    for module_name, module in model.named_modules():
        for leaf, _ in module.named_parameters(recurse=False):
            slots[f"{module_name}.{leaf}" if module_name else leaf] = (module, leaf, module_name)
    filled: set[str] = set()
    for shard in shards:
        mapped = MappedShard(shard, (headers or {}).get(shard))
        for entry, tensor in mapped.tensors():
            key = entry.name
            name = our_name(key)
            if name is None:
                raise ModelError(f"unexpected weight '{key}' in {shard.name}: is this the right model family?")
            if name not in slots:
                if skippable(name):
                    continue
                raise ModelError(f"unexpected weight '{key}' in {shard.name}: is this the right model family?")
            module, leaf, module_name = slots[name]
            if not tensor.is_floating_point():
                raise ModelError(f"weight '{key}' in {shard.name} has dtype {ST_NAMES[entry.dtype]}, "
                                 f"not a floating-point type (corrupt or mismatched checkpoint)")
            expected = tuple(getattr(module, leaf).shape)
            if tuple(tensor.shape) != expected:
                raise ModelError(f"weight '{key}' in {shard.name} has shape {tuple(tensor.shape)}, "
                                 f"config says {expected}")
            if quantizer is not None and leaf == "weight" and quantizer.wants(module_name, module):
                layer = quantizer.quantize(model, module_name, module, tensor)
                if layer.bias is not None:
                    slots[f"{module_name}.bias"] = (layer, "bias", module_name)
                filled.add(name)
                del tensor
                mapped.release(entry)
                continue
            value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
            filled.add(name)
            if value.data_ptr() != tensor.data_ptr():
                mapped.release(entry)
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
