"""ChatSession in-process: the cached conversation gives what a full prefill gives, media is
encoded once, and an interrupted turn leaves the cache consistent.

The tiny model's answers hardly depend on the prompt, so comparing answers would hide a
wrong cache. The tests compare the logits of every decoding step instead (a hook on the
LM head): a turn continued on the cache must give the logits a fresh session gets by
prefilling the whole conversation. Changing one cached key by 0.5 moves them by ~2e-3;
the tolerance is 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from llava_cli.engine import Engine
from llava_cli.generate import Sampling
from llava_cli.media import FrameSpec
from llava_cli.nn.text import TextConfig, TextModel
from llava_cli.session import ChatSession, MediaCache

GREEDY = Sampling(max_new_tokens=6)
TOLERANCE = 1e-4


def new_session(engine: Engine, system: str | None = None) -> tuple[ChatSession, MediaCache]:
    cache = MediaCache(engine)
    return ChatSession(engine, system=system, cache=cache), cache


def answer(session: ChatSession, question: str, sampling: Sampling = GREEDY) -> str:
    return "".join(session.ask(question, sampling)).strip()


def step_logits(session: ChatSession, question: str) -> torch.Tensor:
    """The next-token logits of every step of one turn: (steps, vocab)."""
    captured = []

    def capture(module, inputs, output) -> None:
        # A prefill pass has the session's sequence alone (batch 1); a decode step has
        # every row of the KV cache, the session's at its reserved row.
        row = 0 if output.shape[0] == 1 else session._row
        captured.append(output[row, -1].detach().clone())

    hook = session.engine.model.text.lm_head.register_forward_hook(capture)
    try:
        answer(session, question)
    finally:
        hook.remove()
    return torch.stack(captured)


def replay_without_last_turn(engine: Engine, chat: ChatSession) -> ChatSession:
    """A fresh session (nothing cached) holding ``chat``'s conversation minus its last turn."""
    fresh, cache = new_session(engine, system=chat.system)
    fresh.load_json(chat.to_json("m", {}), cache.load)
    fresh.messages[-2:] = []
    return fresh


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOLERANCE


def test_grow_cache_keeps_contents():
    cfg = TextConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=4, rms_norm_eps=1e-6, rope_theta=10000.0)
    model = TextModel(cfg)
    model.setup_cache(4, rows=2)
    model.cache.k.normal_()
    model.cache.v.normal_()
    k, v = model.cache.k[:, :, :, :4].clone(), model.cache.v[:, :, :, :4].clone()
    model.grow_cache(9)
    assert model.cache_capacity == 9 and model.cache.rows == 2
    assert model.cache.k.shape[3] == 9 + 1  # and the scratch column
    assert torch.equal(model.cache.k[:, :, :, :4], k) and torch.equal(model.cache.v[:, :, :, :4], v)
    model.grow_cache(9, rows=3)  # more slots: every row's contents stay, the new row is empty
    assert model.cache.rows == 3
    assert torch.equal(model.cache.k[:, :2, :, :4], k) and torch.equal(model.cache.v[:, :2, :, :4], v)
    assert not model.cache.k[:, 2].any()
    model.grow_cache(5)  # never shrinks
    assert model.cache_capacity == 9 and model.cache.rows == 3


def test_cached_turns_match_a_full_prefill(engine, media_files):
    clip = str(media_files["clip"])
    spec = FrameSpec(frames=4)
    before = engine.stats.media_encoded
    chat, cache = new_session(engine)
    chat.attach(cache.load(clip, spec))
    first = step_logits(chat, "Why is this funny?")
    prefilled = []  # positions of each prefill pass of the second turn (decode steps are not forward calls)
    hook = engine.model.text.register_forward_pre_hook(lambda module, args: prefilled.append(args[0].shape[1]))
    try:
        second = step_logits(chat, "And then what?")
    finally:
        hook.remove()
    assert chat.last.reused_tokens > 0.9 * chat.last.prompt_tokens
    assert sum(prefilled) == chat.last.prompt_tokens - chat.last.reused_tokens  # only the new turn ran
    assert engine.stats.media_encoded - before == 1

    # The first turn is exactly the one-shot prompt of `llava ask`.
    prepared = engine.prepare([chat.messages[0].media[0].entry.media], "Why is this funny?")
    assert_close(first[0], engine.logits(prepared))

    # The same conversation in a fresh session (nothing cached) gives the same logits.
    fresh = replay_without_last_turn(engine, chat)
    before = engine.stats.media_encoded
    assert_close(step_logits(fresh, "And then what?"), second)
    assert fresh.last.reused_tokens == 0
    assert engine.stats.media_encoded - before == 1  # its own media cache: encoded once, for both turns


