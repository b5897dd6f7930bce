"""`llava serve` puts LLaVA-Video's time instruction before a video question exactly as
`llava ask` does, for a checkpoint whose config.json declares add_time_instruction."""

from __future__ import annotations

import json

import pytest

from serve_helpers import check_clean_stop, start_server, user
from support.cli import run

QUESTION = "What happens in this video?"


@pytest.fixture(scope="module")
def llava_video(tmp_path_factory):
    """A tiny OneVision checkpoint whose config says "add_time_instruction": true."""
    from support.checkpoints.onevision import make_onevision

    folder = make_onevision(tmp_path_factory.mktemp("ckpt") / "tiny-llava-video", "trained", tied=True, seed=3)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "add_time_instruction": True}))
    return folder


def test_serve_adds_it_like_ask(llava_video, server_env, media_files, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(media_files["clip"].read_bytes())

    def ask_tokens(*flags: str) -> int:
        result = run(["ask", "-m", str(llava_video), "-n", "1", "--frames", "4", "--json", *flags, str(clip),
                      QUESTION], server_env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["prompt_tokens"]

    server = start_server(["-m", str(llava_video), "-n", "1", "--frames", "4", "--allowed-media-path",
                           str(tmp_path)], server_env, tmp_path)
    try:
        response = server.post({"messages": user(f"file://{clip}", QUESTION), "max_tokens": 1})
        assert response.status_code == 200, response.text
        served = response.json()["usage"]["prompt_tokens"]
    finally:
        check_clean_stop(server)
    assert served == ask_tokens() > ask_tokens("--no-time-instruction")
