"""Malformed and hostile requests to `llava serve`: each gets a 4xx with OpenAI's error
object (never a 500, never a traceback), and the server answers the next good request.
One server (no API key, no allowed media path) for the module."""

from __future__ import annotations

import base64
import re

import pytest

from serve_helpers import check_clean_stop, start_server, user

PNG = "data:image/png;base64,"
GOOD = {"messages": user("hello"), "max_tokens": 2}


@pytest.fixture(scope="module")
def server(tiny_model, server_env, tmp_path_factory):
    started = start_server(["-m", str(tiny_model), "-n", "2", "-t", "0"], server_env,
                           tmp_path_factory.mktemp("server"))
    try:
        yield started
    finally:
        check_clean_stop(started)


MALFORMED = {
    # name: (raw body or JSON value, status, code)
    "bad json": (b'{"messages": [', 400, "invalid_json"),
    "empty body": (b"", 400, "invalid_json"),
    "not utf-8": (b'{"messages": "\xff"}', 400, "invalid_json"),
    "an array": ([], 400, "invalid_type"),
    "missing messages": ({"model": "llava"}, 400, "missing_required_parameter"),
    "messages not an array": ({"messages": "hi"}, 400, "invalid_type"),
    "no messages": ({"messages": []}, 400, "invalid_value"),
    "message not an object": ({"messages": ["hi"]}, 400, "invalid_type"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "unknown_role"),
    "role not a string": ({"messages": [{"role": 7, "content": "hi"}]}, 400, "invalid_type"),
    "content a number": ({"messages": [{"role": "user", "content": 42}]}, 400, "invalid_type"),
    "unknown part type": ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "invalid_value"),
    "text not a string": ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, 400,
                          "invalid_type"),
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "invalid_value"),
    "image without url": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
                          400, "invalid_type"),
    "bad data: url": ({"messages": user(PNG + "!!!not base64!!!", "what?")}, 400, "invalid_data_url"),
    "data: url of text": ({"messages": user("data:text/plain;base64,aGVsbG8=", "what?")}, 400, "invalid_media"),
    "non-media bytes": ({"messages": user(PNG + base64.b64encode(b"hello, not a picture" * 20).decode(), "what?")},
                        400, "invalid_media"),
    "unsupported url": ({"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "ftp://example.com/a.mp4"}}]}]}, 400, "invalid_url"),
    "file url refused": ({"messages": user("file:///etc/hostname.mp4", "what?")}, 403, "file_url_forbidden"),
    "image in a system message": ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": PNG + "AAAA"}}]}]}, 400, "invalid_value"),
    "negative max_tokens": ({**GOOD, "max_tokens": -5}, 400, "invalid_value"),
    "max_tokens a string": ({**GOOD, "max_tokens": "10"}, 400, "invalid_type"),
    "temperature a string": ({**GOOD, "temperature": "hot"}, 400, "invalid_type"),
    "negative temperature": ({**GOOD, "temperature": -1}, 400, "invalid_value"),
    "top_p over 1": ({**GOOD, "top_p": 2}, 400, "invalid_value"),
    "negative seed": ({**GOOD, "seed": -1}, 400, "invalid_value"),
    "stop of numbers": ({**GOOD, "stop": [1, 2]}, 400, "invalid_type"),
    "stream not a bool": ({**GOOD, "stream": "yes"}, 400, "invalid_type"),
    "n of 2": ({**GOOD, "n": 2}, 400, "unsupported_parameter"),
    "tools": ({**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "unsupported_parameter"),
    "zero frames": ({**GOOD, "llava": {"frames": 0}}, 400, "invalid_value"),
    "unknown llava setting": ({**GOOD, "llava": {"frame": 8}}, 400, "unknown_parameter"),
    "bad start time": ({**GOOD, "llava": {"start": "soon"}}, 400, "invalid_value"),
    "empty window": ({**GOOD, "llava": {"start": 5, "end": 2}}, 400, "invalid_value"),
    "over-long prompt": ({"messages": user("hello " * 6000), "max_tokens": 2}, 400, "context_length_exceeded"),
    "nested too deeply": (b"[" * 100000 + b"]" * 100000, 400, "invalid_json"),
}


def test_too_many_frames_for_the_context_says_how_many_fit(server, media_files):
    clip = "data:video/mp4;base64," + base64.b64encode(media_files["clip"].read_bytes()).decode()
    response = server.post({"messages": user(clip, "what?"), "max_tokens": 2, "llava": {"frames": 40}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert re.search(r'frames per video fit \(send "llava": \{"frames": \d+\}\)', error["message"]), error
    assert "--frames" not in error["message"]


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_request_gets_a_4xx_in_openai_shape(server, name):
    body, status, code = MALFORMED[name]
    if isinstance(body, bytes):
        response = server.post(content=body)
    else:
        response = server.post(body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and "\n" not in error["message"] and "Traceback" not in error["message"]
    assert server.post(GOOD).status_code == 200  # and the server goes on


def test_wrong_routes_and_methods_answer_in_openai_shape(server):
    missing = server.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = server.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    unknown = server.get("/v1/models/other-model")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_the_server_survives_them_all(server):
    health = server.health()
    assert health["counters"]["in_flight"] == 0
    assert "Traceback" not in server.stderr
    assert server.post(GOOD).json()["choices"][0]["finish_reason"] == "length"
