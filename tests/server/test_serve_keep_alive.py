"""`llava serve --keep-alive`: the model is unloaded after the idle time (/health says
loaded false) and loaded again by the next request, which answers as before."""

from __future__ import annotations

import pytest

from serve_helpers import check_clean_stop, start_server, user, wait_for

BODY = {"messages": user("Describe a llava."), "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def server(tiny_model, server_env, tmp_path_factory):
    started = start_server(["-m", str(tiny_model), "--keep-alive", "1s"], server_env,
                           tmp_path_factory.mktemp("server"))
    try:
        yield started
    finally:
        check_clean_stop(started)


def test_the_model_unloads_when_idle_and_reloads_on_the_next_request(server):
    first = server.post(BODY)
    assert first.status_code == 200, first.text
    answer = first.json()["choices"][0]["message"]["content"]
    assert answer
    health = wait_for(lambda: (h := server.health())["state"] == "unloaded" and h, timeout=20)
    assert health["loaded"] is False and health["counters"]["unloads"] == 1
    again = server.post(BODY)
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"] == answer
    health = server.health()
    assert health["counters"]["loads"] == 2
    # Idle again: unloaded again.
    wait_for(lambda: server.health()["state"] == "unloaded", timeout=20)
    assert "model unloaded after 1s idle" in server.stderr
