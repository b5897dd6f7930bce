#!/usr/bin/env python3
"""Generate the man page and the shell completion scripts from the live Typer app.

    python scripts/gen_docs.py          # (re)write man/llava.1 and completions/*
    python scripts/gen_docs.py --check  # exit 1 and list stale files, write nothing

Everything about commands, options, arguments, defaults and environment variables is read
from `llava_cli.cli.app` (through `typer.main.get_command`), the exit codes from the EXIT_*
constants in `llava_cli/errors.py`, and the environment variables from the option `envvar`s
plus the `os.environ`/`os.getenv` reads in the package source. The few things the app cannot
say (value names, value completions, prose) live in the tables below; each table entry is
checked against the app, so a renamed or removed option makes this script fail instead of
writing stale docs. The output is deterministic: no dates, only `llava_cli.__version__`.
"""

from __future__ import annotations

import argparse
import enum
import pathlib
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import typer  # noqa: E402

import llava_cli  # noqa: E402
from llava_cli import errors  # noqa: E402
from llava_cli import config as llava_config  # noqa: E402
from llava_cli import schema  # noqa: E402
from llava_cli.cli import app  # noqa: E402
from llava_cli.hub import ALIASES, DEFAULT_MODEL  # noqa: E402
from llava_cli.repl import HELP as CHAT_HELP  # noqa: E402

PROG = "llava"
MAN_PATH = "man/llava.1"
BASH_PATH = "completions/llava.bash"
ZSH_PATH = "completions/_llava"
FISH_PATH = "completions/llava.fish"

# --------------------------------------------------------------------------- hand-kept tables
# Each key must name a live option (checked in `collect`).

# How shells complete an option's value: ("choices", [...]), ("dirs",), ("files",) or
# ("models",) (the model aliases and directories).
# Options not listed (and without an Enum/Path type) take free text: nothing is offered.
VALUE_COMPLETIONS: Dict[str, tuple] = {
    "--model": ("models",),
    "--device": ("choices", ["auto", "cpu", "cuda", "mps"]),
    "--output": ("files",),
    "--allowed-media-path": ("dirs",),
    # a setting with a fixed set of values completes them (--dtype, --decoder, --attn, --quantize)
    **{s.flag: ("choices", list(s.choices)) for s in llava_config.SETTINGS if s.choices},
}

# How shells complete positional arguments, per command (default: files): "files", "dirs",
# "aliases" (the model aliases) or "models" (aliases and directories).
POSITIONAL_COMPLETIONS: Dict[str, str] = {
    "ask": "files",  # [MEDIA]... are image and video files; QUESTION is free text
    "chat": "files",  # [MEDIA]...
    "batch": "files",  # INPUT... are files and folders
    "models pull": "aliases",
    "models rm": "aliases",
    "models info": "models",
}

# Environment variables the package reads; the generator fails on one missing here. The
# LLAVA_* variable of each setting in llava_cli/config.py's SETTINGS is documented from
# that table and need not be listed.
ENV_DOCS: Dict[str, str] = {
    "LLAVA_CONFIG": "The configuration file to read instead of \\fIconfig.toml\\fR in the "
                    "user configuration directory (see \\fBFILES\\fR).",
    "LLAVA_DEBUG": "When set to a non-empty value, errors are printed with their traceback, "
                   "as with \\fB\\-\\-debug\\fR.",
    "LLAVA_API_KEY": "The API key: \\fBllava serve\\fR requires it of every \\fI/v1\\fR request "
                     "(\\fBAuthorization: Bearer\\fR \\fIKEY\\fR), as with \\fB\\-\\-api\\-key\\fR; "
                     "\\fBllava ask\\fR sends it to the server \\fBLLAVA_HOST\\fR names.",
    "NO_COLOR": "When set to a non-empty value, nothing is coloured or styled (https://no\\-color.org).",
    "VISUAL": "The editor \\fBllava config edit\\fR runs (before \\fBEDITOR\\fR).",
    "EDITOR": "The editor \\fBllava config edit\\fR runs when \\fBVISUAL\\fR is not set (else "
              "sensible\\-editor, nano or vi).",
    "XDG_STATE_HOME": "On Linux, the folder of the \\fBllava chat\\fR input history "
                      "(\\fI$XDG_STATE_HOME/llava/history\\fR, default \\fI~/.local/state\\fR).",
    "XDG_CONFIG_HOME": "On Linux, the folder of the configuration file "
                       "(\\fI$XDG_CONFIG_HOME/llava/config.toml\\fR, default \\fI~/.config\\fR).",
    "RAY_ADDRESS": "The Ray cluster \\fBllava batch \\-\\-ray\\fR joins when \\fB\\-\\-ray\\-address\\fR is not "
                   "given (read by Ray). Without it, a cluster started on this machine with \\fBray start\\fR, "
                   "else a new local one. A cluster with token authentication also needs "
                   "\\fBRAY_AUTH_MODE=token\\fR and its token (\\fI~/.ray/auth_token\\fR).",
}

# Read by platformdirs on llava's behalf, not by the package source: listed so the check
# below does not call them stale.
PLATFORM_ENV = {"XDG_STATE_HOME", "XDG_CONFIG_HOME"}

