"""Typed checks for the values that model files hand us: no torch.

Every number, flag and list llava-cli reads from a checkpoint's JSON files (config.json,
generation_config.json, the preprocessor configs) goes through ``Fields``, which returns a
value of the promised type inside the promised range, or raises one ``ModelError`` that
names the file, the field and what was expected:

    fields = Fields(raw, "/models/x/config.json", "text_config")
    hidden = fields.int("hidden_size", 4096, lo=1, hi=MAX_HIDDEN)
    # ModelError: /models/x/config.json: text_config.hidden_size must be an integer
    #             from 1 to 65536, got -5

The bounds are generous (far past any published checkpoint) but finite, so that a hostile
config fails here, at once, instead of building a model for ever or asking for exabytes.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from .errors import ModelError

MISSING: Any = object()

# Generous, finite bounds for the sizes a config may ask for.
MAX_HIDDEN = 65536
MAX_INTERMEDIATE = 1 << 20
MAX_LAYERS = 1000
MAX_HEADS = 4096
MAX_VOCAB = 10_000_000
MAX_POSITIONS = 1 << 30
MAX_IMAGE_SIDE = 16384  # pixels: preprocessor sizes, vision image_size, anyres pinpoints
MAX_GRID = 256  # vision patches per side (real towers: 16 to 27)
MAX_PINPOINTS = 4096
MAX_NEW_TOKENS = 10_000_000
MAX_TOKEN_ID = MAX_VOCAB
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits


def show(value: Any, limit: int = 60) -> str:
    """A short, JSON-like rendering of a value for an error message."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


is_int = _is_int


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(lo, hi, *, lo_open: bool = False, integer: bool = False) -> str:
    lo = None if lo is None else _num(lo)
    hi = None if hi is None else _num(hi)
    kind = "an integer" if integer else "a number"
    if lo is not None and hi is not None:
        if lo_open:
            return f"{kind} greater than {lo} and at most {hi}"
        return f"{kind} from {lo} to {hi}"
    if lo is not None:
        if lo_open:
            return f"{kind} greater than {lo}"
        return "a positive integer" if integer and lo == "1" else f"{kind} of at least {lo}"
    if hi is not None:
        return f"{kind} of at most {hi}"
    return kind if integer else "a finite number"


