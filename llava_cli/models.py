"""`llava models`: what is in the cache, what a model is, and removing it.

Everything here works without the network; ``pull`` is ``hub.open_checkpoint`` with
``force`` as the user asks.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import hub
from .errors import HubError, ModelError, UsageError


@dataclass
class CachedModel:
    repo_id: str
    alias: str | None
    family: str
    size: int  # bytes on disk for this revision
    commit: str
    refs: tuple[str, ...]
    complete: bool
    path: Path


def _family_title(config_path: Path) -> str | None:
    from .families import family_class_for

    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    family = family_class_for(config)
    return family.title if family is not None else None


def _scan():
    hf = hub._hf()
    try:
        return hf.scan_cache_dir()
    except hf.utils.CacheNotFound:
        return None


def cached_models() -> list[CachedModel]:
    """One row per cached revision of every repo whose config.json names a family we run."""
    cache = _scan()
    rows: list[CachedModel] = []
    if cache is None:
        return rows
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            family = _family_title(Path(revision.snapshot_path) / "config.json")
            if family is None:
                continue
            rows.append(CachedModel(
                repo_id=repo.repo_id, alias=hub.alias_for(repo.repo_id), family=family,
                size=revision.size_on_disk, commit=revision.commit_hash, refs=tuple(sorted(revision.refs)),
                complete=not hub.missing_essentials(Path(revision.snapshot_path)),
                path=Path(revision.snapshot_path)))
    rows.sort(key=lambda r: (r.repo_id.lower(), r.refs == (), r.commit))
    return rows


def table(rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces (plain text, pipe-friendly)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def list_table(rows: list[CachedModel]) -> str:
    lines = [["MODEL", "ALIAS", "FAMILY", "SIZE", "REVISION"]]
    for row in rows:
        revision = row.commit[:12] + (f" ({', '.join(row.refs)})" if row.refs else "")
        if not row.complete:
            revision += " incomplete"
        lines.append([row.repo_id, row.alias or "-", row.family, hub.format_bytes(row.size), revision])
    return table(lines)


def approx_gb(gb: float) -> str:
    """An approximate size: one decimal under 10 GB, whole GB above."""
    return f"~{gb:.1f} GB" if gb < 10 else f"~{gb:.0f} GB"


def aliases_table() -> str:
    """The built-in aliases: alias, repo, approximate size of the weights in bfloat16."""
    lines = [["ALIAS", "MODEL", "SIZE (BF16)"]]
    lines += [[alias, repo, approx_gb(hub.alias_size_gb(alias))] for alias, repo in hub.ALIASES.items()]
    return table(lines)


# ---------------------------------------------------------------------------------------
# rm


def remove(name: str) -> tuple[str, int]:
    """Delete a cached repo (or one revision of it with NAME@REV); (what, bytes freed)."""
    ref = hub.parse_ref(name)
    if ref.is_local:
        raise UsageError(f"{name} is a folder, not a cached model: llava only removes models from the "
                         f"Hugging Face cache")
    cache = _scan()
    repo = None
    if cache is not None:
        repo = next((r for r in cache.repos if r.repo_type == "model" and r.repo_id.lower() == ref.repo_id.lower()),
                    None)
    if repo is None:
        raise HubError(f"{ref.repo_id} is not in the cache ({hub.cache_dir()}); `llava models list` shows "
                       f"what is")
    revisions = list(repo.revisions)
    if "@" in ref.text:
        revisions = [r for r in revisions if r.commit_hash.startswith(ref.revision) or ref.revision in r.refs]
        if not revisions:
            raise HubError(f"revision '{ref.revision}' of {ref.repo_id} is not in the cache")
    strategy = cache.delete_revisions(*(r.commit_hash for r in revisions))
    freed = strategy.expected_freed_size
    try:
        strategy.execute()
    except OSError as exc:
        raise HubError(f"cannot delete {ref.repo_id} from {hub.cache_dir()}: {exc.strerror or exc}") from None
    return ref.display, freed


# ---------------------------------------------------------------------------------------
# info


def _count(n: int) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def local_folder(name: str) -> tuple[hub.ModelRef, Path]:
    """The folder of a local or cached model, without the network."""
    ref = hub.parse_ref(name)
    if ref.is_local:
        if not ref.folder.exists():
            raise ModelError(f"model folder not found: {ref.folder}")
        return ref, ref.folder
    folder = hub.cached_snapshot(ref)
    if folder is None:
        raise HubError(f"{ref.display} is not cached: run `llava models pull {name}` first "
                       f"(`llava models info` reads only local files)")
    return ref, folder


def info(name: str) -> list[tuple[str, str]]:
    """(label, value) lines describing a model, from its configs and safetensors headers."""
    ref, folder = local_folder(name)
    from .checkpoint import ST_NAMES, Checkpoint
    from .errors import IntegrityError
    from .families import family_for

    try:
        checkpoint = Checkpoint.open(folder)
        shards = checkpoint.verify()
    except IntegrityError as exc:
        if ref.is_local:
            raise
        raise IntegrityError(f"{exc.message} ({hub.repair_hint(ref, exc)})", path=exc.path,
                             missing=exc.missing) from None
    family = family_for(checkpoint)
    params = 0
    by_dtype: Counter = Counter()
    for shard in shards:
        for entry in checkpoint.header(shard):
            params += entry.numel
            by_dtype[ST_NAMES[entry.dtype]] += entry.end - entry.begin
    total_bytes = sum(by_dtype.values()) or 1
    dtypes = [f"{name}" if share / total_bytes > 0.995 else f"{name} ({share / total_bytes:.0%})"
              for name, share in by_dtype.most_common()]
    config_dtype = checkpoint.config.get("torch_dtype") or (checkpoint.config.get("text_config") or {}).get("torch_dtype")
    dtype = ", ".join(dtypes) or "-"
    if isinstance(config_dtype, str) and config_dtype not in by_dtype:
        dtype += f" (config.json says {config_dtype})"

    lines: list[tuple[str, str]] = []
    if ref.is_local:
        lines.append(("model", str(folder)))
    else:
        lines.append(("model", ref.repo_id + (f" ({ref.alias})" if ref.alias else "")))
        commit = folder.name
        lines.append(("revision", commit[:12] + ("" if ref.revision == commit else f" ({ref.revision})")))
        lines.append(("path", str(folder)))
    text_type = (family.config.get("text_config") or {}).get("model_type")
    vision_type = family.vision_config.kind.replace("_vision_model", "")
    lines += [
        ("family", f"{family.title} ({f'{text_type} decoder, ' if text_type else ''}{vision_type} vision)"),
        ("parameters", f"{_count(params)} ({params:,})"),
        ("dtype", dtype),
        ("weights", f"{hub.format_bytes(sum(s.stat().st_size for s in shards))} in {len(shards)} "
                    f"file{'s' if len(shards) != 1 else ''}"),
        ("context length", f"{family.text_config.max_position_embeddings} tokens"),
        ("tokens per image", _image_tokens(family)),
        ("tokens per frame", _frame_tokens(family)),
        ("frames per video", _frames(family)),
    ]
    return lines


def _image_tokens(family) -> str:
    tile = family.vision_config.image_size
    image_tokens = getattr(family, "image_tokens", None)
    if image_tokens is None:  # one fixed view per image
        return f"{family.tokens_per_view} (one {tile}×{tile} view)"
    typical = image_tokens(tile, tile)
    most = max(image_tokens(h, w) for h, w in family.pinpoints)
    return f"{typical} for a {tile}×{tile} image, up to {most} for larger ones (anyres tiling)"


def _frame_tokens(family) -> str:
    try:
        one, two = family.video_tokens(1), family.video_tokens(2)
    except ModelError:
        return "- (images only)"
    per_frame, extra = two - one, 2 * one - two
    return f"{per_frame}" + (f" (+{extra} per video)" if extra else "")


def _frames(family) -> str:
    try:
        family.video_tokens(1)
    except ModelError:
        return "- (images only)"
    trained = f"trained on {family.trained_frames}" if family.trained_frames else "any count"
    default = family.frames_for(None)
    return f"{default} by default ({trained})"
