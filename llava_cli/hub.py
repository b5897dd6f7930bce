"""Model references → local snapshot folders, through the shared Hugging Face cache.

A reference is one of:

* a local folder: an existing directory, or anything that starts with ``.``, ``/`` or ``~``;
* an alias from ``ALIASES`` (``ov-7b``), optionally with ``@revision``;
* a Hub repo ``org/name``, optionally with ``@revision`` (a branch, tag or commit hash).

Hub models are downloaded with ``huggingface_hub.snapshot_download`` into the standard
cache (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub), in the
layout transformers uses, so a checkpoint either tool fetched is reused by the other.
``HF_TOKEN``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read by huggingface_hub itself.
Only the files inference needs are fetched (``ALLOW_PATTERNS``).

When the network is used:

* offline (``--offline`` or ``HF_HUB_OFFLINE=1``): never; the cached snapshot of the
  revision is used, or the error says it is not cached;
* a revision that is a full commit hash: not at all once that snapshot is cached (a
  commit cannot change);
* otherwise one metadata request lists the repo's files at the revision; files already
  cached are not requested again, so a cached model costs that one request and no file
  download. A branch that moved on the Hub is brought up to date, as ``pull`` would. When
  that request cannot reach the Hub (connection refused, DNS failure, timeout) or the Hub
  fails (5xx), a model whose revision is cached runs at that revision, after one notice
  naming it (``fallback``, on by default; ``--force`` turns it off); any other answer
  (401, 403, 404, 429) stays an error.

Downloads resume. huggingface_hub before 1.18 writes each file to
``blobs/<etag>.incomplete`` and resumes it with a Range request on the next run; 1.18 and
later resume a dropped connection within the run, and the next run fetches again only the
files not finished. Only a complete file is moved into place. Before anything is built,
every model (cached or local) is checked: ``Checkpoint.verify`` parses each shard's header
and checks its length and the index.

huggingface_hub 0.24 to 2.x are supported: 1.0 moved from requests to httpx (2.x: httpx2),
so the error mapping below matches the HTTP libraries' exceptions by class name.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable

from .errors import HubError, IntegrityError, ModelError, UsageError

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"

# alias → (Hub repo, published parameter count in billions: the model page's "Model size").
# `llava models list --aliases` shows the bf16 weights' approximate size from the count.
ALIAS_TABLE: dict[str, tuple[str, float]] = {
    # LLaVA-OneVision (Qwen2): "ov" = the final OneVision stage, "si" = single-image stage
    "ov-0.5b": ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", 0.894),
    "ov-7b": ("llava-hf/llava-onevision-qwen2-7b-ov-hf", 8.03),
    "ov-72b": ("llava-hf/llava-onevision-qwen2-72b-ov-hf", 73.2),
    "ov-0.5b-si": ("llava-hf/llava-onevision-qwen2-0.5b-si-hf", 0.894),
    "ov-7b-si": ("llava-hf/llava-onevision-qwen2-7b-si-hf", 8.03),
    "ov-chat": ("llava-hf/llava-onevision-qwen2-7b-ov-chat-hf", 8.03),
    # LLaVA-Video-7B-Qwen2 (the OneVision-7B network, video-tuned) converted to the OneVision
    # class by Isotr0py (hub tags llava_onevision, with a video_processor/); no llava-hf
    # conversion exists. Count: lmms-lab/LLaVA-Video-7B-Qwen2's bf16 shards, 16.06 GB. Whether
    # its config kept add_time_instruction is unchecked: --time-instruction turns it on.
    "llava-video-7b": ("Isotr0py/LLaVA-Video-7B-Qwen2-hf", 8.03),
    # LLaVA-Interleave (LLaVA-1.5 architecture, SigLIP + Qwen1.5), multi-image
    "interleave-0.5b": ("llava-hf/llava-interleave-qwen-0.5b-hf", 0.865),
    "interleave-7b": ("llava-hf/llava-interleave-qwen-7b-hf", 8.14),
    # LLaVA-NeXT-Video
    "next-video-7b": ("llava-hf/LLaVA-NeXT-Video-7B-hf", 7.06),
    "next-video-7b-dpo": ("llava-hf/LLaVA-NeXT-Video-7B-DPO-hf", 7.06),
    "next-video-34b": ("llava-hf/LLaVA-NeXT-Video-34B-hf", 34.8),
    # Video-LLaVA
    "video-llava-7b": ("LanguageBind/Video-LLaVA-7B-hf", 7.37),
    # LLaVA-NeXT (v1.6), images
    "next-mistral-7b": ("llava-hf/llava-v1.6-mistral-7b-hf", 7.57),
    "next-vicuna-7b": ("llava-hf/llava-v1.6-vicuna-7b-hf", 7.06),
    "next-vicuna-13b": ("llava-hf/llava-v1.6-vicuna-13b-hf", 13.4),
    "next-34b": ("llava-hf/llava-v1.6-34b-hf", 34.8),
    "next-llama3-8b": ("llava-hf/llama3-llava-next-8b-hf", 8.36),
    "next-72b": ("llava-hf/llava-next-72b-hf", 72.7),
    "next-110b": ("llava-hf/llava-next-110b-hf", 112.0),
    # LLaVA-1.5, images
    "llava-1.5-7b": ("llava-hf/llava-1.5-7b-hf", 7.06),
    "llava-1.5-13b": ("llava-hf/llava-1.5-13b-hf", 13.4),
}
ALIASES: dict[str, str] = {alias: repo for alias, (repo, _) in ALIAS_TABLE.items()}


def alias_size_gb(alias: str) -> float:
    """Approximate size of an alias's weights in bfloat16 (2 bytes a parameter), in GB."""
    return ALIAS_TABLE[alias][1] * 2