# Variables huggingface_hub reads on llava's behalf (each must be named in llava_cli/hub.py,
# which documents how it uses them).
HUB_ENV_DOCS: Dict[str, str] = {
    "HF_HOME": "Root of the Hugging Face files; the model cache is its \\fIhub\\fR folder "
               "(default \\fI~/.cache/huggingface\\fR).",
    "HF_HUB_CACHE": "The Hugging Face model cache itself, shared with transformers (default "
                    "\\fI$HF_HOME/hub\\fR).",
    "HF_TOKEN": "Access token for gated and private models (else the token saved by "
                "\\fBhuggingface\\-cli login\\fR is used).",
    "HF_ENDPOINT": "The Hub to download from (default \\fIhttps://huggingface.co\\fR).",
    "HF_HUB_OFFLINE": "When 1, never use the network, as with \\fB\\-\\-offline\\fR.",
}

# Exit codes, keyed by the EXIT_* constant in llava_cli/errors.py (fails on a missing one).
EXIT_DOCS: Dict[str, str] = {
    "EXIT_OK": "Success.",
    "EXIT_ERROR": "An error: bad input (missing, unreadable or corrupt media), an unknown, "
                  "missing, damaged or unsupported model, a failed download, or a runtime "
                  "failure. One line is printed on standard error.",
    "EXIT_USAGE": "Bad command-line usage (unknown option, missing argument, empty question).",
    "EXIT_PARTIAL": "\\fBllava batch\\fR: some inputs failed; each has a line with its error "
                    "in the output.",
    "EXIT_INTERRUPTED": "Interrupted (Ctrl-C). An interrupted download resumes where it "
                        "stopped when the command is run again.",
}
# Codes the CLI returns that are not EXIT_* constants (see llava_cli/cli.py:main).
EXTRA_EXITS: List[Tuple[int, str]] = [
    (141, "The reader of standard output went away (broken pipe, as in "
          "\\fBllava ask ... | head\\fR); llava stops quietly, like other filters."),
]

EXAMPLES: List[Tuple[str, str]] = [
    ("Ask about a video clip with the default model (downloaded on first use):",
     'llava ask clip.mp4 "why is this funny?"'),
    ("Another model by alias, 16 frames, and sampling instead of greedy decoding:",
     'llava ask -m next-video-7b --frames 16 --temperature 0.7 --seed 1 talk.mkv "summarize"'),
    ("A Hub repo at a pinned revision, or a model folder:",
     'llava ask -m llava-hf/llava-onevision-qwen2-7b-ov-hf@main photo.jpg "what is on the sign?"\n'
     'llava ask -m ./LLaVA-NeXT-Video-7B-hf clip.mp4 "what happens?"'),
    ("Fetch a model ahead of time, then use it without the network:",
     'llava models pull ov-7b\nllava ask --offline -m ov-7b clip.mp4 "one-line caption" > caption.txt'),
    ("The question from standard input, and the answer as JSON for jq:",
     'echo "what happens?" | llava ask clip.mp4 - --json | jq .answer'),
    ("A conversation about a video (encoded once, however many questions):",
     'llava chat clip.mp4'),
    ("Every video under a folder, two questions each, resumable after a crash:",
     'llava batch clips/ -Q "summarize" -Q "how many people?" -o out.jsonl\n'
     'llava batch clips/ -Q "summarize" -Q "how many people?" -o out.jsonl --resume'),
    ("Paths from another program:",
     'find . -name "*.mp4" -mtime -1 | llava batch - "one-line caption" > captions.jsonl'),
    ("Keep a model loaded behind an OpenAI-compatible API, and ask it about a local video:",
     'llava serve -m ov-7b --allowed-media-path ~/videos\n'
     'curl -s localhost:8000/v1/chat/completions -d \'{"messages": [{"role": "user", "content": [\n'
     '  {"type": "video_url", "video_url": {"url": "file:///home/me/videos/clip.mp4"}},\n'
     '  {"type": "text", "text": "what happens?"}]}]}\' | jq -r ".choices[0].message.content"'),
    ("Set defaults once:",
     'llava config edit\nllava config show'),
    ("See what is cached, what a model is, and remove one:",
     'llava models list\nllava models info ov-7b\nllava models rm ov-7b'),
]


# --------------------------------------------------------------------------- model of the CLI
@dataclass
class Opt:
    names: List[str]  # e.g. ["-m", "--model"], short first
    help: str
    takes_value: bool
    value_name: str = ""
    default: Optional[str] = None  # rendered default, None when there is none to show
    envvar: Optional[str] = None
    required: bool = False
    multiple: bool = False
    min: Optional[object] = None
    above: Optional[object] = None  # strictly greater than
    max: Optional[object] = None
    completion: tuple = ()  # ("choices", [...]) | ("dirs",) | ("files",) | ()

    @property
    def long(self) -> str:
        longs = [n for n in self.names if n.startswith("--")]
        return longs[0] if longs else self.names[0]


@dataclass
class Arg:
    name: str
    metavar: str
    help: str
    required: bool
    variadic: bool


@dataclass
class Cmd:
    name: str  # "" for the root; "models pull" for a command of a group
    help: str
    options: List[Opt] = field(default_factory=list)
    arguments: List[Arg] = field(default_factory=list)
    positional_completion: str = "files"
    children: List[str] = field(default_factory=list)  # a group's command names

    @property
    def words(self) -> List[str]:
        return self.name.split()

    @property
    def ident(self) -> str:
        """The name as part of a shell function name: models pull → models_pull."""
        return "_".join(self.words).replace("-", "_")

    @property
    def summary(self) -> str:
        first = self.help.strip().split("\n\n")[0].replace("\n", " ").strip()
        return first

    def usage(self) -> str:
        parts = [PROG] + ([self.name] if self.name else []) + ["[OPTIONS]"]
        parts += [a.metavar for a in self.arguments]
        return " ".join(parts)


