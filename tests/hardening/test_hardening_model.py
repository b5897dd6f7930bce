"""Adversarial corpus, part A: hostile MODEL DATA through the real `llava` CLI.

A generated, seeded corpus (like a fuzzer's) of damaged checkpoints: for every config
field llava-cli reads, values of the wrong type or out of range (negative, zero, huge,
1e300, 2**70, NaN and Infinity as raw JSON tokens, strings, lists, objects, booleans,
null); structural damage to every JSON file (a list, truncated, nested 100,000 deep,
empty, binary, not UTF-8, a folder, a FIFO, /dev/zero, a 100 MB file); safetensors
headers whose dtype, shape and offsets contradict each other or the file; broken weight
indexes; NaN and infinite weights; sampling settings and seeds out of range; a model too
large for the machine's memory.

Every case runs `llava ask` in its own process (tests/support/adversarial.py) and must end in an
answer or in exactly one ``llava: error:`` line: never a traceback, an "internal error",
a hang or runaway memory. Cases marked ``error`` must fail (most before torch is even
imported); ``either`` cases may legitimately answer. The cases run a few at a time in a
module fixture (they are independent processes); each is still its own test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from support.adversarial import assert_answer_or_clean_error, assert_clean_error, run_case
from support.cli import clean_env

SEED = 20240612
NAN, INF = float("nan"), float("inf")
WORKERS = 3


# ---------------------------------------------------------------------------------------
# Helpers that damage a copy of a checkpoint


def copy_model(src: Path, dst: Path) -> Path:
    """Copy the small files; hard-link (else symlink) the shards, which are never written
    in place (``write_shard`` replaces a file, it never opens one for writing)."""
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target)
        elif entry.suffix == ".safetensors":
            try:
                os.link(entry, target)
            except OSError:
                target.symlink_to(entry)
        else:
            shutil.copy(entry, target)
    return dst


def load(path: Path):
    return json.loads(path.read_text())


def save(path: Path, data) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, allow_nan=True))  # NaN / Infinity as raw JSON tokens


def set_path(data: dict, keys: tuple, value) -> None:
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def edit_json(name: str, keys: tuple, value) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data = load(folder / name)
        set_path(data, keys, value)
        save(folder / name, data)
    return apply


def read_shard(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_shard(path: Path, header, body: bytes, *, length: int | None = None, tail: bytes = b"") -> None:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.unlink()  # a hard link to the shared shard: replace it, never write through it
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + body + tail)


def edit_header(mutate: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        shard = folder / "model.safetensors"
        header, body = read_shard(shard)
        mutate(header)
        write_shard(shard, header, body)
    return apply


def _largest(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0])


def _second(header: dict) -> str:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return names[1]


def entry_edit(which: Callable[[dict], str], key: str, value) -> Callable[[dict], None]:
    def mutate(header: dict) -> None:
        entry = header[which(header)]
        if value is KeyError:
            del entry[key]
        else:
            entry[key] = value(entry) if callable(value) else value
    return mutate


def fill_tensor(name: str, value: float) -> Callable[[Path], None]:
    """Overwrite one float32 tensor's data with ``value`` (NaN, inf)."""
    def apply(folder: Path) -> None:
        shard = folder / "model.safetensors"
        header, body = read_shard(shard)
        begin, end = header[name]["data_offsets"]
        filler = struct.pack("<f", value) * ((end - begin) // 4)
        write_shard(shard, header, body[:begin] + filler + body[end:])
    return apply


def replace_file(name: str, kind: str) -> Callable[[Path], None]:
    """Structural damage to a whole JSON file."""
    def apply(folder: Path) -> None:
        path = folder / name
        original = path.read_text() if path.is_file() else "{}"
        if path.is_symlink() or path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "devzero":
            path.symlink_to("/dev/zero")
        elif kind == "huge":  # 100 MB of zeros (sparse: no disk)
            with path.open("wb") as handle:
                handle.truncate(100 * 2**20)
        elif kind == "binary":
            path.write_bytes(random.Random(name).randbytes(3000))
        elif kind == "latin1":
            path.write_bytes('{"model_type": "caf\xe9"}'.encode("latin-1"))
        else:
            text = {"list": "[1, 2, 3]", "truncated": original[: len(original) // 2], "empty": "",
                    "null": "null", "nan": "NaN", "string": '"config"',
                    "deep": "[" * 100_000 + "]" * 100_000,
                    "deep_value": '{"text_config": ' + "[" * 100_000 + "]" * 100_000 + "}"}[kind]
            path.write_text(text)
    return apply


def sparse_giant_shard(folder: Path) -> None:
    """A shard whose header is consistent with its (sparse) length and describes ~1 TB of
    float32 weights: only the memory estimate can refuse it."""
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    rows, cols = 2**18, 2**20  # 2**38 float32 = 1 TiB
    header = {"language_model.model.embed_tokens.weight": {"dtype": "F32", "shape": [rows, cols],
                                                           "data_offsets": [0, rows * cols * 4]}}
    encoded = json.dumps(header).encode()
    path = folder / "model.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + rows * cols * 4)


def write_index(weight_map_of: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        header, _ = read_shard(folder / "model.safetensors")
        names = {k: "model.safetensors" for k in header if k != "__metadata__"}
        save(folder / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map_of(names)})
    return apply


# ---------------------------------------------------------------------------------------
# The corpus


@dataclass
class Case:
    id: str
    build: Callable[[Path], None] | None
    base: str = "next"  # which tiny checkpoint is damaged: "next" (NeXT-Video) or "ov" (OneVision)
    expect: str = "error"  # "error" | "either" (an answer is legitimate too)
    needles: tuple = ()
    extra: list = field(default_factory=list)  # more CLI arguments


def _show(value) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 24 else text[:23] + "…"


HOSTILE = {
    "size": [-5, 0, 10**9, 1e300, 2**70, "64", [64], {"v": 64}, True, 3.5, NAN, INF, None],
    "float": [-1.0, 0, 1e300, "1e4", NAN, -INF, INF, [1.0], {}, False],
    "string": [5, [], {}, "bogus", True, 1e300, None],
    "bool": ["false", 1, [], {}, 0.5, "yes"],
    "object": ["abc", 5, [], [1, 2], True, 1e300, ""],
    "token": ["401", -1, 10**12, 401.5, [["2"]], {}, True, NAN],
    "layer": ["-2", 10**9, -10**9, 1.5, [-2, -1], NAN, 99],
    "pinpoints": [[], [[0, 0]], [["a", "b"]], [[336]], "336x672", [[1e300, 336]], [[336, -672]], [[100, 100]],
                  [[336, 672, 1]], {"a": 1}, 0, [[10**9, 10**9]]],
    "list": [5, {"a": 1}, [5, None], "LlavaNextVideoForConditionalGeneration"],
    "pre_size": [0, -1, {"shortest_edge": 0}, {"height": 336}, "336", [336], {"shortest_edge": 1e300},
                 {"shortest_edge": "336"}, {}, 10**9, True],
    "crop": [{"height": 0}, {}, "x", -5, {"height": 1e300}, [336], {"height": 100, "width": 100}],
    "channels": ["x", [1, 2], [NAN, 0, 0], [], {}, [INF, 0, 0], [[0.5]]],
    "std": [[0, 0, 0], 0, [-1, 1, 1], ["a"], [INF], NAN, [0.5, 0, 0.5]],
    "resample": [99, -1, "bicubic", 3.5, True, [3], 6],
}

CONFIG_FIELDS = [
    (("text_config", "hidden_size"), "size"), (("text_config", "intermediate_size"), "size"),
    (("text_config", "num_hidden_layers"), "size"), (("text_config", "num_attention_heads"), "size"),
    (("text_config", "num_key_value_heads"), "size"), (("text_config", "head_dim"), "size"),
    (("text_config", "vocab_size"), "size"), (("text_config", "max_position_embeddings"), "size"),
    (("text_config", "rms_norm_eps"), "float"), (("text_config", "rope_theta"), "float"),
    (("text_config", "rope_scaling", "factor"), "float"), (("text_config", "rope_scaling"), "object"),
    (("text_config", "rope_scaling", "rope_type"), "string"), (("text_config", "model_type"), "string"),
    (("text_config", "attention_bias"), "bool"), (("text_config", "eos_token_id"), "token"),
    (("text_config", "sliding_window"), "size"), (("text_config",), "object"), (("vision_config",), "object"),
    (("vision_config", "hidden_size"), "size"), (("vision_config", "intermediate_size"), "size"),
    (("vision_config", "num_hidden_layers"), "size"), (("vision_config", "num_attention_heads"), "size"),
    (("vision_config", "image_size"), "size"), (("vision_config", "patch_size"), "size"),
    (("vision_config", "layer_norm_eps"), "float"), (("vision_config", "hidden_act"), "string"),
    (("vision_config", "model_type"), "string"), (("image_token_index",), "token"),
    (("video_token_index",), "token"), (("vision_feature_layer",), "layer"),
    (("vision_feature_select_strategy",), "string"), (("projector_hidden_act",), "string"),
    (("multimodal_projector_bias",), "bool"), (("image_grid_pinpoints",), "pinpoints"),
    (("spatial_pool_stride",), "size"), (("spatial_pool_mode",), "string"), (("tie_word_embeddings",), "bool"),
    (("eos_token_id",), "token"), (("model_type",), "string"), (("architectures",), "list"),
]

# The named examples: always in the corpus, whatever the seed picks.
NAMED = [
    (("text_config",), "abc"), (("text_config", "hidden_size"), -5), (("text_config", "hidden_size"), 1e300),
    (("text_config", "num_hidden_layers"), 10**9), (("vision_config", "patch_size"), 0),
    (("spatial_pool_stride",), 0), (("image_grid_pinpoints",), [[0, 0]]), (("image_grid_pinpoints",), [["a", "b"]]),
    (("text_config", "rope_scaling"), [1, 2]), (("image_token_index",), "401"), (("video_token_index",), "400"),
    (("text_config", "rope_theta"), -1.0),
]

# (field, value) pairs that are valid, never read, or mean "the default", so an answer is
# fine (a null size means the class default, 7B sizes the tiny weights then contradict:
# an error at load, but a legitimate one either way).
_EITHER_PAIRS = [
    (("text_config", "max_position_embeddings"), 10**9),  # a long context is legitimate
    (("text_config", "sliding_window"), 10**9),
    *((("model_type",), v) for v in HOSTILE["string"]),  # the architectures decide
    *((("architectures",), v) for v in HOSTILE["list"]),  # model_type decides
    *((keys, None) for keys, _ in CONFIG_FIELDS),
]


def _key(keys: tuple, value) -> tuple:
    return keys, json.dumps(value, allow_nan=True, sort_keys=True)


EITHER = {_key(k, v) for k, v in _EITHER_PAIRS}

PRE_FIELDS = [
    (("size",), "pre_size"), (("crop_size",), "crop"), (("image_mean",), "channels"), (("image_std",), "std"),
    (("rescale_factor",), "float"), (("resample",), "resample"), (("do_center_crop",), "bool"),
    (("image_grid_pinpoints",), "pinpoints"),
]

GENERATION = {
    "do_sample": ["yes", 1, [], NAN],
    "temperature": ["hot", -1, NAN, 1e300, [], INF],
    "top_p": [2, -0.5, "x", NAN],
    "top_k": [-1, "5", 1.5, 10**12],
    "max_new_tokens": [0, -3, "512", 1e300, 2**70],
    "eos_token_id": ["2", [-1], [["2"]], {}, 1e300, True],
}


def _pick(rng: random.Random, values: list, k: int) -> list:
    return rng.sample(values, min(k, len(values)))


def corpus() -> list[Case]:
    rng = random.Random(SEED)
    cases: list[Case] = []
    seen: set[str] = set()

    def add(case: Case) -> None:
        if case.id not in seen:
            seen.add(case.id)
            cases.append(case)

    # 1. config.json fields: the named examples, then a seeded pick per field.
    picks = list(NAMED)
    for keys, kind in CONFIG_FIELDS:
        picks += [(keys, v) for v in _pick(rng, HOSTILE[kind], 2)]
    for keys, value in picks:
        expect = "either" if _key(keys, value) in EITHER else "error"
        add(Case(f"config:{'.'.join(keys)}={_show(value)}", edit_json("config.json", keys, value), expect=expect))

    # 2. preprocessor_config.json fields
    for keys, kind in PRE_FIELDS:
        for value in _pick(rng, HOSTILE[kind], 3):
            add(Case(f"preprocessor:{'.'.join(keys)}={_show(value)}",
                     edit_json("preprocessor_config.json", keys, value)))
    for value in ([0, 0, 0], 0):  # the image_std 0: an error, not empty answers
        add(Case(f"preprocessor:image_std={_show(value)}", edit_json("preprocessor_config.json", ("image_std",), value),
                 needles=("image_std",)))
    add(Case("preprocessor:size=0", edit_json("preprocessor_config.json", ("size",), 0), needles=("size",)))
    add(Case("preprocessor:resample=99", edit_json("preprocessor_config.json", ("resample",), 99),
             needles=("resample",)))

    # 3. generation_config.json fields
    for key, values in GENERATION.items():
        for value in _pick(rng, values, 3):
            add(Case(f"generation:{key}={_show(value)}", edit_json("generation_config.json", (key,), value)))
    add(Case("generation:temperature='hot'", edit_json("generation_config.json", ("temperature",), "hot"),
             needles=("temperature",)))
    add(Case("generation:do_sample+top_p=0",
             lambda f: (edit_json("generation_config.json", ("do_sample",), True)(f),
                        edit_json("generation_config.json", ("top_p",), 0)(f))))
    add(Case("generation:sampling-ok",
             lambda f: (edit_json("generation_config.json", ("do_sample",), True)(f),
                        edit_json("generation_config.json", ("temperature",), 0.7)(f)), expect="either"))

    # 4. whole files damaged
    kinds = ["list", "truncated", "deep", "deep_value", "empty", "binary", "latin1", "directory", "fifo",
             "devzero", "huge", "null", "nan", "string"]
    for name, chosen in (("config.json", kinds),
                         ("generation_config.json", _pick(rng, kinds, 7)),
                         ("preprocessor_config.json", _pick(rng, kinds, 7)),
                         ("processor_config.json", _pick(rng, kinds, 4))):
        for kind in chosen:
            add(Case(f"file:{name}:{kind}", replace_file(name, kind)))

    # 5. safetensors headers
    shape_of = lambda e: e["shape"]  # noqa: E731
    header_cases = {
        "dtype F16 (byte length contradicts)": entry_edit(_largest, "dtype", "F16"),
        "dtype F8_E4M3 (unsupported)": entry_edit(_largest, "dtype", "F8_E4M3"),
        "dtype Q4 (unknown)": entry_edit(_largest, "dtype", "Q4"),
        "dtype 5": entry_edit(_largest, "dtype", 5),
        "dtype missing": entry_edit(_largest, "dtype", KeyError),
        "dtype I32 (same bytes, not float)": entry_edit(_largest, "dtype", "I32"),
        "shape doubled": entry_edit(_largest, "shape", lambda e: [e["shape"][0] * 2, *e["shape"][1:]]),
        "shape negative": entry_edit(_largest, "shape", lambda e: [-e["shape"][0], *e["shape"][1:]]),
        "shape strings": entry_edit(_largest, "shape", lambda e: [str(d) for d in e["shape"]]),
        "shape float": entry_edit(_largest, "shape", lambda e: [float(d) for d in e["shape"]]),
        "shape 1e300": entry_edit(_largest, "shape", [1e300]),
        "shape a string": entry_edit(_largest, "shape", "64"),
        "shape nested": entry_edit(_largest, "shape", lambda e: [e["shape"]]),
        "shape missing": entry_edit(_largest, "shape", KeyError),
        "shape transposed (consistent bytes)": entry_edit(_largest, "shape", lambda e: list(reversed(e["shape"]))),
        "offsets negative": entry_edit(_second, "data_offsets", lambda e: [-4, e["data_offsets"][1] - 4]),
        "offsets reversed": entry_edit(_second, "data_offsets", lambda e: list(reversed(e["data_offsets"]))),
        "offsets one": entry_edit(_second, "data_offsets", lambda e: e["data_offsets"][:1]),
        "offsets strings": entry_edit(_second, "data_offsets", lambda e: [str(o) for o in e["data_offsets"]]),
        "offsets 2**70": entry_edit(_second, "data_offsets", [2**70, 2**70 + 4]),
        "offsets past the end": entry_edit(_largest, "data_offsets",
                                           lambda e: [o + 10**6 for o in e["data_offsets"]]),
        "offsets overlapping": entry_edit(_second, "data_offsets", lambda e: [o - 4 for o in e["data_offsets"]]),
        "offsets missing": entry_edit(_second, "data_offsets", KeyError),
        "entry a string": lambda h: h.__setitem__(_largest(h), "F32"),
        "entry a list": lambda h: h.__setitem__(_largest(h), [1, 2]),
        "metadata a list": lambda h: h.__setitem__("__metadata__", [1, 2]),
        "tensor renamed": lambda h: h.__setitem__("mystery.weight", h.pop(_largest(h))),
    }
    for label, mutate in header_cases.items():
        expect = "either" if label == "metadata a list" else "error"
        add(Case(f"header:{label}", edit_header(mutate), expect=expect))

    def raw_shard(label: str, make: Callable[[dict, bytes, Path], None]) -> None:
        def apply(folder: Path) -> None:
            shard = folder / "model.safetensors"
            header, body = read_shard(shard)
            make(header, body, shard)
        add(Case(f"shard:{label}", apply))

    raw_shard("length 2**63", lambda h, b, p: write_shard(p, h, b, length=2**63))
    raw_shard("length 0", lambda h, b, p: write_shard(p, h, b, length=0))
    raw_shard("length past the file", lambda h, b, p: write_shard(p, h, b, length=10**7))
    raw_shard("header a list", lambda h, b, p: write_shard(p, b"[1, 2]", b))
    raw_shard("header truncated", lambda h, b, p: write_shard(p, json.dumps(h).encode()[:100], b))
    raw_shard("header deeply nested", lambda h, b, p: write_shard(p, b"[" * 50_000 + b"]" * 50_000, b))
    raw_shard("header not utf-8", lambda h, b, p: write_shard(p, b'{"\xff": 1}', b))
    raw_shard("data truncated", lambda h, b, p: write_shard(p, h, b[: len(b) // 2]))
    raw_shard("trailing garbage", lambda h, b, p: write_shard(p, h, b, tail=b"\0" * 4096))
    raw_shard("four bytes", lambda h, b, p: (p.unlink(), p.write_bytes(b"\x10\0\0\0")))
    raw_shard("empty", lambda h, b, p: (p.unlink(), p.write_bytes(b"")))
    raw_shard("a folder", lambda h, b, p: (p.unlink(), p.mkdir()))
    raw_shard("a fifo", lambda h, b, p: (p.unlink(), os.mkfifo(p)))

    # 6. model.safetensors.index.json
    index_cases = {
        "weight_map a list": lambda names: list(names),
        "weight_map a string": lambda names: "model.safetensors",
        "weight_map null": lambda names: None,
        "weight_map empty": lambda names: {},
        "weight_map 5": lambda names: 5,
        "missing shard": lambda names: {**names, "x.weight": "model-00002-of-00002.safetensors"},
        "tensor not in its shard": lambda names: {**names, "ghost.weight": "model.safetensors"},
        "shard outside the folder": lambda names: {k: "../model.safetensors" for k in names},
        "shard an absolute path": lambda names: {k: "/etc/passwd" for k in names},
        "shard a number": lambda names: {k: 5 for k in names},
        "shard a list": lambda names: {k: ["model.safetensors"] for k in names},
        "valid": lambda names: names,
    }
    for label, make in index_cases.items():
        add(Case(f"index:{label}", write_index(make), expect="either" if label == "valid" else "error"))
    for kind in ("list", "truncated", "deep", "fifo"):
        add(Case(f"index-file:{kind}", lambda f, kind=kind: (write_index(lambda n: n)(f),
                                                            replace_file("model.safetensors.index.json", kind)(f))))

    # 7. numbers at run time: NaN/inf weights, seeds, temperatures, memory
    add(Case("weights:NaN lm_head, greedy", fill_tensor("language_model.lm_head.weight", NAN),
             needles=("NaN logits",)))
    add(Case("weights:NaN lm_head, sampling", fill_tensor("language_model.lm_head.weight", NAN),
             needles=("NaN logits",), extra=["--temperature", "0.7", "--seed", "1"]))
    add(Case("weights:NaN final norm, sampling", fill_tensor("language_model.model.norm.weight", NAN),
             needles=("NaN logits",), extra=["--temperature", "1.0", "--top-p", "0.9", "--seed", "2"]))
    add(Case("weights:inf lm_head", fill_tensor("language_model.lm_head.weight", INF), needles=("logits",)))
    add(Case("run:seed 2**70", None, needles=("--seed",), extra=["--temperature", "0.7", "--seed", str(2**70)]))
    add(Case("run:seed -1", None, needles=("--seed",), extra=["--temperature", "0.7", "--seed", "-1"]))
    add(Case("run:temperature nan", None, extra=["--temperature", "nan"]))
    add(Case("run:temperature 1e-30", None, expect="either", extra=["--temperature", "1e-30", "--seed", "3"]))
    add(Case("run:memory: 1 TB of float32 weights", sparse_giant_shard, needles=("needs ~", "available")))

    # 8. OneVision-only fields: vision_aspect_ratio and video_processor/
    for value in ("anyres_max_0", "anyres_max_x", 9, "anyres_max_99999999", "anyres_max_\u0663", None):
        add(Case(f"ov:vision_aspect_ratio={_show(value)}", edit_json("config.json", ("vision_aspect_ratio",), value),
                 base="ov", expect="either" if value is None else "error"))
    video = "video_processor/preprocessor_config.json"
    for keys, value in ((("size",), 0), (("size",), []), (("image_std",), 0), (("size",), {"height": 384, "width": 200}),
                        (("resample",), 42), (("rescale_factor",), NAN)):
        add(Case(f"ov:{video}:{'.'.join(keys)}={_show(value)}", edit_json(video, keys, value), base="ov"))
    add(Case(f"ov:{video}:truncated", replace_file(video, "truncated"), base="ov"))
    add(Case("ov:text_config.model_type=gpt2", edit_json("config.json", ("text_config", "model_type"), "gpt2"),
             base="ov"))
    add(Case("ov:vision_config.model_type=vit", edit_json("config.json", ("vision_config", "model_type"), "vit"),
             base="ov"))
    add(Case("ov:text_config.tie_word_embeddings='yes'",
             edit_json("config.json", ("text_config", "tie_word_embeddings"), "yes"), base="ov"))
    return cases


CASES = corpus()


# ---------------------------------------------------------------------------------------
# Running


@pytest.fixture(scope="module")
def bases(tiny_model, tmp_path_factory) -> dict[str, Path]:
    from support.checkpoints.onevision import make_onevision

    ov = make_onevision(tmp_path_factory.mktemp("hardening-ov") / "tiny-ov")
    if not (ov / "video_processor" / "preprocessor_config.json").is_file():
        # the OneVision video settings' own file, as the hub repos ship it
        save(ov / "video_processor" / "preprocessor_config.json", load(ov / "preprocessor_config.json"))
    return {"next": tiny_model, "ov": ov}


@pytest.fixture(scope="module")
def outcomes(request, bases, tmp_path_factory) -> dict:
    """Every selected case's outcome, run WORKERS at a time (each is its own process)."""
    root = tmp_path_factory.mktemp("hardening")
    env = clean_env(root, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params}

    def run_one(index_case):
        index, case = index_case
        folder = copy_model(bases[case.base], root / f"case-{index:03d}")
        if case.build is not None:
            case.build(folder)
        args = ["ask", "-m", str(folder), "hi", "--max-new-tokens", "4", *case.extra]
        return case.id, run_case(args, env)

    selected = [(i, c) for i, c in enumerate(CASES) if c.id in wanted]
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(pool.map(run_one, selected))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_model_data(case: Case, outcomes):
    outcome = outcomes[case.id]
    if case.expect == "either":
        assert_answer_or_clean_error(outcome)
    else:
        assert_clean_error(outcome, *case.needles)


def test_corpus_size_and_classes():
    """The corpus is as large and as varied as the note says."""
    assert 150 <= len(CASES) <= 300, len(CASES)
    classes = {c.id.split(":")[0] for c in CASES}
    assert {"config", "preprocessor", "generation", "file", "header", "shard", "index", "weights", "run", "ov"} <= classes
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------------------
# In-process checks of the numeric guards (no subprocess, no checkpoint)


def test_sampler_refuses_non_finite_logits():
    import torch

    from llava_cli.generate import NonFiniteLogits, Sampler, Sampling

    greedy = Sampler(Sampling(), torch.device("cpu"))
    sampled = Sampler(Sampling(temperature=0.8, top_p=0.9, top_k=5, seed=1), torch.device("cpu"))
    for sampler in (greedy, sampled):
        for bad in (torch.tensor([0.0, float("nan"), 1.0]), torch.tensor([0.0, float("inf"), 1.0]),
                    torch.full((3,), float("-inf"))):
            with pytest.raises(NonFiniteLogits, match="logits: its weights may be corrupt"):
                sampler(bad)
        assert sampler(torch.tensor([float("-inf"), 5.0, float("-inf")])) == 1  # masked scores are fine


def test_tiny_temperature_picks_the_top_token_instead_of_overflowing():
    import torch

    from llava_cli.generate import Sampler, Sampling

    sampler = Sampler(Sampling(temperature=1e-30, seed=0), torch.device("cpu"))
    assert sampler(torch.tensor([1.0, 3.0, 2.0])) == 1


@pytest.mark.parametrize("seed", [2**64, 2**70, -1])
def test_seed_out_of_range_is_a_usage_error(seed):
    from llava_cli.errors import UsageError
    from llava_cli.generate import Sampling

    with pytest.raises(UsageError, match="--seed"):
        Sampling.resolve({}, temperature=0.7, seed=seed)
    assert Sampling.resolve({}, temperature=0.7, seed=2**64 - 1).seed == 2**64 - 1


def test_weight_bytes_follow_dtype_and_quantization(tiny_model):
    import torch

    from llava_cli.checkpoint import Checkpoint
    from llava_cli.engine import weight_bytes

    checkpoint = Checkpoint.open(tiny_model)
    shards = checkpoint.verify()
    stored = sum(e.end - e.begin for s in shards for e in checkpoint.header(s))  # float32 on disk
    assert weight_bytes(checkpoint, shards, torch.float32) == stored
    assert weight_bytes(checkpoint, shards, torch.bfloat16) == stored // 2
    assert weight_bytes(checkpoint, shards, torch.bfloat16, "4bit") < stored // 2
