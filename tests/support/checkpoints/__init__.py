"""Tiny random checkpoints in the Hub layout, one builder per family, written by transformers
4.48.3 (the test oracle, imported inside the builders only):

- LLaVA-NeXT-Video: support.checkpoints.next_video.make_next_video(folder, TinySpec(...))
- LLaVA-1.5: support.checkpoints.llava.make_llava15(folder, tokenizer=..., seed=...)
- Video-LLaVA: support.checkpoints.llava.make_video_llava(folder, tokenizer=..., seed=...)
- LLaVA-NeXT (v1.6, every backbone): support.checkpoints.next.make_next(folder, SPECS[name])
- LLaVA-OneVision: support.checkpoints.onevision.make_onevision(folder, tokenizer=..., tied=...)
- LLaVA-Interleave (LLaVA-1.5 architecture, SigLIP + Qwen2):
  support.checkpoints.interleave.make_llava_siglip(folder, tokenizer=..., tied=...)

Each family module also has the `load_reference` that loads what it wrote into transformers.
The hub chat templates they share are in support.checkpoints.common.
"""

from support.checkpoints.interleave import make_llava_siglip
from support.checkpoints.llava import make_llava15, make_video_llava
from support.checkpoints.next import SPECS, NextSpec, make_next
from support.checkpoints.next_video import TinySpec, make_next_video
from support.checkpoints.onevision import make_onevision, make_onevision_sized

__all__ = ["SPECS", "NextSpec", "TinySpec", "make_llava15", "make_llava_siglip", "make_next", "make_next_video",
           "make_onevision", "make_onevision_sized", "make_video_llava"]
