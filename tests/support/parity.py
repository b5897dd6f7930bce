"""The one parity harness: our Engine against transformers 4.48.3, both loaded from one folder.

The reference gets exactly what a transformers user would give it: the chat template rendered
by the processor, PIL images, frames from a full sequential PyAV decode at the model cards'
indices (`reference_frames`). Ours goes through our own media, prompt, tokenizer,
preprocessing and networks. `check_parity` then compares, for every family:

- the prompt ids (identical), the BOS at their start (exactly one, or none and a given
  opening token), and as many placeholder ids per media kind as our items' token counts;
- per media kind, as many items as the reference's batch holds (none: no pixel key at all),
  each item's pixel values within PIXEL_TOL;
- the stop ids (the reference's generation_config EOS is our set), the last-token logits
  within LOGITS_TOL, and a 20-token greedy continuation, identical, which must be long and
  varied enough for the comparison to mean something.

What differs between families are options: the reference's key for image pixels
(`pixel_values`, Video-LLaVA's `pixel_values_images`), whether the processor pads each
image's views to the batch's most (anyres: LLaVA-NeXT, NeXT-Video, OneVision; the padding
views must then be zero), the opening token of BOS-less tokenizers (Qwen2) and how many
distinct tokens the continuation needs.

transformers is imported inside functions: it is the test oracle, never a dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from llava_cli.engine import Engine
from llava_cli.generate import Sampling
from llava_cli.media import load_media

LOGITS_TOL = 1e-4
PIXEL_TOL = 1e-5
QUESTION = "Why is this funny?"
NEW_TOKENS = 20


# -- the reference's inputs -------------------------------------------------------------------------

def reference_frames(path: Path, num_frames: int) -> np.ndarray:
    """The model cards' recipe: decode everything, keep np.arange(0, total, total/N)."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    indices = np.arange(0, len(frames), len(frames) / num_frames).astype(int)
    return np.stack([frames[i] for i in indices])


def reference_inputs(processor, media: list[tuple[str, object]], question: str, system: str | None = None):
    """The processor's chat template, then the processor on the prompt and the media.

    ``media``: (kind, object) in prompt order, kind "image" (a PIL image) or "video" (frames).

    Text alone on Video-LLaVA goes to the tokenizer: 4.48.3's ``VideoLlavaProcessor.__call__``
    raises UnboundLocalError ('encoded_images') without media, and for text alone it would
    only run the tokenizer. Every other processor is called as a user would call it.
    """
    content = [{"type": kind} for kind, _ in media] + [{"type": "text", "text": question}]
    conversation = [{"role": "user", "content": content}]
    if system:
        conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    images = [obj for kind, obj in media if kind == "image"] or None
    videos = [obj for kind, obj in media if kind == "video"] or None
    if images is None and videos is None and type(processor).__name__ == "VideoLlavaProcessor":
        return processor.tokenizer(prompt, return_tensors="pt")
    return processor(text=prompt, images=images, videos=videos, return_tensors="pt")


def load_pretrained(folder: Path, model_class: str, processor_class: str, **model_kwargs):
    """A reference model (float32, eval mode) and its processor, loaded from the folder as a user would."""
    import transformers

    model = getattr(transformers, model_class).from_pretrained(folder, torch_dtype="float32", **model_kwargs)
    return model.eval(), getattr(transformers, processor_class).from_pretrained(folder)


class Medium(NamedTuple):
    """One media file of a prompt: what we load (path, frames) and what the reference gets."""

    kind: str  # "image" | "video"
    path: Path
    frames: int  # ours samples this many frames of a video (ignored for images)
    reference: object  # a PIL image or a (frames, H, W, 3) array


def image(path: Path) -> Medium:
    from PIL import Image

    return Medium("image", path, 1, Image.open(path).convert("RGB"))


def video(path: Path, frames: int) -> Medium:
    return Medium("video", path, frames, reference_frames(path, frames))


# -- the pair ----------------------------------------------------------------------------------------

class Pair:
    """Our engine and the reference, loaded from the same folder.

    ``load_reference(folder)`` returns (reference model, processor); ``checks`` are the
    family's `check_parity` options, applied by `check`.
    """

    def __init__(self, folder: Path, load_reference: Callable[[Path], tuple], *, question: str = QUESTION,
                 **checks) -> None:
        self.folder = Path(folder)
        self.engine = Engine.load(self.folder, device="cpu", dtype="float32")
        self.ref_model, self.processor = load_reference(self.folder)
        self.question = question
        self.checks = checks

    def prepare(self, media: Sequence[Medium], system: str | None = None):
        """(our Prepared, the reference's inputs) for one prompt."""
        ours = [load_media(m.path, num_frames=m.frames) for m in media]
        prepared = self.engine.prepare(ours, self.question, system=system)
        ref = reference_inputs(self.processor, [(m.kind, m.reference) for m in media], self.question, system)
        return prepared, ref

    def check(self, media: Sequence[Medium], system: str | None = None) -> None:
        prepared, ref = self.prepare(media, system)
        check_parity(self.engine, self.ref_model, prepared, ref, **self.checks)


# -- the checks --------------------------------------------------------------------------------------

def check_parity(engine: Engine, ref_model, prepared, ref, *, image_key: str = "pixel_values",
                 video_key: str = "pixel_values_videos", padded_images: bool = False,
                 opening: str | None = None, min_distinct: int = 0) -> None:
    """Prompt ids, pixel values, last-token logits and a 20-token greedy continuation.

    ``image_key``/``video_key``: the reference's pixel keys. ``padded_images``: the processor
    pads each image's views to the batch's most (ours are compared with the leading views, the
    rest must be zero); else every item's shape is the reference's exactly. ``opening``: the
    tokenizer has no BOS and the prompt starts with this token; else exactly one BOS.
    ``min_distinct``: how many distinct tokens the reference's continuation must hold.
    """
    check_prompt(engine, prepared, ref, opening=opening)
    check_pixels(prepared, ref, image_key=image_key, video_key=video_key, padded_images=padded_images)
    check_outputs(engine, ref_model, prepared, ref, min_distinct=min_distinct)