SETTING_BY_FLAG = {s.flag: s for s in llava_config.SETTINGS}

_BRACKET = re.compile(r"\s*\[(default|env|env var):\s*([^\]]*)\]")


def _split_help(text: str) -> Tuple[str, Dict[str, str]]:
    """Strip '[default: X]' / '[env: X]' notes from help text; return them separately."""
    notes: Dict[str, str] = {}
    for match in _BRACKET.finditer(text):
        notes[match.group(1)] = match.group(2).strip()
    return _BRACKET.sub("", text).strip(), notes


def _annotation(param) -> object:
    descriptor = getattr(param, "type_descriptor", None)
    return getattr(descriptor, "annotation", None)


def _value_name(param, long: str) -> str:
    if getattr(param, "metavar", None):  # every option that takes a value names it (cli.py)
        return param.metavar
    ann = _annotation(param)
    ptype = getattr(param, "type", None)
    name = getattr(ptype, "name", None) or getattr(ann, "__name__", None) or "value"
    return {"int": "N", "integer": "N", "float": "X", "str": "TEXT", "text": "TEXT",
            "path": "PATH"}.get(str(name).lower(), str(name).upper())


def _completion(param, long: str) -> tuple:
    if long in VALUE_COMPLETIONS:
        return VALUE_COMPLETIONS[long]
    ptype = getattr(param, "type", None)
    if getattr(ptype, "choices", None):
        return ("choices", [str(c) for c in ptype.choices])
    ann = _annotation(param)
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return ("choices", [str(m.value) for m in ann])
    if isinstance(ann, type) and issubclass(ann, pathlib.PurePath):
        return ("files",)
    return ()


def _render_default(value) -> Optional[str]:
    if value is None or value is False or value == () or value == []:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _param_kind(param) -> str:
    # Options carry flag-ish attributes; arguments do not (typer vendors click's classes,
    # so match by shape rather than importing click).
    return "option" if hasattr(param, "is_flag") else "argument"


def _collect_command(command, ctx, name: str) -> Cmd:
    cmd = Cmd(name=name, help=(command.help or "").strip(),
              positional_completion=POSITIONAL_COMPLETIONS.get(name, "files"))
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if _param_kind(param) == "argument":
            metavar = param.metavar or param.name.upper()
            if "[" not in metavar and "..." not in metavar:  # decorate like a usage line
                metavar = (metavar if param.required else f"[{metavar}]")
                metavar += "..." if param.nargs == -1 else ""
            cmd.arguments.append(Arg(name=param.name, metavar=metavar,
                                     help=(getattr(param, "help", None) or "").strip(),
                                     required=bool(param.required), variadic=param.nargs == -1))
            continue
        names = sorted(list(param.opts) + list(param.secondary_opts),
                       key=lambda n: (n.startswith("--"), n))
        help_text, notes = _split_help((param.help or "").strip())
        long = [n for n in names if n.startswith("--")]
        long = long[0] if long else names[0]
        takes_value = not param.is_flag and not getattr(param, "count", False)
        default = notes.get("default")
        if default is None and takes_value and not getattr(param, "is_eager", False):
            default = _render_default(param.default)
        envvar = param.envvar
        if isinstance(envvar, (list, tuple)):
            envvar = " ".join(envvar)
        setting = SETTING_BY_FLAG.get(long)
        if setting is not None and setting.commands and name not in setting.commands:
            setting = None  # the command's own option of that name (serve's --host is not ask's)
        if setting is not None and name.split()[:1] != ["models"]:
            envvar = envvar or setting.env
        cmd.options.append(Opt(
            names=names, help=help_text, takes_value=takes_value,
            value_name=_value_name(param, long) if takes_value else "",
            default=default, envvar=envvar or None, required=bool(param.required),
            multiple=bool(getattr(param, "multiple", False)),
            min=getattr(param, "min", None) if setting is None else _number(setting.minimum),
            above=None if setting is None else _number(setting.above), max=getattr(param, "max", None),
            completion=_completion(param, long) if takes_value else (),
        ))
    return cmd


def _collect_group(group, ctx, prefix: str) -> List[Cmd]:
    """A group's commands in order, each group followed by its own commands."""
    out: List[Cmd] = []
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        full = f"{prefix} {name}".strip()
        sub_ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
        cmd = _collect_command(sub, sub_ctx, full)
        out.append(cmd)
        if hasattr(sub, "commands"):  # a group (match by shape: no click import)
            inner = _collect_group(sub, sub_ctx, full)
            cmd.children = [c.words[-1] for c in inner if len(c.words) == len(cmd.words) + 1]
            out += inner
    return out


def collect() -> Tuple[Cmd, List[Cmd]]:
    """The root and every command below it (groups and their commands), from the live app."""
    group = typer.main.get_command(app)
    ctx = group.make_context(PROG, [], resilient_parsing=True)
    root = _collect_command(group, ctx, "")
    root.children = []
    commands = _collect_group(group, ctx, "")
    root.children = [c.name for c in commands if len(c.words) == 1]
    # Every hand-kept table entry must still match the app.
    longs = {o.long for c in [root, *commands] for o in c.options}
    for table_name, table in (("VALUE_COMPLETIONS", VALUE_COMPLETIONS),):
        stale = sorted(set(table) - longs)
        if stale:
            raise SystemExit(f"gen_docs: {table_name} names options the CLI lacks: {', '.join(stale)}")
    stale = sorted(set(POSITIONAL_COMPLETIONS) - {c.name for c in commands})
    if stale:
        raise SystemExit(f"gen_docs: POSITIONAL_COMPLETIONS names commands the CLI lacks: {', '.join(stale)}")
    return root, commands


