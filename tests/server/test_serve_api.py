"""`llava serve` through the real `openai` client and raw HTTP: the same answers as `llava ask`
(video by file://, image by data: URL), streaming, 8 concurrent requests decoded in shared
steps, stop strings, the API key, file:// confinement, a client that goes away, and the
server's own stop on Ctrl-C. One server for the whole module."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket

import pytest

from serve_helpers import check_clean_stop, data_url, start_server, user, wait_for
from support.cli import run

KEY = "sk-test-0123456789"
TOKENS = 6
VIDEO_Q = "What happens in this video?"
IMAGE_Q = "What is in the picture?"


@pytest.fixture(scope="module")
def allowed(tmp_path_factory, media_files):
    """The folder the server may read (--allowed-media-path), with the clip, and a secret outside it."""
    folder = tmp_path_factory.mktemp("allowed")
    clip = folder / "clip.mp4"
    clip.write_bytes(media_files["clip"].read_bytes())
    secret = folder.parent / f"{folder.name}-secret.mp4"
    secret.write_bytes(media_files["clip"].read_bytes())
    (folder / "escape.mp4").symlink_to(secret)
    return folder


@pytest.fixture(scope="module")
def server(tiny_model, server_env, allowed, tmp_path_factory):
    started = start_server(["-m", str(tiny_model), "-n", str(TOKENS), "-t", "0", "--api-key", KEY,
                            "--allowed-media-path", str(allowed), "--parallel", "8"],
                           server_env, tmp_path_factory.mktemp("server"), key=KEY)
    try:
        yield started
    finally:
        check_clean_stop(started)


@pytest.fixture(scope="module")
def expected(tiny_model, server_env, allowed, media_files):
    """What `llava ask --json` answers, greedy, for the video and for the image."""
    out = {}
    for name, media, question in (("video", allowed / "clip.mp4", VIDEO_Q), ("image", media_files["image"], IMAGE_Q)):
        result = run(["ask", "-m", str(tiny_model), "-n", str(TOKENS), "--temperature", "0", "--json", str(media),
                      question], server_env)
        assert result.returncode == 0, result.stderr
        out[name] = json.loads(result.stdout)
    assert out["video"]["answer"] and out["image"]["answer"]
    return out


def video_messages(allowed):
    return user(f"file://{allowed / 'clip.mp4'}", VIDEO_Q)


def image_messages(media_files):
    return user(data_url(media_files["image"], "image/png"), IMAGE_Q)


def test_a_video_question_answers_as_llava_ask(server, expected, allowed):
    response = server.client().chat.completions.create(model="anything", messages=video_messages(allowed),
                                                       max_tokens=TOKENS, temperature=0)
    want = expected["video"]
    assert response.choices[0].message.content == want["answer"]
    assert response.choices[0].finish_reason == "length" and want["stop_reason"] == "length"
    assert response.object == "chat.completion" and response.model == want["model"]
    assert response.usage.prompt_tokens == want["prompt_tokens"]
    assert response.usage.completion_tokens == want["answer_tokens"] == TOKENS
    assert response.usage.total_tokens == want["prompt_tokens"] + TOKENS
    media = response.model_extra["llava"]["media"]
    assert [(m["kind"], m["frames"], m["timestamps"]) for m in media] == [
        (m["kind"], m["frames"], m["timestamps"]) for m in want["media"]]
    assert media[0]["path"] == f"file://{allowed / 'clip.mp4'}"


def test_an_image_question_by_data_url_answers_as_llava_ask(server, expected, media_files):
    response = server.client().chat.completions.create(model="llava", messages=image_messages(media_files),
                                                       max_tokens=TOKENS, temperature=0)
    want = expected["image"]
    assert response.choices[0].message.content == want["answer"]
    assert response.usage.prompt_tokens == want["prompt_tokens"]
    media = response.model_extra["llava"]["media"]
    assert media[0]["kind"] == "image" and media[0]["path"].startswith("data:image/png (")


def test_streamed_pieces_join_to_the_answer_and_end_with_done(server, expected, allowed, media_files):
    stream = server.client().chat.completions.create(model="llava", messages=video_messages(allowed),
                                                     max_tokens=TOKENS, temperature=0, stream=True,
                                                     stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the answer came in one piece: not streamed"
    assert "".join(pieces) == expected["video"]["answer"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == TOKENS
    # The wire format: chat.completion.chunk objects, the usage chunk, then data: [DONE].
    body = {"messages": image_messages(media_files), "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": TOKENS}
    response = server.post(body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    objects = [json.loads(event) for event in events[:-1]]
    assert {o["object"] for o in objects} == {"chat.completion.chunk"}
    assert "".join(o["choices"][0]["delta"].get("content", "") for o in objects if o["choices"]) \
        == expected["image"]["answer"]
    assert objects[-1]["usage"]["prompt_tokens"] == expected["image"]["prompt_tokens"]
    assert objects[-2]["llava"]["media"][0]["kind"] == "image"


def test_eight_concurrent_requests_share_decode_steps(server, expected, allowed, media_files):
    before = server.health()["counters"]
    requests = [(video_messages(allowed), "video") if i % 2 else (image_messages(media_files), "image")
                for i in range(8)]
    client = server.client()

    def ask(request):
        messages, _ = request
        return client.chat.completions.create(model="llava", messages=messages, max_tokens=TOKENS, temperature=0)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, requests))
    for answer, (_, kind) in zip(answers, requests):
        assert answer.choices[0].message.content == expected[kind]["answer"]
    after = server.health()["counters"]
    assert after["max_batch"] >= 2, after
    # Fewer decode steps than answer tokens: the requests shared them.
    assert after["decode_steps"] - before["decode_steps"] < 8 * (TOKENS - 1), (before, after)
    assert after["requests"] - before["requests"] == 8 and after["in_flight"] == 0
    # The same media, encoded (at most) once however many requests name it.
    assert after["media_encoded"] - before["media_encoded"] <= 2


def test_a_stop_string_cuts_the_answer(server, expected, allowed):
    answer = expected["video"]["answer"]
    words = answer.split(" ")
    assert len(words) >= 3, answer
    stop = " " + words[2][:2]  # where the third word starts
    cut = answer[:answer.index(stop)]
    client = server.client()
    response = client.chat.completions.create(model="llava", messages=video_messages(allowed), max_tokens=TOKENS,
                                              temperature=0, stop=[stop, "never-in-it"])
    assert response.choices[0].message.content == cut
    assert response.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="llava", messages=video_messages(allowed), max_tokens=TOKENS,
                                            temperature=0, stop=stop, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_models_and_health(server, tiny_model):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [str(tiny_model)]
    health = server.health()
    assert health["status"] == "ok" and health["model"] == str(tiny_model) and health["loaded"] is True
    assert set(health["counters"]) >= {"requests", "decode_steps", "max_batch", "in_flight"}


def test_the_api_key_is_required(server, allowed):
    body = {"messages": user("hello"), "max_tokens": 2}
    for key in (None, "wrong-key"):
        response = server.post(body, key=key)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert server.get("/v1/models", key=key).status_code == 401
    assert server.post(body).status_code == 200
    assert server.get("/health", key=None).status_code == 200  # /health stays open

    import openai

    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="llava", messages=user("hi"), max_tokens=2)


def test_file_urls_only_under_the_allowed_path(server, allowed):
    secret = allowed.parent / f"{allowed.name}-secret.mp4"
    for url in (f"file://{secret}", f"file://{allowed}/../{secret.name}", f"file://{allowed / 'escape.mp4'}",
                "file:///etc/passwd"):
        response = server.post({"messages": user(url, "what?"), "max_tokens": 2})
        assert response.status_code == 403, (url, response.text)
        error = response.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "file_url_forbidden"
    inside = server.post({"messages": user(f"file://{allowed}/./clip.mp4", "what?"), "max_tokens": 2})
    assert inside.status_code == 200, inside.text


def test_a_client_that_goes_away_frees_its_slot(server):
    """A streamed answer that would take minutes, abandoned after its first pieces: the
    server cancels it (in_flight drops to 0 at once) and goes on answering."""
    import httpx

    body = {"messages": user("Tell me a very long story."), "max_tokens": 3000, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", server.url + "/v1/chat/completions", json=body,
                           headers=server.headers()) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for line in lines:
                if '"content": "' in line and '"content": ""' not in line:
                    break
            assert server.health()["counters"]["in_flight"] == 1
    wait_for(lambda: server.health()["counters"]["in_flight"] == 0, timeout=15)
    assert server.post({"messages": user("hello"), "max_tokens": 2}).status_code == 200


def _read_response(sock) -> str:
    """One whole HTTP response from a raw socket: the head, then Content-Length bytes of body.
    One recv is not enough: the server may send the head and the body in separate segments."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: {100 << 20}\r\n\r\n".encode() + b"{")
        reply = _read_response(sock)
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"code":"body_too_large"' in reply.replace(" ", "")
    assert server.post({"messages": user("hello"), "max_tokens": 2}).status_code == 200


