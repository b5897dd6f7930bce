"""Settings: built-in defaults < the configuration file < LLAVA_* variables < flags.

The file is ``config.toml`` in ``platformdirs.user_config_dir("llava")`` (on Linux
~/.config/llava/config.toml), or the file ``LLAVA_CONFIG`` names:

    model = "ov-7b"            # an alias, org/name[@revision] or a folder
    device = "cuda"
    dtype = "bfloat16"
    frames = 16                # or: fps = 1.0 with max_frames = 32
    temperature = 0.2
    max_new_tokens = 256
    system = "Answer in one sentence."

Every key has an environment variable (``frames`` → ``LLAVA_FRAMES``) and a flag
(``--frames``); ``SETTINGS`` is the one table of them, which the CLI, ``llava config
show`` and the man page generator all read. A value that is not set anywhere is None
and the command's own default applies (the family's frame count, the checkpoint's
sampling settings, …).

``frames`` and ``fps`` are one choice, how to sample a video: the highest level that sets
either decides, so ``--frames 16`` wins over ``fps = 1`` in the file.
"""

from __future__ import annotations

import difflib
import math
import os
import stat
import sys
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .errors import ConfigError, LlavaError, UsageError
from .hub import DEFAULT_MODEL
from .media.spec import DECODERS

DECODER_NAMES = DECODERS  # media/spec.py imports no PyAV
DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")
ATTN_NAMES = ("auto", "sdpa", "flash", "eager")  # nn.attention.CHOICES, without importing torch here
QUANTIZE_NAMES = ("none", "4bit", "4bit-dq", "8bit")  # nn.quant.CHOICES
DEFAULT_PARALLEL = 8  # see the generation core's benchmark (bench/batch_parallel.py)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One setting: its config.toml key, LLAVA_* variable and flag, declared once. The
    commands' shared options (commands/options.py) are generated from these, in this order."""

    key: str  # in config.toml; the flag is --key with _ → -
    kind: type  # str, int, float or bool
    help: str  # for config.toml, `config show` and the man page's CONFIGURATION
    default: Any = None  # None: the command decides (shown as `unset_means`)
    unset_means: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    above: float | None = None  # strictly greater than
    short: str = ""  # the flag's one-letter form, e.g. -f
    metavar: str = ""  # the flag's value in --help (bool flags have none)
    flag_help: str = ""  # the flag's line in --help
    commands: tuple[str, ...] = ()  # the commands with the flag; () = ask, chat and batch

    @property
    def env(self) -> str:
        return "LLAVA_" + self.key.upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("model", str, "the model: an alias, org/name[@revision] or a folder", DEFAULT_MODEL,
            short="-m", metavar="MODEL",
            flag_help="An alias such as ov-7b (see llava models list --aliases), a Hub repo org/name[@revision], "
                      "or a model folder. [default: LLAVA_MODEL, else model in config.toml, else "
                      f"{DEFAULT_MODEL}]"),
    Setting("frames", int, "frames sampled uniformly from each video",
            unset_means="the family's default (8 for most)", minimum=1, short="-f", metavar="N",
            flag_help="Frames sampled uniformly from each video. [default: the family's, 8 for most]"),
    Setting("fps", float, "sample videos at this rate instead of a fixed count",
            unset_means="a fixed count (frames)", above=0, metavar="FPS",
            flag_help="Sample videos at this many frames per second instead of a fixed count."),
    Setting("max_frames", int, "at most this many frames per video", unset_means="no cap", minimum=1,
            metavar="N", flag_help="At most this many frames per video (with --fps, the rate is lowered to fit)."),
    Setting("decoder", str, "video decoder", "pyav", choices=DECODER_NAMES, metavar="NAME",
            flag_help="Video decoder: pyav or decord (falls back to pyav). [default: pyav]"),
    Setting("time_instruction", bool, "put LLaVA-Video's time instruction (how long the video lasts, how many "
            "frames were sampled and when each was taken) before a question about a video",
            unset_means="on for checkpoints whose config.json sets add_time_instruction (LLaVA-Video), else off",
            commands=("ask", "chat", "batch", "serve"),
            flag_help="Put LLaVA-Video's time instruction (the video's length and each sampled frame's time) before "
                      "video questions; OneVision-class models only. [default: on where config.json sets "
                      "add_time_instruction]"),
    Setting("max_new_tokens", int, "stop after this many answer tokens",
            unset_means="the checkpoint's, else 512", minimum=1, short="-n", metavar="N",
            flag_help="Stop after this many answer tokens. [default: the checkpoint's, else 512]"),
    Setting("temperature", float, "0 = greedy; > 0 samples",
            unset_means="the checkpoint's generation config (greedy unless it samples)", minimum=0,
            short="-t", metavar="T", flag_help="0 = greedy; > 0 samples. [default: the checkpoint's]"),
    Setting("top_p", float, "nucleus sampling threshold", unset_means="the checkpoint's", above=0,
            metavar="P", flag_help="Nucleus sampling threshold."),
    Setting("top_k", int, "sample from the k most likely tokens", unset_means="the checkpoint's", minimum=0,
            metavar="K", flag_help="Sample from the k most likely tokens."),
    Setting("device", str, "where to run: auto, cpu, cuda, cuda:N or mps", "auto", metavar="DEVICE",
            flag_help="auto, cpu, cuda, cuda:N or mps. [default: auto]"),
    Setting("dtype", str, "compute dtype", "auto", choices=DTYPE_NAMES, metavar="DTYPE",
            flag_help="auto, float32, float16 or bfloat16. [default: auto]"),
    Setting("attn", str, "attention backend: flash-attn where it runs, else PyTorch SDPA", "auto",
            choices=ATTN_NAMES, metavar="BACKEND",
            flag_help="Attention: auto, sdpa, flash (FlashAttention-2) or eager. [default: auto, flash where it "
                      "runs, else sdpa]"),
    Setting("quantize", str, "language-model weights in 4 bits (NF4; -dq: double quantization) or 8 "
            "(LLM.int8), through bitsandbytes", "none", choices=QUANTIZE_NAMES, metavar="MODE",
            flag_help="Language-model weights through bitsandbytes: 4bit (NF4), 4bit-dq (NF4, double "
                      "quantization), 8bit (LLM.int8) or none. [default: none]"),
    Setting("compile", bool, "compile the decode step with torch.compile (CUDA graphs on GPU); "
            "the first answer waits for the compilation", False,
            flag_help="Compile the decode step with torch.compile (CUDA graphs on GPU); the first answer waits "
                      "for it. [default: off]"),
    Setting("prefill_chunk", int, "prompt positions per prefill pass, bounding the memory of long "
            "video prompts (0: the whole prompt at once)", 1024, minimum=0, metavar="N",
            flag_help="Prompt positions per prefill pass; bounds the memory of long video prompts (0: all at "
                      "once). [default: 1024]"),
    Setting("system", str, "system prompt", unset_means="none", short="-s", metavar="TEXT",
            flag_help="System prompt."),
    Setting("host", str, "a running llava serve that llava ask and chat send their questions to (host[:port] "
            "or http://host:port)", unset_means="none: the model runs in this process", metavar="HOST",
            commands=("ask", "chat"),
            flag_help="Send the questions to the llava serve at HOST[:PORT] (its model stays loaded between "
                      "questions) instead of loading the model here. [default: LLAVA_HOST, else none]"),
    Setting("parallel", int, "questions llava batch answers at once (continuous batching: one decode step "
            "for all of them)", DEFAULT_PARALLEL, minimum=1, metavar="N", commands=("batch", "serve"),
            flag_help="Answer up to N questions at once: their decode steps are batched, and a finished "
                      f"answer's slot goes to the next input at once. [default: {DEFAULT_PARALLEL}]"),
)
BY_KEY = {s.key: s for s in SETTINGS}


