"""The JSON that `llava ask --json` and `llava batch` print, field by field.

One table for the code's contract, the man page (scripts/gen_docs.py renders it) and the
tests (which check every field's presence and type against it). Types are JSON's:
string, integer, number, boolean, array, object, and "|null" where a field may be null.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # e.g. "string", "integer|null", "array of integers"
    help: str


TIMINGS_FIELDS: tuple[Field, ...] = (
    Field("load_s", "number", "seconds to load the model (ask only)"),
    Field("media_s", "number", "seconds to decode the media files and sample their frames"),
    Field("encode_s", "number", "seconds in the vision tower and projector"),
    Field("prefill_s", "number", "seconds from the start of the prompt's forward pass (in batch, its "
          "admission to the generation core) to the first answer token"),
    Field("decode_s", "number", "seconds for the answer tokens after the first"),
    Field("tokens_per_s", "number|null", "answer tokens after the first per second of decode_s; null with fewer "
                                         "than two answer tokens"),
)

MEDIA_FIELDS: tuple[Field, ...] = (
    Field("path", "string", "the file or URL as given"),
    Field("kind", "string", "\"image\" or \"video\""),
    Field("frames", "array of integers", "the frames used, as indices into the video in presentation order "
                                         "(an image: [0])"),
    Field("timestamps", "array of numbers", "each frame's time in seconds from the first frame (an image: [0.0])"),
)

ASK_FIELDS: tuple[Field, ...] = (
    Field("answer", "string", "the answer, as it would have been printed"),
    Field("model", "string", "the model: Hub repo (with @revision when not main) or folder"),
    Field("family", "string", "the checkpoint family, e.g. llava_onevision, llava_next_video"),
    Field("media", "array of objects", "one object per MEDIA argument, in order; fields below"),
    Field("prompt_tokens", "integer", "tokens in the prompt, media placeholders expanded"),
    Field("answer_tokens", "integer", "tokens in the answer (the stop token not counted)"),
    Field("stop_reason", "string", "\"stop\" (the model ended its turn) or \"length\" (--max-new-tokens or the "
                                   "context was reached)"),
    Field("timings", "object", "fields below"),
)

BATCH_FIELDS: tuple[Field, ...] = (
    Field("path", "string", "the input as given, or as found in a folder or read from standard input"),
    Field("question", "string", "the question"),
    Field("answer", "string|null", "the answer; null when the input failed"),
    Field("error", "string|null", "why the input failed (one line); null when it was answered"),
    Field("kind", "string|null", "\"image\" or \"video\"; null when the file could not be decoded"),
    Field("frames", "array of integers", "the frames used (see ask's media); [] when the file could not be "
                                         "decoded"),
    Field("timestamps", "array of numbers", "their times in seconds; [] when the file could not be decoded"),
    Field("model", "string", "the model, as in ask"),
    Field("prompt_tokens", "integer|null", "tokens in the prompt; null on an error line"),
    Field("answer_tokens", "integer|null", "tokens in the answer; null on an error line"),
    Field("timings", "object|null", "as in ask, without load_s; media_s and encode_s are 0 on the second and "
                                    "later questions about one input, whose decoding and encoding are reused; "
                                    "null on an error line"),
)
BATCH_TIMINGS_FIELDS = tuple(f for f in TIMINGS_FIELDS if f.name != "load_s")

_PYTHON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
                 "null": type(None)}


def check(value: dict, fields: tuple[Field, ...]) -> list[str]:
    """Problems with ``value`` against ``fields``: missing, extra or mistyped keys."""
    problems = [f"missing {f.name}" for f in fields if f.name not in value]
    known = {f.name for f in fields}
    problems += [f"undocumented {name}" for name in value if name not in known]
    for field in fields:
        if field.name in value and not _matches(value[field.name], field.type):
            problems.append(f"{field.name}={value[field.name]!r} is not {field.type}")
    return problems


def _matches(value: object, type_text: str) -> bool:
    for option in type_text.split("|"):
        if option.startswith("array"):
            if not isinstance(value, list):
                continue
            item = option.removeprefix("array of ").rstrip("s") if " of " in option else None
            if item in (None, "object"):
                if item is None or all(isinstance(v, dict) for v in value):
                    return True
                continue
            if all(_matches(v, item) for v in value):
                return True
            continue
        expected = _PYTHON_TYPES[option]
        if option in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, expected):
            return True
    return False


def media_record(media, path: str | None = None) -> dict:
    """One medium's MEDIA_FIELDS: what ``llava ask --json`` lists, ``llava batch`` puts on
    each line and chat's ``/save`` writes. ``path`` replaces the source as given."""
    return {"path": media.source if path is None else path, "kind": media.kind,
            "frames": [int(i) for i in media.frame_indices],
            "timestamps": [round(float(t), 6) for t in media.timestamps]}

