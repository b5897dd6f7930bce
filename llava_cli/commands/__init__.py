"""The `llava` command line: the app and ``main`` (core.py), the shared options
(options.py), what ask/chat/batch do alike (run.py), and one module per command."""

from __future__ import annotations

# Each module registers its command(s) when imported; this order is the order of the help.
from . import ask  # noqa: F401,I001
from . import chat  # noqa: F401
from . import batch  # noqa: F401
from . import serve  # noqa: F401
from . import config  # noqa: F401
from . import models  # noqa: F401
from .core import app, main

__all__ = ["app", "main"]