def exit_codes() -> List[Tuple[int, str]]:
    codes = {name: getattr(errors, name) for name in dir(errors) if name.startswith("EXIT_")}
    missing = sorted(set(codes) - set(EXIT_DOCS))
    if missing:
        raise SystemExit(f"gen_docs: describe {', '.join(missing)} in EXIT_DOCS")
    stale = sorted(set(EXIT_DOCS) - set(codes))
    if stale:
        raise SystemExit(f"gen_docs: EXIT_DOCS names constants errors.py lacks: {', '.join(stale)}")
    rows = [(int(value), EXIT_DOCS[name]) for name, value in codes.items()] + EXTRA_EXITS
    return sorted(rows)


_ENV_READ = re.compile(r"""(?:os\.environ\.get|os\.getenv|os\.environ\[|environ\.get)\(?\s*["']([A-Z0-9_]+)["']""")


def _setting_env_docs() -> Dict[str, str]:
    docs = {}
    for setting in llava_config.SETTINGS:
        unset = (f"default {setting.default}" if setting.default is not None else f"unset: {setting.unset_means}")
        docs[setting.env] = _roff(f"The {setting.key} setting ({setting.help}; {unset}): overrides "
                                  f"config.toml's {setting.key}, and {setting.flag} overrides it.")
    return docs


def environment(root: Cmd, commands: List[Cmd]) -> List[Tuple[str, str]]:
    settings_docs = _setting_env_docs()
    names = {o.envvar for c in [root, *commands] for o in c.options if o.envvar} - set(settings_docs)
    for path in sorted((ROOT / "llava_cli").rglob("*.py")):
        names.update(_ENV_READ.findall(path.read_text(encoding="utf-8")))
    names |= PLATFORM_ENV
    missing = sorted(names - set(ENV_DOCS))
    if missing:
        raise SystemExit(f"gen_docs: describe {', '.join(missing)} in ENV_DOCS")
    stale = sorted(set(ENV_DOCS) - names)
    if stale:
        raise SystemExit(f"gen_docs: ENV_DOCS names variables the CLI does not read: {', '.join(stale)}")
    hub_source = (ROOT / "llava_cli" / "hub.py").read_text(encoding="utf-8")
    stale = sorted(name for name in HUB_ENV_DOCS if name not in hub_source)
    if stale:
        raise SystemExit(f"gen_docs: HUB_ENV_DOCS names variables llava_cli/hub.py never mentions: "
                         f"{', '.join(stale)}")
    docs = {**ENV_DOCS, **HUB_ENV_DOCS, **settings_docs}
    return [(name, docs[name]) for name in sorted(docs)]


# --------------------------------------------------------------------------- man page
def _roff(text: str) -> str:
    """Escape plain text for roff (backslashes, hyphens, leading dots/quotes)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line[:1] in (".", "'"):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _roff_metavar(metavar: str) -> str:
    """'[MEDIA]... QUESTION' -> italic names, roman brackets and dots."""
    return re.sub(r"([A-Z][A-Z0-9_]*)", r"\\fI\1\\fR", _roff(metavar))


def _opt_head(opt: Opt) -> str:
    names = ", ".join(f"\\fB{_roff(n)}\\fR" for n in opt.names)
    if opt.takes_value:
        names += f" \\fI{_roff(opt.value_name)}\\fR"
    return names


def _number(value: Optional[float]) -> Optional[object]:
    """A setting's bound as the man page writes it: 1, not 1.0."""
    return int(value) if value is not None and float(value).is_integer() else value


def _opt_body(opt: Opt) -> str:
    text = opt.help
    if text and not text.endswith("."):
        text += "."
    extras = []
    if opt.min is not None and opt.max is not None:
        extras.append(f"From {opt.min} to {opt.max}.")
    elif opt.min is not None:
        extras.append(f"At least {opt.min}.")
    elif opt.max is not None:
        extras.append(f"At most {opt.max}.")
    if opt.above is not None:
        extras.append(f"Greater than {opt.above}.")
    if opt.default is not None:
        extras.append(f"Default: {opt.default}.")
    if opt.envvar:
        extras.append(f"Environment: {opt.envvar}.")
    if opt.required:
        extras.append("Required.")
    if opt.multiple:
        extras.append("May be given more than once.")
    body = _roff(text)
    if extras:
        body = (body + "\n" if body else "") + _roff(" ".join(extras))
    return body


def _options_block(cmd: Cmd) -> List[str]:
    out: List[str] = []
    for arg in cmd.arguments:
        out += [".TP", _roff_metavar(arg.metavar), _roff(arg.help) if arg.help else ""]
    for opt in cmd.options:
        out += [".TP", _opt_head(opt), _opt_body(opt)]
    return [line for line in out if line != ""]


