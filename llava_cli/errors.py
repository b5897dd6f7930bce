"""One error family, raised where a problem is known and printed once by the CLI."""

from __future__ import annotations

# Exit codes (documented in the README and man page).
EXIT_OK = 0
EXIT_ERROR = 1  # bad input, model or runtime failure
EXIT_USAGE = 2  # bad command-line usage
EXIT_PARTIAL = 3  # batch: some inputs failed
EXIT_INTERRUPTED = 130  # Ctrl-C


class LlavaError(Exception):
    """An error with a one-line message meant for the user."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(LlavaError):
    exit_code = EXIT_USAGE


class MediaError(LlavaError):
    """A media file is missing, unreadable, corrupt or not media at all."""


class ModelError(LlavaError):
    """A model folder or checkpoint is missing, malformed or unsupported."""


class IntegrityError(ModelError):
    """A checkpoint file is missing, truncated or corrupt (``path`` names it).

    ``missing`` tells a file that is absent (an unfinished download) from one that is
    present but damaged, so the fix offered can differ."""

    def __init__(self, message: str, *, path=None, missing: bool = False) -> None:
        super().__init__(message)
        self.path = path
        self.missing = missing


class HubError(LlavaError):
    """A model could not be fetched from the Hub or found in the local cache."""


class DownloadInterrupted(HubError):
    """Ctrl-C during a download. Download threads are still running: the CLI exits at
    once instead of waiting for them (the partial files stay, ready to resume)."""

    exit_code = EXIT_INTERRUPTED
    abandon_threads = True


class ConfigError(LlavaError):
    """The configuration file cannot be read or has a bad value."""


class PromptError(LlavaError):
    """The prompt cannot be built (template, placeholders, context length)."""