# The files inference reads; everything else in a repo (pickle weights, README, the
# original sentencepiece model, training logs) is left on the Hub.
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
    "processor_config.json", "video_processor/*",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


# ---------------------------------------------------------------------------------------
# References


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: a local folder, or a Hub repo at a revision."""

    text: str  # as the user wrote it
    folder: Path | None = None
    repo_id: str | None = None
    revision: str = "main"

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    @property
    def display(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return self.repo_id if self.revision == "main" else f"{self.repo_id}@{self.revision}"

    @property
    def alias(self) -> str | None:
        return alias_for(self.repo_id) if self.repo_id else None


def alias_for(repo_id: str) -> str | None:
    for alias, repo in ALIASES.items():
        if repo.lower() == repo_id.lower():
            return alias
    return None


def _is_path(text: str) -> bool:
    return (text.startswith((".", "/", "~")) or os.path.isabs(text)
            or (os.sep != "/" and os.sep in text) or Path(text).expanduser().is_dir())


def parse_ref(ref: str) -> ModelRef:
    """Classify a reference without touching the network (see the module docstring)."""
    text = (ref or "").strip()
    if not text:
        raise UsageError("the model name is empty")
    if _is_path(text):
        return ModelRef(text, folder=Path(text).expanduser())
    name, at, revision = text.partition("@")
    if at and not revision.strip():
        raise UsageError(f"model '{text}' has an empty revision after '@'")
    revision = revision.strip() or "main"
    repo = ALIASES.get(name.lower())
    if repo is None:
        if not _REPO_ID.match(name) or "--" in name or ".." in name:
            raise ModelError(unknown_model_message(name))
        repo = name
    return ModelRef(text, repo_id=repo, revision=revision)


def unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list(ALIASES), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return (f"unknown model '{name}'{hint}: give an alias (`llava models list --aliases`), "
            f"a Hub repo org/name[@revision], or a folder (./{name} for one here)")


# ---------------------------------------------------------------------------------------
# The cache


def _hf():
    """huggingface_hub, imported on first use (it is only needed for Hub models)."""
    import huggingface_hub
    import huggingface_hub.constants  # noqa: F401 - submodules the lazy top level does not load
    import huggingface_hub.utils  # noqa: F401

    return huggingface_hub


def cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it from the environment."""
    return Path(_hf().constants.HF_HUB_CACHE)


def endpoint() -> str:
    return _hf().constants.ENDPOINT


def offline_by_environment() -> bool:
    return bool(_hf().constants.HF_HUB_OFFLINE)