def render_man(root: Cmd, commands: List[Cmd]) -> str:
    version = llava_cli.__version__
    out: List[str] = [
        '.\\" Generated by scripts/gen_docs.py from the live CLI; do not edit.',
        '.\\" Regenerate with: python scripts/gen_docs.py',
        f'.TH LLAVA 1 "" "llava {version}" "User Commands"',
        ".SH NAME",
        f"llava \\- {_roff(_lower_first(root.summary).rstrip('.'))}",
        ".SH SYNOPSIS",
    ]
    root_flags = " ".join("[" + " | ".join(f"\\fB{_roff(n)}\\fR" for n in o.names) + "]"
                          for o in root.options)
    out += [".nf", f"\\fBllava\\fR {root_flags}"]
    for cmd in commands:
        if cmd.children:
            continue  # a group: its commands have their own lines
        args = " ".join(_roff_metavar(a.metavar) for a in cmd.arguments)
        out.append(f"\\fBllava {_roff(cmd.name)}\\fR [\\fIOPTIONS\\fR] {args}".rstrip())
    out += [".fi", ".SH DESCRIPTION", _roff(root.summary),
            ".PP",
            "Models run locally. A model is named by an alias (\\fBov\\-7b\\fR; "
            "\\fBllava models list \\-\\-aliases\\fR shows them all), by a Hugging Face Hub repo "
            "\\fIorg/name\\fR with an optional \\fI@revision\\fR, or by a folder in the Hugging "
            "Face layout (\\fIconfig.json\\fR, \\fI*.safetensors\\fR, \\fItokenizer.json\\fR, "
            "\\fIpreprocessor_config.json\\fR, \\fIchat_template.json\\fR). Without "
            "\\fB\\-\\-model\\fR, \\fBLLAVA_MODEL\\fR, then the configuration file, then "
            f"\\fB{_roff(DEFAULT_MODEL)}\\fR is used.",
            ".PP",
            "Hub models are downloaded on first use, only the files inference needs, into the "
            "Hugging Face cache that transformers shares, so a model fetched by either is not "
            "fetched again. An interrupted download resumes on the next run. Later runs ask the "
            "Hub once whether the revision moved and download nothing when it did not; "
            "\\fB\\-\\-offline\\fR (or \\fBHF_HUB_OFFLINE=1\\fR) never touches the network. "
            "Weights are read from safetensors files only, never from pickles, and every shard is "
            "checked before it is loaded.",
            ".PP",
            "The answer is written to standard output and nothing else is: progress, warnings "
            "and errors go to standard error, so the answer can be piped or redirected alone.",
            ".SH OPTIONS",
            "These options are accepted before a command.",
            *_options_block(root),
            ".SH COMMANDS"]
    for cmd in commands:
        args = "COMMAND" if cmd.children else " ".join(a.metavar for a in cmd.arguments)
        out += [f'.SS "llava {cmd.name} [OPTIONS] {_roff(args)}"'.replace('  "', ' "'),
                "\n.PP\n".join(_roff(part) for part in cmd.help.split("\n\n")) if cmd.help else "",
                *_options_block(cmd)]
    out += _chat_section() + _json_section() + _config_section()
    out.append(".SH ENVIRONMENT")
    for name, text in environment(root, commands):
        out += [".TP", f"\\fB{name}\\fR", text]
    out.append(".SH EXIT STATUS")
    for code, text in exit_codes():
        out += [".TP", f"\\fB{code}\\fR", text]
    out.append(".SH EXAMPLES")
    for caption, command in EXAMPLES:
        out += [".PP", _roff(caption), ".PP", ".RS 4", ".nf", _roff(command), ".fi", ".RE"]
    out += [".SH FILES",
            ".TP",
            "\\fI~/.config/llava/config.toml\\fR",
            "The configuration file, in the user configuration directory of the platform "
            "(\\fI~/Library/Application Support/llava\\fR on macOS), or the file "
            "\\fBLLAVA_CONFIG\\fR names. "
            "It sets defaults for the options; see \\fBCONFIGURATION\\fR.",
            ".TP",
            "\\fI~/.local/state/llava/history\\fR",
            "The \\fBllava chat\\fR input history, in the user state directory of the platform "
            "(\\fI~/Library/Application Support/llava\\fR on macOS).",
            ".TP",
            "\\fI~/.cache/huggingface/hub\\fR",
            "The Hugging Face model cache (see \\fBHF_HUB_CACHE\\fR and \\fBHF_HOME\\fR), "
            "shared with transformers and huggingface\\-cli.",
            ".SH SEE ALSO",
            "\\fBllava \\-\\-help\\fR, \\fBllava ask \\-\\-help\\fR; shell completions in "
            "\\fIcompletions/\\fR of the source tree; the project README."]
    return "\n".join(line for line in out if line != "") + "\n"


def _chat_section() -> List[str]:
    out = [".SH CHAT COMMANDS",
           "Lines that \\fBllava chat\\fR reads are questions, except these commands:",
           ".PP", ".RS 4", ".nf"]
    out += [_roff(line) for line in CHAT_HELP.splitlines() if line.strip() and line != "Commands:"]
    out += [".fi", ".RE",
            ".PP",
            "The conversation is kept in the model's KV cache: each question runs only its own tokens "
            "through the model, and each image or video is encoded once (also when attached again, while "
            "the file is unchanged). A question interrupted by Ctrl\\-C before its answer begins is "
            "withdrawn; once the answer has begun, the partial answer stays in the conversation. "
            "\\fB/save\\fR writes the conversation, with each media file's path and frame settings, as "
            "JSON; \\fB/load\\fR decodes the media again."]
    return out


def _fields(fields) -> List[str]:
    out = []
    for f in fields:
        out += [".TP", f"\\fB{_roff(f.name)}\\fR ({_roff(f.type)})", _roff(f.help[:1].upper() + f.help[1:] + ".")]
    return out


