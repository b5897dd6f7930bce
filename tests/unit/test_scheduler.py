"""The generation core: sequences in flight together give exactly what each gives alone.

The tiny NeXT-Video model's greedy answers never reach a stop token, so each request's
length is its --max-new-tokens; answers are compared token for token, first-token logits
to 1e-5 (float32; a batched matmul may round differently from a single row's).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llava_cli.generate import Sampling
from llava_cli.media import load_media
from llava_cli.scheduler import Request, Scheduler

GREEDY = Sampling(max_new_tokens=20)


@pytest.fixture(scope="module")
def prompts(engine, media_files):
    """Three prompts of different lengths: a video, an image, text only."""
    video = engine.prepare([load_media(media_files["clip"], num_frames=4)], "Why is this funny?")
    image = engine.prepare([load_media(media_files["image"])], "Describe it.")
    text = engine.prepare([], "Tell me a story about a cat who learned to play the piano, please.")
    assert len({len(p.input_ids) for p in (video, image, text)}) == 3
    return {"video": video, "image": image, "text": text}


def alone(engine, prepared, sampling) -> tuple[list[int], torch.Tensor]:
    core = Scheduler(engine.model.text, 1)
    generation = core.submit(engine.request(prepared, sampling, keep_logits=True))
    tokens = list(core.run(generation))
    return tokens, generation.result.logits


def test_joining_mid_flight_and_finishing_early_disturb_nobody(engine, prompts):
    sampled = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    expected = {
        "video": alone(engine, prompts["video"], GREEDY),
        "image": alone(engine, prompts["image"], Sampling(max_new_tokens=3)),
        "text": alone(engine, prompts["text"], sampled),
    }
    core = Scheduler(engine.model.text, 4)
    first = core.submit(engine.request(prompts["video"], GREEDY, keep_logits=True))
    for _ in range(5):
        core.step()
    assert len(first.result.tokens) >= 3 and not first.done  # decoding when the others join
    short = core.submit(engine.request(prompts["image"], Sampling(max_new_tokens=3), keep_logits=True))
    late = core.submit(engine.request(prompts["text"], sampled, keep_logits=True))
    ended = []
    while core.busy:
        ended += [g for g in core.step() if g.done]
    assert ended.index(short) < ended.index(first)  # the short one finished early, and left
    for name, generation in (("video", first), ("image", short), ("text", late)):
        tokens, logits = expected[name]
        assert generation.result.tokens == tokens, name
        assert (generation.result.logits - logits).abs().max().item() <= 1e-5, name
    # They shared decode steps: fewer steps than the three answers one after another.
    assert core.steps < (20 - 1) + (3 - 1) + (12 - 1)


def test_a_finished_sequence_frees_its_slot_at_once(engine, prompts):
    core = Scheduler(engine.model.text, 2)
    short = core.submit(engine.request(prompts["text"], Sampling(max_new_tokens=2)))
    long = core.submit(engine.request(prompts["text"], Sampling(max_new_tokens=15)))
    waiting = core.submit(engine.request(prompts["image"], Sampling(max_new_tokens=4)))
    while not short.done:
        core.step()
        assert waiting.row is None  # both slots are taken
    core.step()
    assert waiting.row == short.row and not long.done  # it took the freed slot while the long one runs
    while core.busy:
        core.step()
    assert engine.model.text.cache.rows == 2
    assert waiting.result.tokens == alone(engine, prompts["image"], Sampling(max_new_tokens=4))[0]


def test_the_cache_is_sized_by_the_prompts_in_flight(engine, prompts):
    core = Scheduler(engine.model.text, 16)
    sampling = Sampling(max_new_tokens=5)
    generations = [core.submit(engine.request(prompts["text"], sampling)) for _ in range(2)]
    while core.busy:
        core.step()
    cache = engine.model.text.cache
    assert cache.rows == 2  # not 16
    assert cache.capacity == len(prompts["text"].input_ids) + 5  # not the model's context
    assert prompts["text"].context > 10 * cache.capacity
    assert all(len(g.result.tokens) == 5 for g in generations)


def test_different_rope_factors_share_a_step(engine, prompts):
    stretched = dataclasses.replace(prompts["video"], rope_factor=prompts["video"].rope_factor * 2)
    expected = [alone(engine, p, GREEDY) for p in (stretched, prompts["video"])]
    assert expected[0][0] != expected[1][0] or (expected[0][1] - expected[1][1]).abs().max() > 1e-3
    core = Scheduler(engine.model.text, 2)
    generations = [core.submit(engine.request(p, GREEDY, keep_logits=True)) for p in (stretched, prompts["video"])]
    while core.busy:
        core.step()
    for generation, (tokens, logits) in zip(generations, expected):
        assert generation.result.tokens == tokens
        assert (generation.result.logits - logits).abs().max().item() <= 1e-5


def test_a_reserved_row_keeps_its_prefix(engine, prompts):
    """What chat does: the second request starts at the cached prefix and runs only the
    new positions; another request in between, in another row, does not disturb it."""
    text = engine.model.text
    ids = prompts["text"].input_ids
    embeds = engine.embed(prompts["text"])
    cut = len(ids) - 4
    core = Scheduler(text, 1)
    row = core.reserve()
    sampling = Sampling(max_new_tokens=1)
    first = core.submit(Request(embeds=embeds[:cut], sampling=sampling, stop_ids=engine.stop_ids,
                                context=prompts["text"].context, slot=row))
    list(core.run(first))
    list(core.run(core.submit(engine.request(prompts["image"], Sampling(max_new_tokens=3)))))  # a shared slot
    seen = []
    hook = text.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].shape[1]),
                                          with_kwargs=True)
    try:
        rest = core.submit(Request(embeds=embeds[cut:], sampling=GREEDY, stop_ids=engine.stop_ids,
                                   context=prompts["text"].context, slot=row, start=cut, keep_logits=True))
        tokens = list(core.run(rest))
    finally:
        hook.remove()
    assert seen == [4]  # only the new positions went through a prefill pass
    expected_tokens, expected_logits = alone(engine, prompts["text"], GREEDY)
    assert tokens == expected_tokens
    assert (rest.result.logits - expected_logits).abs().max().item() <= 1e-5


def test_cancel_frees_the_row_and_records_why(engine, prompts):
    core = Scheduler(engine.model.text, 1)
    generation = core.submit(engine.request(prompts["text"], GREEDY))
    stream = core.run(generation)
    next(stream)
    stream.close()  # the caller went away (Ctrl-C between two tokens)
    assert generation.result.stop_reason == "interrupted" and core.free == [0] and not core.busy
    assert generation.result.fed == len(generation.result.tokens) - 1  # the last token never went in
