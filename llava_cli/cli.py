"""The command line lives in ``llava_cli.commands``; this name stays for the entry point of
older installs and for ``python -m llava_cli``'s callers."""

from __future__ import annotations

from .commands import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