def _json_section() -> List[str]:
    out = [".SH JSON OUTPUT",
           "\\fBllava ask \\-\\-json\\fR prints one object:"]
    out += _fields(schema.ASK_FIELDS)
    out += [".PP", "Each object of \\fBmedia\\fR:"] + _fields(schema.MEDIA_FIELDS)
    out += [".PP", "\\fBtimings\\fR:"] + _fields(schema.TIMINGS_FIELDS)
    out += [".PP",
            "\\fBllava batch\\fR prints one object per line (JSON Lines), one line per input and question, "
            "in input order:"]
    out += _fields(schema.BATCH_FIELDS)
    out += [".PP",
            "Each line is written with a single write and synced to disk before the next input starts, so a "
            "killed run leaves whole lines and at most one partial last line (without its newline). "
            "\\fB\\-\\-resume\\fR keeps the lines that are complete JSON with an answer and no error, "
            "rewrites the file with only those, and answers the rest: failed inputs are retried. In a folder, "
            "files are chosen by extension (image and video extensions; others, such as \\fI.txt\\fR, are "
            "skipped and counted on standard error) and then checked by content when decoded."]
    return out


def _config_section() -> List[str]:
    out = [".SH CONFIGURATION",
           "Settings come from, last winning: built\\-in defaults, the configuration file "
           "\\fIconfig.toml\\fR (see \\fBFILES\\fR), the \\fBLLAVA_\\fR\\fIKEY\\fR environment variables, "
           "and the command\\-line flags. \\fBframes\\fR and \\fBfps\\fR are one choice: the last level "
           "that sets either decides. \\fBllava config show\\fR prints what applies and where it comes "
           "from. The keys:"]
    for setting in llava_config.SETTINGS:
        kind = {str: "string", int: "integer", float: "number", bool: "boolean"}[setting.kind]
        unset = (f"Default: {setting.default}." if setting.default is not None
                 else f"Unset: {setting.unset_means}.")
        choices = f" One of: {', '.join(setting.choices)}." if setting.choices else ""
        out += [".TP", f"\\fB{_roff(setting.key)}\\fR ({kind}; \\fB{_roff(setting.flag)}\\fR, "
                       f"\\fB{setting.env}\\fR)",
                _roff(setting.help[:1].upper() + setting.help[1:] + "." + choices + " " + unset)]
    return out


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


# --------------------------------------------------------------------------- bash
HEADER = "Generated by scripts/gen_docs.py from the live CLI (llava {version}); do not edit."


def _sh_words(words: List[str]) -> str:
    return " ".join(words)


def _bash_action(kind: str, words: List[str] = ()) -> str:
    """Shell code that fills COMPREPLY for a completion kind."""
    if kind == "choices":
        return f'COMPREPLY=($(compgen -W "{_sh_words(words)}" -- "$cur"))'
    if kind == "dirs":
        return "_llava_compgen_files -d"
    if kind == "files":
        return "_llava_compgen_files -f"
    if kind == "aliases":
        return "_llava_aliases"
    if kind == "models":
        return "_llava_compgen_files -d; _llava_aliases"
    return "COMPREPLY=()"


def render_bash(root: Cmd, commands: List[Cmd]) -> str:
    version = llava_cli.__version__
    L: List[str] = [
        "# bash completion for llava                                -*- shell-script -*-",
        "# " + HEADER.format(version=version),
        "# Use: source completions/llava.bash (or install it as",
        "# /usr/share/bash-completion/completions/llava).",
        "",
        "_llava_compgen_files() {",
        "    # $1: -f (files) or -d (directories); one match per line, names with spaces kept.",
        "    local IFS=$'\\n'",
        "    compopt -o filenames 2>/dev/null",
        '    COMPREPLY=($(compgen "$1" -- "$cur"))',
        "}",
        "",
        "_llava_aliases() {",
        "    # The built-in model aliases (added to what is there).",
        f'    COMPREPLY+=($(compgen -W "{_sh_words(list(ALIASES))}" -- "$cur"))',
        "}",
        "",
        "_llava() {",
        "    local cur prev cmd i skip=0",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev=""',
        '    (( COMP_CWORD > 0 )) && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    # --opt=value: bash splits at '=' (COMP_WORDBREAKS)",
        '    if [[ "$cur" == "=" && "$prev" == -* ]]; then',
        '        cur=""',
        '    elif [[ "$prev" == "=" ]] && (( COMP_CWORD > 1 )); then',
        '        prev="${COMP_WORDS[COMP_CWORD-2]}"',
        "    fi",
        "",
        "    # The command: the words after the root options, down through groups",
        "    # (\"models\" then \"models pull\"); matched as \"<command so far>:<word>\".",
        '    cmd=""',
        "    for (( i = 1; i < COMP_CWORD; i++ )); do",
        "        if (( skip )); then skip=0; continue; fi",
        '        case "$cmd:${COMP_WORDS[i]}" in',
    ]
    for owner in [root, *[c for c in commands if c.children]]:
        valued = [f"{owner.name}:{n}" for o in owner.options if o.takes_value for n in o.names]
        if valued:
            L.append(f"            {'|'.join(_bash_case(v) for v in valued)}) skip=1 ;;")
    L += ["            *:-*) ;;"]
    for cmd in commands:
        parent = " ".join(cmd.words[:-1])
        pattern = _bash_case(f"{parent}:{cmd.words[-1]}")
        L.append(f'            {pattern}) cmd="{cmd.name}"' + ("" if cmd.children else "; break") + " ;;")
    L += [
        "        esac",
        "    done",
        "",
        '    case "$cmd" in',
    ]

    def value_cases(cmd: Cmd, indent: str) -> List[str]:
        if not any(opt.takes_value for opt in cmd.options):
            return []
        lines = [f'{indent}case "$prev" in']
        for opt in cmd.options:
            if not opt.takes_value:
                continue
            pattern = "|".join(opt.names)
            kind = opt.completion[0] if opt.completion else ""
            words = opt.completion[1] if kind == "choices" else []
            lines.append(f"{indent}    {pattern}) {_bash_action(kind, words)}; return ;;")
        lines.append(f"{indent}esac")
        return lines

    for cmd in [root, *commands]:
        L += [f"        {_bash_case(cmd.name) if cmd.name else chr(34) * 2})"]
        L += value_cases(cmd, "            ")
        option_words = [n for o in cmd.options for n in o.names]
        if cmd.children or not cmd.name:
            words = (root.children if not cmd.name else cmd.children) + option_words
            L += [f'            COMPREPLY=($(compgen -W "{_sh_words(words)}" -- "$cur"))',
                  "            ;;"]
            continue
        L += ['            if [[ "$cur" == -* ]]; then',
              f'                COMPREPLY=($(compgen -W "{_sh_words(option_words)}" -- "$cur"))']
        if cmd.arguments:
            L += ["            else",
                  f"                {_bash_action(cmd.positional_completion)}"]
        L += ["            fi",
              "            ;;"]
    L += [
        "    esac",
        "    return 0",
        "}",
        "",
        "complete -F _llava llava",
    ]
    return "\n".join(L) + "\n"


