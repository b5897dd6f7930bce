"""Checkpoint folders in the Hub layout: configs, shards and their integrity. No torch.

We parse safetensors headers ourselves (8-byte length, JSON). A truncated or corrupt shard,
or an index that names a missing shard, is caught here before anything is built on it,
with an ``IntegrityError`` naming the file.
"""

from __future__ import annotations

import json
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import IntegrityError, ModelError
from .validate import check_generation_config, is_int, show

# safetensors dtype codes → bytes per element (loading.py maps the codes to tensor types)
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}
ST_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
            "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
# Codes the safetensors format defines that llava-cli does not load (FP8 and friends).
ST_UNSUPPORTED = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64", "U16", "U32", "U64"}
_MAX_HEADER = 100 * 1024 * 1024
_MAX_JSON = 64 * 1024 * 1024  # config files are kilobytes; an index of a huge model ~100 KB


def read_json(path: Path, what: str) -> dict:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block, a device never end
            raise IntegrityError(f"{path} is not a regular file (a {what} must be one)", path=path)
        with path.open("rb") as handle:
            raw = handle.read(_MAX_JSON + 1)
        if len(raw) > _MAX_JSON:
            raise IntegrityError(f"{path} is too large for a {what} (over {_MAX_JSON // 2**20} MB)", path=path)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{what} not found: {path}", path=path, missing=True) from None
    except IsADirectoryError:
        raise IntegrityError(f"{path} is a folder, not a {what}", path=path) from None
    except UnicodeDecodeError:
        raise IntegrityError(f"{path} is not valid JSON (not UTF-8 text)", path=path) from None
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    except RecursionError:
        raise IntegrityError(f"{path} is not valid JSON (nested too deeply)", path=path) from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise IntegrityError(f"{path} is not a JSON object", path=path)
    return data


def read_optional_json(path: Path) -> dict:
    return read_json(path, path.name) if path.exists() else {}


@dataclass
class Checkpoint:
    """A model folder in the Hub layout, its configs parsed, nothing loaded yet."""

    folder: Path
    config: dict
    generation: dict = field(default_factory=dict)
    preprocessor: dict = field(default_factory=dict)
    processor: dict = field(default_factory=dict)
    # Parsed shard headers, by path: each header is read once per run (verify, then load).
    headers: dict[Path, list["TensorEntry"]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, folder: str | Path) -> "Checkpoint":
        folder = Path(folder)
        if not folder.exists():
            raise ModelError(f"model folder not found: {folder}")
        if not folder.is_dir():
            raise ModelError(f"model path is not a folder: {folder}")
        checkpoint = cls(
            folder=folder,
            config=read_json(folder / "config.json", "config.json"),
            generation=read_optional_json(folder / "generation_config.json"),
            preprocessor=read_optional_json(folder / "preprocessor_config.json"),
            processor=read_optional_json(folder / "processor_config.json"),
        )
        # config.json and the preprocessor configs are checked by the family that reads
        # them (families/); the sampling settings here, since the engine reads them.
        check_generation_config(checkpoint.generation, str(folder / "generation_config.json"))
        return checkpoint

    def shard_files(self) -> list[Path]:
        """The safetensors files that hold the weights, checked against the index."""
        index_path = self.folder / "model.safetensors.index.json"
        if index_path.exists():
            names = sorted(set(self.weight_map().values()))
            if not names:
                raise IntegrityError(f"{index_path} lists no weights", path=index_path)
            missing = [n for n in names if not (self.folder / n).is_file()]
            if missing:
                raise IntegrityError(f"shard {missing[0]} named in {index_path.name} is missing from {self.folder}",
                                     path=self.folder / missing[0], missing=True)
            return [self.folder / n for n in names]
        shards = sorted(self.folder.glob("*.safetensors"))
        if shards:
            return shards
        if any(self.folder.glob("*.bin")) or any(self.folder.glob("*.pt")) or any(self.folder.glob("*.pth")):
            raise ModelError(f"{self.folder} has only pickle weights (.bin/.pt); llava-cli loads safetensors only")
        raise IntegrityError(f"no *.safetensors weights in {self.folder}", path=self.folder, missing=True)

    def verify(self) -> list[Path]:
        """Check the weights before anything is built on them; return the shards.

        The index names only shards that exist, every shard's header parses, every
        file is as long as its header says, and each tensor the index maps to a shard
        is in that shard. Headers only: no tensor data is read.
        """
        shards = self.shard_files()
        held = {shard.name: {entry.name for entry in self.header(shard)} for shard in shards}
        index_path = self.folder / "model.safetensors.index.json"
        if index_path.exists():
            for tensor, shard in self.weight_map().items():
                if tensor not in held.get(shard, ()):
                    raise IntegrityError(f"{self.folder / shard} lacks tensor {tensor} that {index_path.name} "
                                         f"places there (corrupt or mismatched shard)", path=self.folder / shard)
        return shards

    def weight_map(self) -> dict[str, str]:
        """model.safetensors.index.json's tensor → shard map, checked: an object of names
        to shard files inside the folder."""
        index_path = self.folder / "model.safetensors.index.json"
        index = read_json(index_path, "weight index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise IntegrityError(f"{index_path}: weight_map must be an object of tensor names to shard files, "
                                 f"got {show(weight_map)}", path=index_path)
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str) or not _plain_shard_name(shard):
                raise IntegrityError(f"{index_path}: weight_map places {tensor} in {show(shard)}, which is not "
                                     f"a .safetensors file name inside the model folder", path=index_path)
        return weight_map

    def header(self, shard: Path) -> list["TensorEntry"]:
        """The shard's parsed header, parsed on first use only."""
        if shard not in self.headers:
            self.headers[shard] = read_safetensors_header(shard)
        return self.headers[shard]


