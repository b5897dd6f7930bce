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


class PromptError(LlavaError):
    """The prompt cannot be built (template, placeholders, context length)."""