def _bash_case(text: str) -> str:
    """A case pattern matching exactly this text (quoted when it has spaces)."""
    return f'"{text}"' if " " in text else text


# --------------------------------------------------------------------------- zsh
def _zsh_desc(text: str) -> str:
    """Text inside an _arguments '[...]' description within single quotes."""
    text = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")
    return text.replace("'", "'\\''")


def _one_line(text: str) -> str:
    first = text.strip().split("\n\n")[0]
    return " ".join(first.split())


_ZSH_ACTIONS = {"dirs": "_files -/", "files": "_files", "aliases": "_llava_aliases",
                "models": "_llava_model_refs"}


def _zsh_action(opt: Opt) -> str:
    kind = opt.completion[0] if opt.completion else ""
    label = opt.value_name.lower()
    if kind == "choices":
        return f":{label}:({' '.join(opt.completion[1])})"
    if kind in _ZSH_ACTIONS:
        return f":{label}:{_ZSH_ACTIONS[kind]}"
    return f":{label}: "


def _zsh_specs(cmd: Cmd) -> List[str]:
    specs: List[str] = []
    for opt in cmd.options:
        desc = _zsh_desc(_one_line(opt.help) or opt.long)
        is_help = opt.long == "--help" or (opt.long == "--version" and not cmd.name)
        group = " ".join(opt.names)
        excl = "(- *)" if is_help else (f"({group})" if len(opt.names) > 1 else "")
        rep = "*" if opt.multiple else ""
        forms = []
        for name in opt.names:
            if opt.takes_value:
                forms.append(name + ("=" if name.startswith("--") else "+"))
            else:
                forms.append(name)
        action = _zsh_action(opt) if opt.takes_value else ""
        action = action.replace("'", "'\\''")
        if len(forms) == 1:
            specs.append(f"'{excl}{rep}{forms[0]}[{desc}]{action}'")
        else:
            specs.append(f"'{excl}{rep}'{{{','.join(forms)}}}'[{desc}]{action}'")
    return specs


def _zsh_dispatch(fname: str, label: str, specs: List[str], children: List[Cmd], root: bool) -> List[str]:
    """A function that completes a command name, then hands over to that command."""
    L = [f"{fname}() {{", '    local curcontext="$curcontext" state line']
    if root:
        L.append("    typeset -A opt_args")
    L.append("    _arguments -C \\")
    for spec in specs:
        L.append(f"        {spec} \\")
    L += [
        "        '1: :->command' \\",
        "        '*:: :->args'",
        '    case "$state" in',
        "        command)",
        "            local -a commands",
        "            commands=(",
    ]
    for cmd in children:
        desc = _one_line(cmd.help).replace("\\", "\\\\").replace(":", "\\:").replace("'", "'\\''")
        L.append(f"                '{cmd.words[-1]}:{desc}'")
    context = "-".join(["llava", *label.split()[1:]])
    L += [
        "            )",
        f"            _describe -t commands '{label} command' commands",
        "            ;;",
        "        args)",
        f'            curcontext="${{curcontext%:*:*}}:{context}-$words[1]:"',
        '            case "$words[1]" in',
    ]
    for cmd in children:
        L.append(f"                {cmd.words[-1]}) _llava_{cmd.ident} ;;")
    L += [
        "            esac",
        "            ;;",
        "    esac",
        "}",
        "",
    ]
    return L