def config_path() -> Path:
    override = os.environ.get("LLAVA_CONFIG")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("llava")) / "config.toml"


def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli  # type: ignore[import-not-found]
    except ImportError:
        return None
    return tomli


MAX_CONFIG_BYTES = 1024 * 1024  # a configuration file is a few lines; read at most this much


def load_config(warn: Callable[[str], None] | None = None, *, missing_ok: bool = False) -> dict:
    """The configuration file's table; {} when there is none (an error when LLAVA_CONFIG
    names a file that does not exist, unless ``missing_ok``). The file must be a regular
    file of at most MAX_CONFIG_BYTES: LLAVA_CONFIG naming a folder, a FIFO or a device is
    an error, never silently ignored (nor read forever)."""
    path = config_path()
    named = bool(os.environ.get("LLAVA_CONFIG"))
    where = f"LLAVA_CONFIG names {path}, which" if named else str(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        if named and not missing_ok:
            raise ConfigError(f"LLAVA_CONFIG names {path}, which does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(status.st_mode):
        raise ConfigError(f"{where} is a folder, not a configuration file")
    if not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"{where} is not a regular file")
    if status.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is too large for a configuration file ({status.st_size:,} bytes)")
    toml = _toml_module()
    if toml is None:
        if warn is not None:
            warn(f"{path} ignored: reading it needs Python 3.11 or the tomli package (pip install tomli)")
        return {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is too large for a configuration file")
        return toml.loads(raw.decode("utf-8"))
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid TOML: nested too deeply") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------
# Values and where they came from


def _check(setting: Setting, value: Any, where: str, error: type[LlavaError] = ConfigError) -> Any:
    """A typed, range-checked value, or a one-line error naming where it was set (a
    flag's problem is a usage error, exit 2; the file's or environment's, exit 1)."""
    kind = setting.kind
    if kind is bool:
        ok = isinstance(value, bool)
        expected = "true or false"
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "a whole number"
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a number"
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
        expected = "a string"
        if ok and not value.strip() and setting.key != "system":
            ok, expected = False, "a non-empty string"
        value = value.strip() if ok and setting.key != "system" else value
    problem = None
    if not ok:
        problem = f"must be {expected}"
    elif setting.choices and value not in setting.choices:
        problem = f"must be one of {', '.join(setting.choices)}"
    elif setting.minimum is not None and value < setting.minimum:
        problem = f"must be at least {setting.minimum:g}"
    elif setting.above is not None and value <= setting.above:
        problem = f"must be greater than {setting.above:g}"
    if problem is None:
        return value
    if where == setting.flag:
        raise error(f"{setting.flag} {problem}, not {value!r}")
    if where == setting.env:
        raise error(f"{setting.env} {problem}, not {value!r}")
    raise error(f"{where}: '{setting.key}' {problem}, not {value!r}")


def _from_env(setting: Setting) -> Any:
    raw = os.environ.get(setting.env)
    if raw is None or raw == "":
        return None
    value: Any = raw
    if setting.kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ConfigError(f"{setting.env}={raw!r} is not a yes/no value (1, true, yes, on; 0, false, no, off)")
        value = word in _TRUE
    elif setting.kind in (int, float):
        try:
            value = setting.kind(raw.strip())
        except ValueError:
            expected = "a whole number" if setting.kind is int else "a number"
            raise ConfigError(f"{setting.env}={raw!r} is not {expected}") from None
    return _check(setting, value, setting.env)


def file_values(warn: Callable[[str], None] | None = None, *, missing_ok: bool = False) -> dict[str, Any]:
    """The file's settings, checked; unknown keys are warned about, not fatal."""
    table = load_config(warn, missing_ok=missing_ok)
    path = config_path()
    values = {}
    for key, value in table.items():
        setting = BY_KEY.get(key)
        if setting is None:
            if warn is not None:
                close = difflib.get_close_matches(key, list(BY_KEY), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                warn(f"{path}: unknown setting '{key}'{hint} ignored")
            continue
        values[key] = _check(setting, value, str(path))
    return values


def env_values() -> dict[str, Any]:
    return {s.key: v for s in SETTINGS if (v := _from_env(s)) is not None}


# Every setting's value, typed (None: not set anywhere): one field per entry of SETTINGS.
Settings = make_dataclass("Settings", [(s.key, Optional[s.kind]) for s in SETTINGS], frozen=True,
                          namespace={"__doc__": "The settings in effect: defaults < file < LLAVA_* < flags."})


@dataclass
class Resolved:
    """Every setting's value (None: not set anywhere) and where it came from."""

    values: dict[str, Any]
    sources: dict[str, str]  # key → "--flag", "LLAVA_X", the file's path or "default"

    @property
    def settings(self) -> Any:
        """The values as a typed ``Settings``."""
        return Settings(**self.values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None


def resolve(flags: Mapping[str, Any] | None = None, warn: Callable[[str], None] | None = None, *,
            missing_ok: bool = False) -> Resolved:
    """Merge the levels: defaults < file < environment < ``flags`` (None = flag not given)."""
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    for key, value in given.items():
        if key in BY_KEY:
            given[key] = _check(BY_KEY[key], value, BY_KEY[key].flag, UsageError)
    path = str(config_path())
    levels = [("default", {s.key: s.default for s in SETTINGS if s.default is not None}),
              (path, file_values(warn, missing_ok=missing_ok)), ("env", env_values()), ("flag", given)]
    values: dict[str, Any] = {s.key: None for s in SETTINGS}
    sources: dict[str, str] = {s.key: "default" for s in SETTINGS}
    for level, table in levels:
        # frames and fps are one choice: a level that sets either replaces both.
        if "frames" in table or "fps" in table:
            values["frames"], values["fps"] = None, None
        for key, value in table.items():
            if key not in values:
                continue
            values[key] = value
            sources[key] = {"env": BY_KEY[key].env, "flag": BY_KEY[key].flag}.get(level, level)
    return Resolved(values, sources)


def model_setting(cli_value: str | None = None, warn: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(model reference, where it came from): --model, LLAVA_MODEL, the file, the default."""
    if cli_value:
        return cli_value, "--model"
    setting = BY_KEY["model"]
    env = _from_env(setting)
    if env is not None:
        return env, setting.env
    value = load_config(warn).get("model")  # only this key: a bad frames = … is not our business here
    if value is not None:
        return _check(setting, value, str(config_path())), str(config_path())
    return DEFAULT_MODEL, "default"


# ---------------------------------------------------------------------------------------
# llava config show / edit


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        import json

        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def show(warn: Callable[[str], None] | None = None) -> str:
    """The effective settings (file and environment, before flags) as TOML, each with its
    source, so the output can seed a config file."""
    path = config_path()
    resolved = resolve(warn=warn, missing_ok=True)
    state = "" if path.is_file() else " (does not exist)"
    lines = [f"# configuration file: {path}{state}"]
    width = max(len(s.key) for s in SETTINGS)
    for setting in SETTINGS:
        value = resolved.values[setting.key]
        if value is None:
            lines.append(f"# {setting.key:<{width}} = …  # unset: {setting.unset_means}")
        else:
            lines.append(f"{setting.key:<{width}} = {_toml_value(value)}  # {resolved.sources[setting.key]}")
    return "\n".join(lines)


def template() -> str:
    """A new config.toml: every setting, commented out, with its meaning."""
    lines = ["# llava configuration. Environment variables (LLAVA_<KEY>) override these values,",
             "# and command-line flags override both. `llava config show` prints what applies.", ""]
    for setting in SETTINGS:
        extra = f" ({', '.join(setting.choices)})" if setting.choices else ""
        default = (f"default {_toml_value(setting.default)}" if setting.default is not None
                   else f"unset: {setting.unset_means}")
        lines.append(f"# {setting.help}{extra}; {default}")
        example = setting.default if setting.default is not None else _EXAMPLES[setting.key]
        lines.append(f"# {setting.key} = {_toml_value(example)}")
        lines.append("")
    return "\n".join(lines)


_EXAMPLES = {"frames": 16, "fps": 1.0, "max_frames": 32, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
             "max_new_tokens": 256, "system": "Answer in one sentence.", "host": "127.0.0.1:8000",
             "time_instruction": True}


def editor_command() -> list[str]:
    """$VISUAL, else $EDITOR, else a platform default, split like a shell would."""
    import shlex
    import shutil

    for name, value in (("VISUAL", os.environ.get("VISUAL")), ("EDITOR", os.environ.get("EDITOR"))):
        if value and value.strip():
            try:
                return shlex.split(value)
            except ValueError:
                raise ConfigError(f"${name} is not a valid command line: {value!r}") from None
    if os.name == "nt":
        return ["notepad"]
    for candidate in ("sensible-editor", "nano", "vi"):
        if shutil.which(candidate):
            return [candidate]
    raise ConfigError("no editor found: set $EDITOR (for example EDITOR=nano)")