def _plain_shard_name(name: str) -> bool:
    """A relative path to a .safetensors file that stays inside the folder."""
    parts = name.replace("\\", "/").split("/")
    return (name.endswith(".safetensors") and not name.startswith("/") and "\0" not in name
            and all(part not in ("", ".", "..") for part in parts))


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors code: "F32", "BF16", …
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int

    @property
    def numel(self) -> int:
        return (self.end - self.begin) // ST_ITEMSIZE[self.dtype]


def read_safetensors_header(path: Path) -> list[TensorEntry]:
    """Parse and validate a shard's header; offsets are made absolute.

    Every entry must be an object with a known ``dtype``, a ``shape`` of non-negative
    integers and ``data_offsets`` [begin, end] whose length is exactly the shape's element
    count times the dtype's size; the tensors may not overlap, and the file must end where
    the data does. Anything else is an ``IntegrityError`` naming the shard and the tensor.
    """
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise IntegrityError(f"{path} is not a regular file (a safetensors shard must be one)", path=path)
        size = info.st_size
        with path.open("rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise IntegrityError(f"{path} is truncated (no safetensors header)", path=path)
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len < 2 or header_len > min(_MAX_HEADER, size - 8):
                raise IntegrityError(f"{path} is not a valid safetensors file (bad header length)", path=path)
            header = json.loads(handle.read(header_len))
            if not isinstance(header, dict):
                raise IntegrityError(f"{path} has a corrupt safetensors header (not a JSON object)", path=path)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise IntegrityError(f"{path} has a corrupt safetensors header (not valid JSON)", path=path) from None
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing", path=path, missing=True) from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    base = 8 + header_len
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue

        def corrupt(what: str) -> IntegrityError:
            return IntegrityError(f"{path}: the header entry of tensor {show(name)} {what}", path=path)

        if not isinstance(info, dict):
            raise corrupt(f"must be an object, got {show(info)}")
        dtype = info.get("dtype")
        if not isinstance(dtype, str):
            raise corrupt(f"has no dtype string (got {show(dtype)})")
        if dtype not in ST_ITEMSIZE:
            supported = ", ".join(ST_ITEMSIZE)
            known = dtype in ST_UNSUPPORTED
            raise ModelError(f"{path}: tensor {name} has {'unsupported' if known else 'unknown'} dtype "
                             f"{dtype if dtype.isprintable() and len(dtype) <= 32 else show(dtype)} "
                             f"(llava-cli loads {supported})")
        itemsize = ST_ITEMSIZE[dtype]
        shape = info.get("shape")
        if not (isinstance(shape, list) and len(shape) <= 16 and all(is_int(d) and d >= 0 for d in shape)):
            raise corrupt(f"has a bad shape {show(shape)} (a list of non-negative integers)")
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise corrupt(f"has bad data_offsets {show(offsets)} (two non-negative integers, begin <= end)")
        begin, end = offsets
        numel = 1
        for dim in shape:
            numel *= dim
        if end - begin != numel * itemsize:
            raise IntegrityError(f"{path}: tensor {name} is {end - begin} bytes in its header, but its dtype "
                                 f"{dtype} and shape {list(shape)} make {numel * itemsize}", path=path)
        if base + end > size:
            raise IntegrityError(f"{path} is truncated ({size} bytes, tensor {name} needs {base + end})", path=path)
        entries.append(TensorEntry(name, dtype, tuple(shape), base + begin, base + end))
    previous = None
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if previous is not None and entry.begin < previous.end and entry.end > entry.begin:
            raise IntegrityError(f"{path}: tensors {previous.name} and {entry.name} overlap in the file", path=path)
        if entry.end > entry.begin:
            previous = entry
    data_end = max((entry.end for entry in entries), default=base)
    if data_end != size:
        # As the safetensors library requires; a longer file is what a download appended
        # to an already complete one looks like.
        raise IntegrityError(f"{path} has {size - data_end} bytes past the data its header describes", path=path)
    return entries