def render_zsh(root: Cmd, commands: List[Cmd]) -> str:
    version = llava_cli.__version__
    L: List[str] = [
        "#compdef llava",
        "# zsh completion for llava.",
        "# " + HEADER.format(version=version),
        "# Use: put this file, named _llava, in a directory on $fpath, then run compinit.",
        "",
        "_llava_aliases() {",
        "    local -a aliases",
        f"    aliases=({' '.join(ALIASES)})",
        "    _describe -t aliases 'model alias' aliases",
        "}",
        "",
        "_llava_model_refs() {",
        "    _alternative 'aliases:model alias:_llava_aliases' 'directories:model folder:_files -/'",
        "}",
        "",
    ]
    for cmd in commands:
        L.append(f"# llava {cmd.name}")
        if cmd.children:
            kids = [c for c in commands if c.words[:-1] == cmd.words]
            L += _zsh_dispatch(f"_llava_{cmd.ident}", f"llava {cmd.name}", _zsh_specs(cmd), kids, root=False)
            continue
        L += [f"_llava_{cmd.ident}() {{", "    _arguments -s -S \\"]
        specs = _zsh_specs(cmd)
        if cmd.arguments:
            label = " ".join(a.metavar for a in cmd.arguments).replace(":", "\\:").replace("'", "'\\''")
            action = _ZSH_ACTIONS.get(cmd.positional_completion, "_files")
            specs.append(f"'*:{label}:{action}'")
        L += [f"        {s} \\" for s in specs[:-1]] + [f"        {specs[-1]}"]
        L += ["}", ""]
    top = [c for c in commands if len(c.words) == 1]
    L += _zsh_dispatch("_llava", "llava", _zsh_specs(root), top, root=True)
    L += [
        'if [[ "$funcstack[1]" == "_llava" ]]; then',
        '    _llava "$@"',
        "else",
        "    compdef _llava llava",
        "fi",
    ]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- fish
def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_line(condition: str, opt: Opt) -> str:
    parts = ["complete -c llava", f"-n {_fish_quote(condition)}"]
    for name in opt.names:
        if name.startswith("--"):
            parts.append(f"-l {name[2:]}")
        elif len(name) == 2:
            parts.append(f"-s {name[1]}")
        else:
            parts.append(f"-o {name[1:]}")
    if opt.takes_value:
        kind = opt.completion[0] if opt.completion else ""
        if kind == "choices":
            parts.append(f"-x -a {_fish_quote(' '.join(opt.completion[1]))}")
        elif kind == "dirs":
            parts.append("-x -a '(__fish_complete_directories (commandline -ct))'")
        elif kind == "aliases":
            parts.append(f"-x -a {_fish_quote(' '.join(ALIASES))}")
        elif kind == "models":
            parts.append(f"-x -a {_fish_quote('(__fish_complete_directories (commandline -ct)) ' + ' '.join(ALIASES))}")
        elif kind == "files":
            parts.append("-r -F")
        else:
            parts.append("-x")
    parts.append(f"-d {_fish_quote(_one_line(opt.help) or opt.long)}")
    return " ".join(parts)


def _fish_condition(cmd: Cmd, commands: List[Cmd]) -> str:
    """True while completing words of this command (for a group: before its command)."""
    seen = "; and ".join(f"__fish_seen_subcommand_from {w}" for w in cmd.words)
    if cmd.children:
        seen += f"; and not __fish_seen_subcommand_from {' '.join(cmd.children)}"
    return seen


def render_fish(root: Cmd, commands: List[Cmd]) -> str:
    version = llava_cli.__version__
    names = " ".join(root.children)
    L: List[str] = [
        "# fish completion for llava.",
        "# " + HEADER.format(version=version),
        "# Use: copy to ~/.config/fish/completions/llava.fish",
        "",
        "# No file names unless a command or option asks for them.",
        "complete -c llava -f",
        "",
        "# Commands",
    ]
    top = f"not __fish_seen_subcommand_from {names}"
    for cmd in commands:
        if len(cmd.words) == 1:
            L.append(f"complete -c llava -n {_fish_quote(top)} -a {cmd.name} "
                     f"-d {_fish_quote(_one_line(cmd.help))}")
    L += ["", "# Options before a command"]
    L += [_fish_line(top, opt) for opt in root.options]
    for cmd in commands:
        cond = _fish_condition(cmd, commands)
        L += ["", f"# llava {cmd.name}"]
        for child in cmd.children:
            sub = next(c for c in commands if c.words == [*cmd.words, child])
            L.append(f"complete -c llava -n {_fish_quote(cond)} -a {child} -d {_fish_quote(_one_line(sub.help))}")
        L += [_fish_line(cond, opt) for opt in cmd.options]
        kind = cmd.positional_completion
        if not cmd.arguments:
            continue
        if kind == "files":
            L.append(f"complete -c llava -n {_fish_quote(cond)} -F")
        if kind in ("dirs", "models"):
            L.append(f"complete -c llava -n {_fish_quote(cond)} "
                     "-a '(__fish_complete_directories (commandline -ct))'")
        if kind in ("aliases", "models"):
            L.append(f"complete -c llava -n {_fish_quote(cond)} -a {_fish_quote(' '.join(ALIASES))} "
                     "-d 'model alias'")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main
RENDERERS: Dict[str, Callable[[Cmd, List[Cmd]], str]] = {
    MAN_PATH: render_man,
    BASH_PATH: render_bash,
    ZSH_PATH: render_zsh,
    FISH_PATH: render_fish,
}


def generate() -> Dict[str, str]:
    root, commands = collect()
    return {path: render(root, commands) for path, render in RENDERERS.items()}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 and list the stale files instead of writing them")
    args = parser.parse_args(argv)
    outputs = generate()
    stale = []
    for rel, text in outputs.items():
        path = ROOT / rel
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(rel)
    if args.check:
        if stale:
            print("stale generated files (run: python scripts/gen_docs.py):", file=sys.stderr)
            for rel in stale:
                print(f"  {rel}", file=sys.stderr)
            return 1
        print("generated docs are up to date")
        return 0
    for rel in stale:
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs[rel], encoding="utf-8")
        print(f"wrote {rel}")
    if not stale:
        print("generated docs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
