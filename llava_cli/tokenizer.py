"""Tokenizer: a `tokenizers` wrapper that encodes and decodes exactly as the reference does,
plus a streaming detokenizer for printing an answer token by token (detokenize.py).

The reference is transformers' `PreTrainedTokenizerFast` as `AutoTokenizer.from_pretrained`
builds it from a checkpoint folder. Loading tokenizer.json alone is not enough for parity;
transformers also:
  * replaces the post-processor of Llama-style tokenizers with one built from `add_bos_token`
    / `add_eos_token` in tokenizer_config.json (that is where Vicuna/Mistral/Yi get BOS);
  * adds tokens listed in tokenizer_config.json (or the legacy added_tokens.json) and special
    tokens (bos/eos/pad/...) that tokenizer.json does not already carry as added tokens;
  * switches off any truncation/padding stored in tokenizer.json for a plain `tok(text)`;
  * optionally applies `clean_up_tokenization` after decoding (off unless the config says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import tokenizers
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors

from llava_cli.errors import ModelError

from .detokenize import StreamDecoder, clean_up_tokenization  # noqa: F401 (public here too)

# The attributes transformers treats as special tokens (SPECIAL_TOKENS_ATTRIBUTES).
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class _ClassRules:
    """What a transformers tokenizer class does on top of tokenizer.json."""

    rewrites_post_processor: bool  # builds BOS/EOS handling from add_bos_token/add_eos_token
    add_bos_default: bool
    add_eos_default: bool
    default_special_tokens: Mapping[str, str | None]  # the class's __init__ defaults


@dataclass(frozen=True)
class _SpecialTokens:
    """The special tokens transformers would know about, each as AddedToken fields."""

    named: Mapping[str, dict[str, Any] | None]  # bos_token, eos_token, ... -> fields or None
    additional: tuple[dict[str, Any], ...]  # additional_special_tokens
    extra: tuple[dict[str, Any], ...]  # extra_special_tokens (model-specific, e.g. image_token)

    def content(self, key: str) -> str | None:
        fields = self.named.get(key)
        return fields["content"] if fields else None

    def all_fields(self) -> list[dict[str, Any]]:
        named = [fields for fields in self.named.values() if fields]
        return named + list(self.additional) + list(self.extra)


_LLAMA_DEFAULTS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}

# Keyed by class name without the "Fast" suffix. Classes not listed behave like the plain
# PreTrainedTokenizerFast: tokenizer.json's post-processor is used as it is.
_CLASS_RULES: dict[str, _ClassRules] = {
    "LlamaTokenizer": _ClassRules(True, True, False, _LLAMA_DEFAULTS),
    "CodeLlamaTokenizer": _ClassRules(True, True, False, _LLAMA_DEFAULTS),
    "GemmaTokenizer": _ClassRules(
        True, True, False, {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}
    ),
    "Qwen2Tokenizer": _ClassRules(
        False,
        False,
        False,
        {"unk_token": "<|endoftext|>", "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    ),
}

# AutoTokenizer's fallback when tokenizer_config.json names no class: config.json's model_type.
_CLASS_BY_MODEL_TYPE = {
    "llava": "LlamaTokenizer",
    "llava_next": "LlamaTokenizer",
    "llava_next_video": "LlamaTokenizer",
    "llava_onevision": "LlamaTokenizer",
    "video_llava": "LlamaTokenizer",
    "llama": "LlamaTokenizer",
    "mistral": "LlamaTokenizer",
    "gemma": "GemmaTokenizer",
    "qwen2": "Qwen2Tokenizer",
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; {} when the file does not exist."""
    if not path.is_file():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ModelError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def _token_fields(value: Any) -> dict[str, Any] | None:
    """A special-token entry (a string or a serialized AddedToken) as AddedToken fields."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"content": value}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        keys = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
        return {key: value[key] for key in keys if key in value}
    raise ModelError(f"unexpected special token entry in the tokenizer config: {value!r}")


def _added_token(fields: Mapping[str, Any], special: bool | None = None) -> AddedToken:
    kwargs = dict(fields)
    content = kwargs.pop("content")
    if special is not None:
        kwargs["special"] = special
    return AddedToken(content, **kwargs)


def _flags(token: AddedToken) -> tuple[Any, ...]:
    return (token.content, token.single_word, token.lstrip, token.rstrip, token.normalized, token.special)


def _resolve_class(folder: Path, config: Mapping[str, Any]) -> str | None:
    name = config.get("tokenizer_class")
    if not name:
        model_config = _read_json_object(folder / "config.json")
        name = model_config.get("tokenizer_class") or _CLASS_BY_MODEL_TYPE.get(model_config.get("model_type", ""))
    if not isinstance(name, str):
        return None
    return name[: -len("Fast")] if name.endswith("Fast") else name


def _state(component: Any) -> dict[str, Any]:
    """The JSON settings of a tokenizers component (pre-tokenizer, decoder, ...)."""
    return json.loads(component.__getstate__())


def _has_byte_fallback(decoder: Any) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "ByteFallback":
        return True
    return any(_has_byte_fallback(inner) for inner in decoder.get("decoders", []) or [])


class Tokenizer:
    """Encode and decode like the checkpoint's transformers fast tokenizer. Build with `from_folder`."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None,
        eos_token: str | None,
        clean_up_tokenization_spaces: bool,
        byte_fallback: bool,
    ) -> None:
        self._backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token is not None else None
        self.eos_token_id = backend.token_to_id(eos_token) if eos_token is not None else None
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        # Decoders with ByteFallback decode a whole run of byte tokens at once, so text from
        # such a run is not final until the run ends (see StreamDecoder).
        self.byte_fallback = byte_fallback
        # get_vocab_size(with_added_tokens=True) walks the whole vocabulary; the tokenizer never
        # changes after loading, so count once.
        self._size = backend.get_vocab_size(with_added_tokens=True)
        self.special_ids: frozenset[int] = frozenset(
            token_id for token_id, token in backend.get_added_tokens_decoder().items() if token.special
        )

    @classmethod
    def from_folder(cls, folder: Path) -> "Tokenizer":
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"tokenizer folder not found: {folder}")
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            slow_files = [name for name in ("tokenizer.model", "vocab.json", "merges.txt") if (folder / name).is_file()]
            if slow_files:
                raise ModelError(
                    f"{folder} has {', '.join(slow_files)} but no tokenizer.json; tokenizer.json is required "
                    "(the llava-hf hub repos ship it)"
                )
            raise ModelError(f"no tokenizer.json in {folder}")

        config = _read_json_object(folder / "tokenizer_config.json")
        class_name = _resolve_class(folder, config)
        rules = _CLASS_RULES.get(class_name or "")
        specials = cls._special_tokens(folder, config, rules)
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust side raises plain Exception for bad JSON or content
            detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise ModelError(f"cannot load {tokenizer_file}: {detail}") from exc
        cls._sync_add_prefix_space(backend, config)
        if class_name == "LlamaTokenizer":
            cls._apply_llama_conversion_flags(backend, folder, config)
        # A plain `tok(text)` in transformers runs with truncation and padding switched off.
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))

        cls._add_missing_tokens(backend, folder, config, specials)
        bos_token = specials.content("bos_token")
        eos_token = specials.content("eos_token")
        if rules is not None and rules.rewrites_post_processor:
            add_bos = bool(config.get("add_bos_token", rules.add_bos_default))
            add_eos = bool(config.get("add_eos_token", rules.add_eos_default))
            backend.post_processor = cls._bos_eos_processor(backend, bos_token, eos_token, add_bos, add_eos)

        return cls(
            backend,
            bos_token=bos_token,
            eos_token=eos_token,
            # Absent key: False, the 4.48.3 default (PreTrainedTokenizerBase and every fast class).
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
            byte_fallback=backend.decoder is not None and _has_byte_fallback(_state(backend.decoder)),
        )

    # -- loading helpers -------------------------------------------------------------------

    @staticmethod
    def _special_tokens(folder: Path, config: Mapping[str, Any], rules: _ClassRules | None) -> _SpecialTokens:
        values: dict[str, Any] = dict(rules.default_special_tokens) if rules else {}
        for key in _SPECIAL_TOKEN_KEYS + ("additional_special_tokens",):
            if key in config:
                values[key] = config[key]
        if "added_tokens_decoder" not in config:
            # Old-style folders: special_tokens_map.json wins over tokenizer_config.json.
            for key, value in _read_json_object(folder / "special_tokens_map.json").items():
                if key == "additional_special_tokens" and isinstance(value, list):
                    merged = list(values.get("additional_special_tokens") or [])
                    merged += [token for token in value if token not in merged]
                    values[key] = merged
                elif key in _SPECIAL_TOKEN_KEYS:
                    values[key] = value
        extra = config.get("extra_special_tokens") or {}
        return _SpecialTokens(
            named={key: _token_fields(values.get(key)) for key in _SPECIAL_TOKEN_KEYS},
            additional=tuple(
                fields for fields in map(_token_fields, values.get("additional_special_tokens") or []) if fields
            ),
            extra=tuple(fields for fields in map(_token_fields, extra.values()) if fields)
            if isinstance(extra, dict)
            else (),
        )

    @staticmethod
    def _sync_add_prefix_space(backend: tokenizers.Tokenizer, config: Mapping[str, Any]) -> None:
        # transformers forces a top-level pre-tokenizer's add_prefix_space (ByteLevel has one)
        # to the config's value, False when the key is absent. A null value makes its rebuild
        # fail, and it ignores the failure, so null leaves the pre-tokenizer alone.
        wanted = config.get("add_prefix_space", False)
        if backend.pre_tokenizer is None or not isinstance(wanted, bool):
            return
        state = _state(backend.pre_tokenizer)
        if "add_prefix_space" not in state or state["add_prefix_space"] == wanted:
            return
        state["add_prefix_space"] = wanted
        kind = getattr(tokenizers.pre_tokenizers, state.pop("type", ""), None)
        if kind is not None:
            backend.pre_tokenizer = kind(**state)

    @staticmethod
    def _apply_llama_conversion_flags(backend: tokenizers.Tokenizer, folder: Path, config: Mapping[str, Any]) -> None:
        # LlamaTokenizerFast ignores tokenizer.json and converts tokenizer.model afresh when the
        # config sets add_prefix_space (true or false, not null). The conversion differs from
        # the stored file only in how spaces become "▁", which `legacy` and add_prefix_space
        # decide; rebuilding those three parts gives the converted tokenizer.
        add_prefix_space = config.get("add_prefix_space")
        if not isinstance(add_prefix_space, bool) or not (folder / "tokenizer.model").is_file():
            return
        legacy = config.get("legacy")
        legacy = True if legacy is None else bool(legacy)  # LlamaTokenizerFast's default
        if legacy:
            steps = [normalizers.Prepend("▁")] if add_prefix_space else []
            backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
            backend.pre_tokenizer = None
        else:
            backend.normalizer = None
            scheme = "first" if add_prefix_space else "never"
            backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            steps.append(decoders.Strip(content=" ", left=1))
        backend.decoder = decoders.Sequence(steps)

    @staticmethod
    def _add_missing_tokens(
        backend: tokenizers.Tokenizer, folder: Path, config: Mapping[str, Any], specials: _SpecialTokens
    ) -> None:
        """Add config-listed and special tokens that tokenizer.json lacks, as transformers does."""
        stored = backend.get_added_tokens_decoder()
        listed: dict[int, AddedToken] = {}
        decoder_entries = config.get("added_tokens_decoder")
        if isinstance(decoder_entries, dict):
            for index, entry in decoder_entries.items():
                fields = _token_fields(entry)
                if fields is not None:
                    listed[int(index)] = _added_token(fields)
        elif (folder / "added_tokens.json").is_file():
            # Legacy folders: a token of added_tokens.json is special only if it is one of the
            # special tokens, and is then matched on the raw (unnormalized) text.
            special_contents = {fields["content"] for fields in specials.named.values() if fields}
            special_contents |= {fields["content"] for fields in specials.additional}
            added = _read_json(folder / "added_tokens.json")
            if not isinstance(added, dict):
                raise ModelError(f"{folder / 'added_tokens.json'} should map tokens to ids")
            for content, index in added.items():
                special = content in special_contents
                listed[int(index)] = AddedToken(content, normalized=not special, special=special)
            listed.update(stored)  # tokenizer.json's own entries win for the same id
        # Re-adding a token whose flags differ updates it in place, as transformers' re-add does.
        present = {_flags(token) for token in stored.values()}
        to_add = [token for _, token in sorted(listed.items()) if _flags(token) not in present]

        known = {token.content for token in stored.values()} | {token.content for token in to_add}
        for fields in specials.all_fields():
            if fields["content"] not in known:
                to_add.append(_added_token(fields, special=True))
                known.add(fields["content"])
        if to_add:
            backend.add_tokens(to_add)

    @staticmethod
    def _bos_eos_processor(
        backend: tokenizers.Tokenizer, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool
    ) -> processors.TemplateProcessing:
        if add_bos and bos is None:
            raise ModelError("tokenizer_config.json sets add_bos_token but there is no bos_token")
        if add_eos and eos is None:
            raise ModelError("tokenizer_config.json sets add_eos_token but there is no eos_token")
        head = f"{bos}:0 " if add_bos else ""
        tail = f" {eos}:0" if add_eos else ""
        single = f"{head}$A:0{tail}"
        pair = f"{single}{f' {bos}:1' if add_bos else ''} $B:1{f' {eos}:1' if add_eos else ''}"
        special_tokens = []
        for token, wanted in ((bos, add_bos), (eos, add_eos)):
            if wanted:
                token_id = backend.token_to_id(token)
                if token_id is None:
                    raise ModelError(f"special token {token!r} is not in the vocabulary")
                special_tokens.append((token, token_id))
        return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_tokens)

    # -- public API ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def decode_raw(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """`decode` without the clean-up step."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def stream(self, skip_special_tokens: bool = True) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)