class Fields:
    """Typed access to one JSON object of a model file.

    ``source`` names the file in messages; ``prefix`` is the path of this object inside
    it ("text_config"). A key that is absent, or null, takes the default given; without a
    default it is an error to leave it out.
    """

    def __init__(self, raw: Any, source: str, prefix: str = "", *, what: str = "a JSON object") -> None:
        if not isinstance(raw, dict):
            where = f"{source}: {prefix}" if prefix else source
            raise ModelError(f"{where} must be {what}, got {show(raw)}")
        self.raw = raw
        self.source = source
        self.prefix = prefix

    # -- messages ----------------------------------------------------------------------
    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, expected: str, value: Any = MISSING) -> ModelError:
        got = "" if value is MISSING else f", got {show(value)}"
        return ModelError(f"{self.source}: {self.name(key)} must be {expected}{got}")

    def _value(self, key: str, default: Any) -> Any:
        value = self.raw.get(key)
        if value is None:
            if default is MISSING:
                raise ModelError(f"{self.source}: {self.name(key)} is missing")
            return default
        return value

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    # -- scalars -----------------------------------------------------------------------
    def int(self, key: str, default: Any = MISSING, *, lo: int | None = None, hi: int | None = None) -> Any:
        value = self._value(key, default)
        if value is default and default is not MISSING:
            return value
        if not _is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, _range_text(lo, hi, integer=True), value)
        return value

    def float(self, key: str, default: Any = MISSING, *, lo: float | None = None, hi: float | None = None,
              lo_open: bool = False) -> Any:
        value = self._value(key, default)
        if value is default and default is not MISSING:
            return value
        ok = _is_number(value) and math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value <= hi
        if not ok:
            raise self.error(key, _range_text(lo, hi, lo_open=lo_open), value)
        return float(value)

    def bool(self, key: str, default: Any = MISSING) -> Any:
        value = self._value(key, default)
        if not isinstance(value, bool) and not (value is default and default is not MISSING):
            raise self.error(key, "true or false", value)
        return value

    def str(self, key: str, default: Any = MISSING, *, choices: Sequence[str] | None = None) -> Any:
        value = self._value(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, str) or (choices is not None and value not in choices):
            if choices is not None:
                if isinstance(value, str):
                    raise ModelError(f"{self.source}: unsupported {self.name(key)} {show(value)} "
                                     f"(supported: {', '.join(choices)})")
                raise self.error(key, "one of " + ", ".join(map(show, choices)), value)
            raise self.error(key, "a string", value)
        return value

    def object(self, key: str, default: Any = MISSING) -> "Fields | None":
        """A nested object as Fields; None when absent (and default is None)."""
        value = self._value(key, default)
        if value is None:
            return None
        return Fields(value, self.source, self.name(key))

    # -- lists -------------------------------------------------------------------------
    def token_ids(self, key: str) -> list[int]:
        """An id or a list of ids (stop tokens); [] when absent."""
        value = self.raw.get(key)
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        if not items and isinstance(value, list):
            return []
        if len(items) > 10_000 or not all(_is_int(v) and 0 <= v <= MAX_TOKEN_ID for v in items):
            raise self.error(key, f"a token id (an integer from 0 to {MAX_TOKEN_ID}) or a list of them", value)
        return list(items)

    def pinpoints(self, key: str, default: Any = MISSING) -> Any:
        """anyres candidates: a non-empty list of [height, width] pairs of positive pixels."""
        value = self._value(key, default)
        if value is default and default is not MISSING:
            return value
        return pinpoint_pairs(value, lambda: self.error(
            key, f"a list of [height, width] pairs of integers from 1 to {MAX_IMAGE_SIDE}", value))

    def channels(self, key: str, default: Any = MISSING, *, positive: bool = False) -> Any:
        """A per-channel (R, G, B) value: one number or a list of 1 or 3 finite numbers."""
        value = self._value(key, default)
        if value is default and default is not MISSING:
            return tuple(value)
        items = value if isinstance(value, list) else [value]
        ok = len(items) in (1, 3) and all(_is_number(v) and math.isfinite(v) for v in items)
        if ok and positive:
            ok = all(v > 0 for v in items)
        if not ok:
            kind = "positive numbers" if positive else "finite numbers"
            raise self.error(key, f"a number or a list of 3 {kind}", value)
        floats = tuple(float(v) for v in items)
        return floats * 3 if len(floats) == 1 else floats


def pinpoint_pairs(value: Any, fail) -> tuple[tuple[int, int], ...]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value or len(value) > MAX_PINPOINTS:
        raise fail()
    pairs = []
    for pair in value:
        if isinstance(pair, tuple):
            pair = list(pair)
        if not (isinstance(pair, list) and len(pair) == 2
                and all(_is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in pair)):
            raise fail()
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def check_multiple(source: str, key: str, pairs: Sequence[tuple[int, int]], tile: int) -> None:
    """anyres tiles the canvas in ``tile``-pixel squares: every side must be a multiple."""
    for h, w in pairs:
        if h % tile or w % tile:
            raise ModelError(f"{source}: {key} must list sizes that are multiples of the {tile}px tile, "
                             f"got [{h}, {w}]")


# ---------------------------------------------------------------------------------------
# generation_config.json


def check_generation_config(raw: dict, source: str) -> None:
    """The sampling settings and stop ids a checkpoint suggests (only what we read)."""
    fields = Fields(raw, source)
    sample = fields.bool("do_sample", False)
    fields.float("temperature", 1.0, lo=0, hi=1e6)
    top_p = fields.float("top_p", 1.0, lo=0, hi=1)
    if sample and top_p <= 0:
        raise fields.error("top_p", "a number greater than 0 and at most 1 when do_sample is true", top_p)
    fields.int("top_k", 0, lo=0, hi=MAX_VOCAB)
    fields.int("max_new_tokens", 512, lo=1, hi=MAX_NEW_TOKENS)
    fields.token_ids("eos_token_id")


# ---------------------------------------------------------------------------------------
# Memory


def available_ram() -> int | None:
    """Bytes of RAM the process can still use: MemAvailable (which counts reclaimable page
    cache), lowered to a cgroup v2 limit when one applies; None when unknown."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            import os

            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:  # a container's own limit (cgroup v2), when lower
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as handle:
            used = int(handle.read().strip())
        with open("/sys/fs/cgroup/memory.stat", encoding="ascii") as handle:
            for line in handle:  # page cache is reclaimed before the limit bites
                if line.startswith("file "):
                    used -= int(line.split()[1])
                    break
        if limit.isdigit():
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def gigabytes(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"
