"""Fixtures of the `llava serve` tests; the helpers are in serve_helpers.py."""

from __future__ import annotations

import pytest

from support.cli import clean_env


@pytest.fixture(scope="module")
def server_env(tmp_path_factory) -> dict[str, str]:
    """An environment that cannot see the user's config or LLAVA_* settings."""
    return clean_env(tmp_path_factory.mktemp("serve-home"))