def test_system_change_reprefills_without_encoding(engine, media_files):
    chat, cache = new_session(engine)
    chat.attach(cache.load(str(media_files["clip"]), FrameSpec(frames=4)))
    answer(chat, "What is it?")
    encoded = engine.stats.media_encoded
    chat.set_system("You are terse.")
    after = step_logits(chat, "Again?")
    assert engine.stats.media_encoded == encoded
    assert chat.last.reused_tokens < 5  # the prompt changed near its start
    assert_close(step_logits(replay_without_last_turn(engine, chat), "Again?"), after)


def test_interrupted_turn_leaves_a_consistent_session(engine, media_files):
    chat, cache = new_session(engine)
    chat.attach(cache.load(str(media_files["image"]), FrameSpec()))
    turn = chat.ask("Describe it.", Sampling(max_new_tokens=200))
    pieces = [next(turn) for _ in range(3)]
    turn.close()  # what Ctrl-C between two pieces does
    assert pieces
    partial = chat.messages[-1]
    assert partial.role == "assistant" and partial.interrupted
    assert chat.last.prompt_tokens < chat.cached_tokens < chat.last.prompt_tokens + 200
    follow_up = step_logits(chat, "Go on.")
    assert_close(step_logits(replay_without_last_turn(engine, chat), "Go on."), follow_up)


def test_interrupt_before_the_answer_withdraws_the_question(engine, media_files):
    chat, cache = new_session(engine)
    entry = cache.load(str(media_files["clip"]), FrameSpec(frames=2))
    chat.attach(entry)

    def interrupt(*_):
        raise KeyboardInterrupt

    engine.on_encode = interrupt  # Ctrl-C while the video is being encoded
    try:
        with pytest.raises(KeyboardInterrupt):
            answer(chat, "What?")
    finally:
        engine.on_encode = None
    assert chat.messages == [] and [s.entry for s in chat.pending] == [entry]
    assert answer(chat, "What?")
    assert [m.role for m in chat.messages] == ["user", "assistant"]


def test_attaching_the_same_file_again_reuses_its_encoding(engine, media_files, tmp_path):
    chat, cache = new_session(engine)
    before = engine.stats.media_encoded
    chat.attach(cache.load(str(media_files["image"]), FrameSpec()))
    answer(chat, "What is it?")
    chat.attach(cache.load(str(media_files["image"]), FrameSpec()))  # same file, same settings
    answer(chat, "And now?")
    assert engine.stats.media_encoded - before == 1
    # Other frame settings, or a changed file, are other media.
    chat.attach(cache.load(str(media_files["clip"]), FrameSpec(frames=2)))
    chat.attach(cache.load(str(media_files["clip"]), FrameSpec(frames=3)))
    answer(chat, "Two clips?")
    assert engine.stats.media_encoded - before == 3
    copy = tmp_path / "photo.png"
    copy.write_bytes(media_files["image"].read_bytes())
    first = cache.load(str(copy), FrameSpec())
    copy.write_bytes(media_files["image"].read_bytes() + b"\0")  # same name, new size and mtime
    assert cache.load(str(copy), FrameSpec()) is not first


def test_prepare_with_encoded_media_matches_the_plain_path(engine, media_files):
    from llava_cli.media import load_media

    media = [load_media(media_files["clip"], FrameSpec(frames=3)), load_media(media_files["image"])]
    before = engine.stats.media_encoded
    encoded = engine.encode(media)
    assert engine.stats.media_encoded - before == 2
    for question in ("What is shown?", "Which came first?"):  # one encoding, two prompts
        reused = engine.prepare(media, question, encoded=encoded)
        assert_close(engine.logits(reused), engine.logits(engine.prepare(media, question)))
    assert engine.stats.media_encoded - before == 2 + 2 * 2  # only the plain path encoded again