def test_the_server_never_writes_to_stdout_and_logs_no_traceback(server):
    assert server.out.read_text() == ""
    assert "Traceback" not in server.stderr
    assert os.path.basename(server.url).startswith("127.0.0.1:")


def test_ask_through_the_server_answers_what_ask_answers_here(server, expected, allowed, media_files, server_env):
    """LLAVA_HOST: `llava ask` sends the question (media inline as data: URLs) to the running
    server and prints the same answer it prints in-process; --json carries the server's
    frames and token counts."""
    env = {**server_env, "LLAVA_HOST": f"127.0.0.1:{server.port}", "LLAVA_API_KEY": KEY}
    for name, media, question in (("video", allowed / "clip.mp4", VIDEO_Q), ("image", media_files["image"], IMAGE_Q)):
        plain = run(["ask", "-n", str(TOKENS), "--temperature", "0", str(media), question], env)
        assert plain.returncode == 0, plain.stderr
        assert plain.stdout == expected[name]["answer"] + "\n"
        as_json = run(["ask", "-n", str(TOKENS), "--temperature", "0", "--json", str(media), question], env)
        assert as_json.returncode == 0, as_json.stderr
        data = json.loads(as_json.stdout)
        assert data["answer"] == expected[name]["answer"]
        assert data["prompt_tokens"] == expected[name]["prompt_tokens"]
        assert data["answer_tokens"] == expected[name]["answer_tokens"]
        assert [m["frames"] for m in data["media"]] == [m["frames"] for m in expected[name]["media"]]
    flag = run(["ask", "--host", f"http://127.0.0.1:{server.port}", "-n", str(TOKENS), "--temperature", "0",
                str(media_files["image"]), IMAGE_Q], {**server_env, "LLAVA_API_KEY": KEY})
    assert flag.returncode == 0 and flag.stdout == expected["image"]["answer"] + "\n", flag.stderr


