"""The options that ask, chat and batch share, each declared once.

A command asks for them with one parameter, ``options: RunOptions = SHARED``, and the
``shared_options`` decorator puts the options themselves in that place of its signature
(so typer sees ordinary parameters and the help lists them there; ``--quiet``,
``--verbose`` and ``--debug`` come last), then hands them back to the command as one
``RunOptions``. A new shared option is one entry in ``RUN_OPTIONS`` (or ``OUTPUT_OPTIONS``).

The walk of an option, e.g. ``--frames``: its entry below → ``RunOptions.frames`` →
``Run.create`` merges it with LLAVA_FRAMES and config.toml (``config.resolve`` →
``config.Settings.frames``) → ``Run.open`` turns it into the ``FrameSpec`` the media
loader samples with (the family's own count when unset, ``Family.frames_for``).

Their defaults are None: a value not given here comes from LLAVA_* and config.toml (see
config.py), else the command's own default.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, make_dataclass
from typing import Any, Callable, Optional

import typer

MODEL_HELP = ("An alias such as ov-7b (see llava models list --aliases), a Hub repo "
              "org/name[@revision], or a model folder. [default: LLAVA_MODEL, else model in "
              "config.toml, else llava-hf/llava-onevision-qwen2-0.5b-ov-hf]")


@dataclass(frozen=True)
class SharedOption:
    name: str  # the parameter, and the RunOptions field
    annotation: Any
    declaration: Any  # typer.Option(...)


def _option(name: str, annotation: Any, *args: Any, **kwargs: Any) -> SharedOption:
    return SharedOption(name, annotation, typer.Option(*args, **kwargs))


RUN_OPTIONS: tuple[SharedOption, ...] = (
    _option("model", Optional[str], None, "--model", "-m", metavar="MODEL", help=MODEL_HELP, show_default=False),
    _option("offline", bool, False, "--offline", help="Use only the local cache; never touch the network."),
    _option("frames", Optional[int], None, "--frames", "-f", metavar="N", min=1, show_default=False,
            help="Frames sampled uniformly from each video. [default: the family's, 8 for most]"),
    _option("fps", Optional[float], None, "--fps", metavar="FPS", show_default=False,
            help="Sample videos at this many frames per second instead of a fixed count."),
    _option("max_frames", Optional[int], None, "--max-frames", metavar="N", min=1, show_default=False,
            help="At most this many frames per video (with --fps, the rate is lowered to fit)."),
    _option("start", Optional[str], None, "--start", metavar="TIME", show_default=False,
            help="Sample videos from this time on: seconds (90, 90.5) or [HH:]MM:SS[.ms]."),
    _option("end", Optional[str], None, "--end", metavar="TIME", show_default=False,
            help="Sample videos up to this time (exclusive), same forms as --start."),
    _option("decoder", Optional[str], None, "--decoder", metavar="NAME", show_default=False,
            help="Video decoder: pyav or decord (falls back to pyav). [default: pyav]"),
    _option("long_video", bool, False, "--long-video",
            help="If the prompt exceeds the context, stretch RoPE to fit it."),
    _option("max_new_tokens", Optional[int], None, "--max-new-tokens", "-n", metavar="N", show_default=False,
            help="Stop after this many answer tokens. [default: the checkpoint's, else 512]"),
    _option("temperature", Optional[float], None, "--temperature", "-t", metavar="T", show_default=False,
            help="0 = greedy; > 0 samples. [default: the checkpoint's]"),
    _option("top_p", Optional[float], None, "--top-p", metavar="P", show_default=False,
            help="Nucleus sampling threshold."),
    _option("top_k", Optional[int], None, "--top-k", metavar="K", show_default=False,
            help="Sample from the k most likely tokens."),
    _option("seed", Optional[int], None, "--seed", metavar="S", show_default=False,
            help="Random seed for sampling (0 to 2**64-1)."),
    _option("device", Optional[str], None, "--device", metavar="DEVICE", show_default=False,
            help="auto, cpu, cuda, cuda:N or mps. [default: auto]"),
    _option("dtype", Optional[str], None, "--dtype", metavar="DTYPE", show_default=False,
            help="auto, float32, float16 or bfloat16. [default: auto]"),
    _option("attn", Optional[str], None, "--attn", metavar="BACKEND", show_default=False,
            help="Attention: auto, sdpa, flash (FlashAttention-2) or eager. [default: auto, flash where it runs, "
                 "else sdpa]"),
    _option("quantize", Optional[str], None, "--quantize", metavar="MODE", show_default=False,
            help="Language-model weights through bitsandbytes: 4bit (NF4), 4bit-dq (NF4, double quantization), "
                 "8bit (LLM.int8) or none. [default: none]"),
    _option("compile", Optional[bool], None, "--compile/--no-compile", show_default=False,
            help="Compile the decode step with torch.compile (CUDA graphs on GPU); the first answer waits for it. "
                 "[default: off]"),
    _option("prefill_chunk", Optional[int], None, "--prefill-chunk", metavar="N", min=0, show_default=False,
            help="Prompt positions per prefill pass; bounds the memory of long video prompts (0: all at once). "
                 "[default: 1024]"),
    _option("system", Optional[str], None, "--system", "-s", metavar="TEXT", show_default=False,
            help="System prompt."),
)

# After each command's own options, in every command's help.
OUTPUT_OPTIONS: tuple[SharedOption, ...] = (
    _option("quiet", bool, False, "--quiet", "-q",
            help="Print only the answer and errors: no progress, no warnings."),
    _option("verbose", bool, False, "--verbose", "-v",
            help="On stderr: the frames used and their times, each media encoding, token counts and speed."),
    _option("debug", bool, False, "--debug", help="Show tracebacks on errors."),
)

RunOptions = make_dataclass(
    "RunOptions", [(o.name, o.annotation) for o in (*RUN_OPTIONS, *OUTPUT_OPTIONS)], frozen=True,
    namespace={"__doc__": "The shared options as one command invocation gave them (None: not given)."})

SHARED: Any = object()  # the default of a command's ``options`` parameter: "put the shared options here"


def shared_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace the command's ``options`` parameter by the shared options, and call it with
    them gathered into one ``RunOptions``."""
    signature = inspect.signature(command)
    hints = typing.get_type_hints(command)

    def parameter(option: SharedOption) -> inspect.Parameter:
        return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.declaration,
                                 annotation=option.annotation)

    parameters: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name == "options":
            parameters += [parameter(o) for o in RUN_OPTIONS]
        else:
            parameters.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                                            annotation=hints.get(param.name, param.annotation)))
    parameters += [parameter(o) for o in OUTPUT_OPTIONS]
    names = [o.name for o in (*RUN_OPTIONS, *OUTPUT_OPTIONS)]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        options = RunOptions(**{name: kwargs.pop(name) for name in names})
        return command(**kwargs, options=options)

    wrapper.__signature__ = signature.replace(parameters=parameters, return_annotation=None)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