def repo_storage(repo_id: str) -> Path:
    """The repo's folder in the cache (``models--org--name``, the documented layout)."""
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(ref: ModelRef) -> Path | None:
    """The cached snapshot folder for the reference's revision, without the network.

    Read from the documented cache layout (``refs/<revision>`` → ``snapshots/<commit>``),
    as ``snapshot_download(local_files_only=True)`` finds it; not through that call, which
    recent huggingface_hub releases (1.33, 2.x) make refuse a snapshot that lacks any file
    of the repo (IncompleteSnapshotError), and we never fetch the files inference does not
    need. What a snapshot must hold is checked by ``missing_essentials`` and
    ``Checkpoint.verify``."""
    if ref.repo_id is None:
        return None
    storage = repo_storage(ref.repo_id)
    commit = ref.revision if _COMMIT.match(ref.revision) else _read_ref(storage, ref.revision)
    if not commit or not _COMMIT.match(commit):
        return None
    folder = storage / "snapshots" / commit
    return folder if folder.is_dir() else None


def _read_ref(storage: Path, revision: str) -> str | None:
    try:
        return (storage / "refs" / revision).read_text().strip()
    except (OSError, ValueError):
        return None


def missing_essentials(folder: Path) -> list[str]:
    """Files without which a snapshot cannot run: config.json and every weight shard."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            import json

            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        except (OSError, ValueError, AttributeError):
            return missing  # a corrupt index is reported by Checkpoint.verify, naming it
        missing += sorted(name for name in set(weight_map.values()) if not (folder / name).is_file())
    elif not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    return missing


# ---------------------------------------------------------------------------------------
# Resolving


Warn = Callable[[str], None]


def resolve(ref: str, *, offline: bool = False, force: bool = False, progress: bool = True,
            fallback: bool = True, warn: Warn | None = None) -> Path:
    """The local folder for a model reference, downloading what is missing.

    ``offline`` (or ``HF_HUB_OFFLINE=1``) never touches the network; ``force`` downloads
    every needed file again; ``progress`` shows a progress bar on a terminal (one line
    otherwise); ``progress=False`` prints nothing. With ``fallback`` (and without
    ``force``), a cached model whose Hub cannot be reached or fails (5xx) runs at its
    cached revision, after one line through ``warn`` (by default a notice on stderr,
    silenced with ``progress=False``); without it, that is an error, for a caller whose
    job is to bring the cache up to date.
    """
    return _resolve(parse_ref(ref), offline=offline, force=force, progress=progress, fallback=fallback,
                    warn=warn)


def _resolve(ref: ModelRef, *, offline: bool, force: bool, progress: bool, fallback: bool = True,
             warn: Warn | None = None) -> Path:
    if ref.folder is not None:
        if not ref.folder.exists():
            raise ModelError(f"model folder not found: {ref.text}")
        return ref.folder
    env_offline = offline_by_environment()
    if offline or env_offline:
        if force:
            raise UsageError("--force downloads again, which offline mode forbids")
        return _from_cache(ref, "--offline" if offline else "HF_HUB_OFFLINE")
    if _COMMIT.match(ref.revision) and not force:
        snapshot = cached_snapshot(ref)
        if snapshot is not None and not missing_essentials(snapshot):
            return snapshot
    if warn is None:
        warn = _default_warn(progress)
    return _fetch(ref, force=force, progress=progress, fallback=fallback and not force, warn=warn)


def _default_warn(progress: bool) -> Warn:
    from .render import Notices

    return Notices(quiet=not progress).warn


def open_checkpoint(ref: str, *, offline: bool = False, force: bool = False, progress: bool = True,
                    fallback: bool = True, warn: Warn | None = None):
    """Resolve (see ``resolve``), open and verify a model; a damaged cached download names its fix."""
    parsed = parse_ref(ref)
    folder = _resolve(parsed, offline=offline, force=force, progress=progress, fallback=fallback, warn=warn)
    from .checkpoint import Checkpoint

    try:
        checkpoint = Checkpoint.open(folder)
        checkpoint.verify()
    except IntegrityError as exc:
        if parsed.is_local:
            raise
        raise IntegrityError(f"{exc.message} ({repair_hint(parsed, exc)})", path=exc.path,
                             missing=exc.missing) from None
    return checkpoint


def repair_hint(ref: ModelRef, exc: IntegrityError) -> str:
    if exc.missing:
        return f"the download of {ref.display} is unfinished: run `llava models pull {ref.text}`"
    return f"the cached copy of {ref.display} is damaged: run `llava models pull --force {ref.text}`"


def _from_cache(ref: ModelRef, why: str) -> Path:
    snapshot = cached_snapshot(ref)
    if snapshot is None:
        raise HubError(f"{ref.display} is not cached ({cache_dir()}) and {why} forbids downloading it: "
                       f"run `llava models pull {ref.text}` while online")
    missing = missing_essentials(snapshot)
    if missing:
        raise HubError(f"{ref.display} is only partly downloaded ({missing[0]} is missing) and {why} "
                       f"forbids finishing it: run `llava models pull {ref.text}` while online")
    return snapshot


# ---------------------------------------------------------------------------------------
# Downloading


def wanted(filename: str) -> bool:
    """A file inference needs; patterns without a folder match top-level files only."""
    return any(fnmatch(filename, pattern) and filename.count("/") == pattern.count("/")
               for pattern in ALLOW_PATTERNS)


def _fetch(ref: ModelRef, *, force: bool, progress: bool, fallback: bool = False,
           warn: Warn | None = None) -> Path:
    from .hub_errors import explain, fallback_snapshot

    hf = _hf()
    try:
        info = hf.HfApi().model_info(ref.repo_id, revision=ref.revision, files_metadata=True,
                                     timeout=hf.constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one explained line
        snapshot = fallback_snapshot(exc, ref, warn) if fallback else None
        if snapshot is not None:
            return snapshot
        raise explain(exc, ref) from None
    siblings = list(info.siblings or [])
    names = [s.rfilename for s in siblings]
    _check_repo_files(ref, names)
    needed = [s for s in siblings if wanted(s.rfilename)]
    storage = repo_storage(ref.repo_id)
    snapshot = storage / "snapshots" / info.sha
    todo = needed if force else [s for s in needed if not (snapshot / s.rfilename).exists()]
    if todo and getattr(info, "gated", False):
        # A gated repo lists its files to anyone but serves them only to accounts that
        # accepted its licence: ask for one file's metadata before announcing a download.
        try:
            hf.get_hf_file_metadata(hf.hf_hub_url(ref.repo_id, "config.json", revision=info.sha),
                                    timeout=hf.constants.HF_HUB_ETAG_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            raise explain(exc, ref) from None
    if ref.revision != info.sha:
        # Before downloading, as huggingface_hub does: an interrupted download is then
        # found (and reported as unfinished) by offline use and `llava models list`.
        _write_ref(storage, ref.revision, info.sha)
    if todo:
        from .hub_download import download

        download(ref, info.sha, todo, storage, force=force, progress=progress)
    return snapshot


def _check_repo_files(ref: ModelRef, names: list[str]) -> None:
    """Refuse repos we could not run before fetching anything from them."""
    if not names:
        raise HubError(f"{ref.display} lists no files on {endpoint()}")
    if not any(n.endswith(".safetensors") and wanted(n) for n in names):
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise HubError(f"{ref.display} has only pickle weights ({pickles[0]}): llava loads safetensors "
                           f"only and never unpickles; use a repo or revision with *.safetensors weights")
        raise HubError(f"{ref.display} has no *.safetensors weights: not a model llava can run")
    if "config.json" not in names:
        raise HubError(f"{ref.display} has no config.json: not a model in the Hugging Face layout")


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    """refs/<branch or tag> → commit, as huggingface_hub records it, so that offline use
    finds the snapshot this revision pointed to last."""
    path = storage / "refs" / revision
    try:
        if path.is_file() and path.read_text().strip() == commit:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(commit)
    except OSError:
        pass  # only offline lookups of this branch suffer; huggingface_hub ignores it too


def format_bytes(size: float) -> str:
    """Decimal units, as the Hub and disk tools show sizes."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # unreachable