def test_ask_through_the_server_errors_are_one_line(server, media_files, server_env):
    refused = run(["ask", str(media_files["image"]), IMAGE_Q], {**server_env, "LLAVA_HOST": f"127.0.0.1:{server.port}"})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "refused the request" in refused.stderr  # no API key: 401
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    absent = run(["ask", str(media_files["image"]), IMAGE_Q], {**server_env, "LLAVA_HOST": f"127.0.0.1:{port}"})
    assert absent.returncode == 1 and absent.stderr.count("\n") == 1
    assert "cannot reach the llava server" in absent.stderr and "Traceback" not in absent.stderr


def test_chat_through_the_server(server, expected, media_files, server_env):
    """LLAVA_HOST: `llava chat` keeps the conversation here and sends it whole each turn; its
    first answer is `llava ask`'s, the second turn carries the first, and /save records both."""
    env = {**server_env, "LLAVA_HOST": f"127.0.0.1:{server.port}", "LLAVA_API_KEY": KEY}
    saved = server.log.parent / "conversation.json"
    result = run(["chat", "-n", str(TOKENS), "--temperature", "0", str(media_files["image"])], env,
                 stdin=f"{IMAGE_Q}\nAnd why?\n/save {saved}\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == expected["image"]["answer"]
    conversation = json.loads(saved.read_text())
    roles = [m["role"] for m in conversation["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert conversation["messages"][1]["content"] == expected["image"]["answer"].strip()
    assert conversation["messages"][3]["content"]