def check_prompt(engine: Engine, prepared, ref, *, opening: str | None = None) -> None:
    ids = ref["input_ids"][0].tolist()
    assert prepared.input_ids == ids

    tok = engine.tokenizer
    if opening is None:
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # exactly one BOS
    else:
        assert tok.bos_token_id is None and ids[0] == tok.token_to_id(opening)  # no BOS

    for kind, token in engine.family.token_ids().items():
        assert ids.count(token) == sum(item.num_tokens for item in prepared.items if item.kind == kind)


def check_pixels(prepared, ref, *, image_key: str = "pixel_values", video_key: str = "pixel_values_videos",
                 padded_images: bool = False) -> None:
    for kind, key in (("image", image_key), ("video", video_key)):
        ours = [item.pixels for item in prepared.items if item.kind == kind]
        if not ours:
            assert key not in ref
            continue
        assert key in ref and len(ref[key]) == len(ours)
        for pixels, theirs in zip(ours, ref[key]):
            theirs = theirs.reshape(-1, *theirs.shape[-3:])  # (views, 3, S, S)
            if kind == "image" and padded_images:
                views = pixels.shape[0]
                assert not theirs[views:].any()  # the rest is the processor's batch padding
                theirs = theirs[:views]
            assert pixels.shape == theirs.shape
            assert (pixels - theirs).abs().max().item() <= PIXEL_TOL


def reference_stop_ids(ref_model) -> frozenset[int]:
    """The EOS the reference's generate stops on."""
    eos = ref_model.generation_config.eos_token_id
    return frozenset([eos] if isinstance(eos, int) else eos)


def attention_setups(device: torch.device, dtype: torch.dtype) -> list[tuple[str, int]]:
    """(attention backend, prefill chunk) pairs to check: every backend that runs here,
    SDPA with the default chunk, eager with a small odd chunk that splits every prompt
    (and its media spans) unevenly."""
    from llava_cli.engine import DEFAULT_PREFILL_CHUNK
    from llava_cli.nn.attention import flash_available

    setups = [("sdpa", DEFAULT_PREFILL_CHUNK), ("eager", 97)]
    if flash_available(device, dtype) is None:
        setups.append(("flash", DEFAULT_PREFILL_CHUNK))
    return setups


def check_outputs(engine: Engine, ref_model, prepared, ref, *, min_distinct: int = 0) -> None:
    """Stop ids, last-token logits, then 20 greedy tokens (the reference's without its stop
    id), for each of our attention setups."""
    assert reference_stop_ids(ref_model) == engine.stop_ids

    with torch.no_grad():
        ref_logits = ref_model(**ref).logits[0, -1]
        ref_out = ref_model.generate(**ref, max_new_tokens=NEW_TOKENS, do_sample=False)
    ref_tokens = [t for t in ref_out[0, ref["input_ids"].shape[1]:].tolist() if t not in engine.stop_ids]
    assert len(ref_tokens) >= 5, "the reference stopped at once: the check would be vacuous"
    assert len(set(ref_tokens)) >= min_distinct, "one repeated token: the decode check would be weak"

    backend, chunk = engine.attention, engine.model.text.prefill_chunk
    try:
        for setup in attention_setups(engine.device, engine.dtype):
            engine.set_attention(setup[0])
            engine.set_prefill_chunk(setup[1])
            ours_logits = engine.logits(prepared)
            assert (ours_logits - ref_logits).abs().max().item() <= LOGITS_TOL, setup
            ours_tokens = list(engine.answer(prepared, Sampling(max_new_tokens=NEW_TOKENS)).tokens())
            assert ours_tokens == ref_tokens, setup
            batched_logits, batched_tokens = run_batched(engine, prepared)
            assert (batched_logits - ref_logits).abs().max().item() <= LOGITS_TOL, ("batched", setup)
            assert batched_tokens == ref_tokens, ("batched", setup)
    finally:
        engine.set_attention(backend)
        engine.set_prefill_chunk(chunk)


FILLERS = ("Hi.", "Tell me everything you know about the history of the bicycle, in detail, please, "
                  "from the first designs to the racing machines of today.")


def run_batched(engine: Engine, prepared) -> tuple[torch.Tensor, list[int]]:
    """The case's first-token logits and greedy tokens when it shares the generation core
    with other sequences of different lengths: a long filler already decoding when the
    case joins mid-flight, a short one that joins with it and finishes early (3 tokens),
    and the case's own prompt a second time, sampled. Every sequence has its own row and
    positions; none may change another's numbers."""
    core = engine.core(4)
    long_filler = core.submit(engine.request(engine.prepare([], FILLERS[1]), Sampling(max_new_tokens=NEW_TOKENS)))
    for _ in range(3):
        core.step()
    assert not long_filler.done and long_filler.result.tokens, "the filler should be decoding when the case joins"
    case = core.submit(engine.request(prepared, Sampling(max_new_tokens=NEW_TOKENS), keep_logits=True))
    short = core.submit(engine.request(engine.prepare([], FILLERS[0]), Sampling(max_new_tokens=3)))
    twin = core.submit(engine.request(prepared, Sampling(max_new_tokens=NEW_TOKENS, temperature=1.0, seed=5)))
    while core.busy:
        core.step()
    assert short.result.stop_reason in ("stop", "length") and len(short.result.tokens) <= 3
    assert twin.done and long_filler.done
    return case.result.logits, case.result.tokens
