"""Errors from the Hub, in one line that says what to do: huggingface_hub's, requests' and
httpx's exceptions turned into a ``HubError``.

Matched by class name where the class belongs to the HTTP library, which huggingface_hub
changed: requests (0.x), httpx (1.x), httpx2 (2.x). Its own classes (HfHubHTTPError,
GatedRepoError, …) kept their names and their ``response.status_code``.
"""

from __future__ import annotations

import errno
from pathlib import Path

from .errors import HubError
from .hub import (_ERRNO, ModelRef, Warn, _default_warn, _hf, cache_dir, cached_snapshot, endpoint, format_bytes,
                  missing_essentials)


# Failures to reach the Hub at all: requests' ConnectionError and Timeout, urllib3's, httpx's
# ConnectError, NetworkError and TimeoutException, and the OSErrors underneath them
# (ConnectionRefusedError is a ConnectionError; socket.gaierror is a DNS failure).
_UNREACHABLE = ("ConnectionError", "ConnectError", "NetworkError", "Timeout", "TimeoutException", "TimeoutError",
                "NewConnectionError", "NameResolutionError", "MaxRetryError", "gaierror", "OfflineModeIsEnabled")
_TIMEOUTS = ("Timeout", "TimeoutException", "TimeoutError", "ReadTimeout", "ConnectTimeout")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _named(exc: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _reason(exc: BaseException) -> str:
    for item in _chain(exc):
        match = _ERRNO.search(str(item))
        if match:
            return match.group(1).strip().lower()
    for item in _chain(exc):
        if _named(item, *_TIMEOUTS):
            return "timed out"
    return type(exc).__name__


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _status_of(exc: BaseException) -> int | None:
    """The status the Hub answered with, when the failure is its HTTP answer."""
    errors = _hf().utils
    for item in _chain(exc):
        if isinstance(item, errors.HfHubHTTPError) and not isinstance(item, errors.LocalEntryNotFoundError):
            status = _status(item)
            if status is not None:
                return status
    return None


def _unreachable(chain: list[BaseException]) -> bool:
    return any(_named(item, *_UNREACHABLE) for item in chain)


def explain(exc: BaseException, ref: ModelRef, *, downloading: bool = False, needed: int | None = None) -> HubError:
    """One actionable line for a failed Hub request or download."""
    hf = _hf()
    errors = hf.utils
    chain = _chain(exc)
    where = endpoint()
    for item in chain:
        if isinstance(item, OSError) and item.errno == errno.ENOSPC:
            amount = f" (it needs {format_bytes(needed)} in all)" if needed else ""
            return HubError(f"disk full while downloading {ref.display}{amount}: free space in {cache_dir()} or "
                            f"set HF_HUB_CACHE or HF_HOME to put the Hugging Face cache on a bigger disk")
    for item in chain:
        if isinstance(item, errors.GatedRepoError):
            page = f"{where}/{ref.repo_id}"
            if _status(item) == 403:
                return HubError(f"{ref.repo_id} is gated and the account of your HF_TOKEN has no access yet (403): "
                                f"accept its licence at {page}, then try again")
            return HubError(f"{ref.repo_id} is gated (401): accept its licence at {page} while logged in, then set "
                            f"HF_TOKEN to an access token of that account (or run `hf auth login`)")
        if isinstance(item, errors.RevisionNotFoundError):
            return HubError(f"revision '{ref.revision}' not found in {ref.repo_id} on {where} (404)")
        if isinstance(item, errors.RepositoryNotFoundError):
            status = _status(item)
            if status == 401:
                return HubError(f"model repo {ref.repo_id} not found on {where}, or it is private or gated (401): "
                                f"check the name; for a private or gated repo set HF_TOKEN to a token that can read it")
            if status == 403:
                return HubError(f"access to {ref.repo_id} denied (403): set HF_TOKEN to a token that can read it and "
                                f"accept the licence at {where}/{ref.repo_id}")
            return HubError(f"model repo {ref.repo_id} not found on {where} ({status or 404}): check the name "
                            f"(a private repo also needs HF_TOKEN)")
        if isinstance(item, errors.HfHubHTTPError) and not isinstance(item, errors.LocalEntryNotFoundError):
            status = _status(item)
            if status == 401:
                return HubError(f"the Hub rejected the request for {ref.repo_id} (401): HF_TOKEN is invalid or "
                                f"expired; set a valid token or unset it")
            if status == 403:
                return HubError(f"access to {ref.repo_id} denied (403): set HF_TOKEN to a token that can read it and "
                                f"accept the licence at {where}/{ref.repo_id}")
            if status == 429:
                return HubError("the Hub is rate-limiting requests (429): wait a little and try again")
            if status is not None and status < 500:
                return HubError(f"the Hub answered {status} for {ref.display}")
            return HubError(f"the Hub failed ({status or 'no status'}) for {ref.display}: try again later; "
                            f"a cached model runs with --offline")
    broken = any(_named(item, "ChunkedEncodingError", "ProtocolError", "IncompleteRead", "ContentDecodingError")
                 or (isinstance(item, OSError) and "Consistency check failed" in str(item)) for item in chain)
    network = _unreachable(chain)
    if downloading and (broken or network):
        return HubError(f"the download of {ref.display} broke off ({_reason(exc) if network else 'connection cut'}); "
                        f"run the same command again to resume it")
    if network:
        unreachable = f"cannot reach the Hugging Face Hub at {where} ({_reason(exc)})"
        snapshot = cached_snapshot(ref)
        if snapshot is None:
            return HubError(f"{unreachable} and {ref.display} is not cached: check the network, or pass --offline "
                            f"with a cached model (`llava models list` shows them)")
        missing = missing_essentials(snapshot)
        if missing:
            return HubError(f"{unreachable} and {ref.display} is only partly downloaded ({missing[0]} is missing): "
                            f"run `llava models pull {ref.text}` once the Hub can be reached")
        # Reached only where falling back is not wanted: `llava models pull`, --force.
        return HubError(f"{unreachable}: {ref.display} cannot be brought up to date; its cached revision "
                        f"{snapshot.name[:12]} runs with --offline")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return HubError(f"{ref.display} is not cached ({cache_dir()}): run `llava models pull {ref.text}` while online")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return HubError(f"fetching {ref.display} failed: {type(exc).__name__}" + (f": {first}" if first else ""))


def fallback_snapshot(exc: BaseException, ref: ModelRef, warn: Warn | None) -> Path | None:
    """The cached snapshot of the revision when the Hub could not be reached or failed (5xx),
    after one line through ``warn`` naming it; None when it is not (completely) cached, or
    when the Hub answered something else.

    Only failures that say nothing about the repo fall back: a reachable Hub's 401, 403 or
    404 (a revoked token, a repo made private or deleted, a revision that is gone) is news
    the user must act on, so it stays an error (``--offline`` runs the cached copy anyway).
    A 5xx is the Hub's own outage: the user can only wait, and the cached revision is what
    ``--offline`` would run."""
    status = _status_of(exc)
    if status is not None and status < 500:
        return None
    if status is None and not _unreachable(_chain(exc)):
        return None
    snapshot = cached_snapshot(ref)
    if snapshot is None or missing_essentials(snapshot):
        return None
    why = (f"the Hugging Face Hub at {endpoint()} failed ({status})" if status is not None
           else f"cannot reach the Hugging Face Hub at {endpoint()} ({_reason(exc)})")
    revision = f" ({ref.revision})" if ref.revision != snapshot.name else ""
    (warn or _default_warn(True))(f"{why}; using the cached revision {snapshot.name[:12]}{revision} of "
                                  f"{ref.repo_id} (--offline skips this check)")
    return snapshot
