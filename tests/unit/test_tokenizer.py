"""Tokenizer parity with transformers 4.48.3 (AutoTokenizer) and the streaming detokenizer."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import tokenizers as factory
from llava_cli.errors import ModelError
from llava_cli.tokenizer import StreamDecoder, Tokenizer, clean_up_tokenization

pytest.importorskip("transformers")

TEXTS = [
    "Hello world.",
    "USER: <image>\nWhat's the content of the image?\nASSISTANT:",
    "USER: <video>\nWhy is this video funny? ASSISTANT:",
    "<video><image>\n\nhi",
    "a<image>b<video>c",
    "<image>",
    " leading and  double  spaces ",
    "line one\nline two\n\n\ttabbed",
    "héllo wörld, naïve café",
    "你好，世界",
    "emoji 🦙🔥 and 👩‍👩‍👧",
    "don't , isn't . ok ! what ? they 're we 've I 'm",
    "<s> literal bos </s> and <unk>",
    "",
    " ",
    "\n",
    "1234567890 3.14",
]


def _save(tok, folder: Path) -> Path:
    tok.save_pretrained(folder)
    return folder


_DELETE = object()  # for _edit_config: remove the key


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config), encoding="utf-8")


def _reference(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory) -> Path:
    tok = factory.train_llama_tokenizer(tmp_path_factory.mktemp("spm"))
    factory.add_tokens(tok, ["<video>", "<image>"])
    return _save(tok, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def llama2_folder(tmp_path_factory) -> Path:
    tok = factory.real_llama2_tokenizer()
    # LLaVA-NeXT-Video-7B's layout: <video> 32000, <image> 32001.
    assert factory.add_tokens(tok, ["<video>", "<image>"]) == [32000, 32001]
    return _save(tok, tmp_path_factory.mktemp("llama2"))


@pytest.fixture(scope="module")
def qwen2_folder(tmp_path_factory) -> Path:
    source = factory.SHARED_TOKENIZERS / "qwen2"
    if not (source / "vocab.json").is_file():
        pytest.skip(f"shared Qwen2 tokenizer not found at {source}")
    tok = _reference(source)  # converts vocab.json + merges.txt to a fast tokenizer
    # LLaVA-OneVision: <image> 151646, <video> 151647.
    assert factory.add_tokens(tok, ["<image>", "<video>"]) == [151646, 151647]
    return _save(tok, tmp_path_factory.mktemp("qwen2"))


FOLDERS = ["trained_folder", "llama2_folder", "qwen2_folder"]


@pytest.fixture(scope="module", params=FOLDERS)
def pair(request):
    """(ours, reference) for each tokenizer folder."""
    folder = request.getfixturevalue(request.param)
    return Tokenizer.from_folder(folder), _reference(folder)


# -- encode / decode parity -------------------------------------------------------------------


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(pair, add_special_tokens):
    ours, ref = pair
    for text in TEXTS:
        expected = ref(text, add_special_tokens=add_special_tokens).input_ids
        assert ours.encode(text, add_special_tokens=add_special_tokens) == expected, text


def test_decode_matches_transformers(pair):
    ours, ref = pair
    for text in TEXTS:
        ids = ref(text).input_ids
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False), text


def test_decode_random_ids_matches_transformers(pair):
    ours, ref = pair
    rng = random.Random(1234)
    specials = sorted(ours.special_ids)
    for _ in range(100):
        ids = [rng.choice(specials) if rng.random() < 0.1 else rng.randrange(len(ours)) for _ in range(rng.randrange(40))]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), ids
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False), ids


def test_special_token_attributes_match(pair):
    ours, ref = pair
    assert ours.bos_token == ref.bos_token
    assert ours.eos_token == ref.eos_token
    assert ours.bos_token_id == ref.bos_token_id
    assert ours.eos_token_id == ref.eos_token_id
    assert len(ours) == len(ref)
    assert ours.special_ids == frozenset(
        token_id for token_id, token in ref.added_tokens_decoder.items() if token.special
    )
    for token in ("<image>", "<video>"):
        assert ours.token_to_id(token) == ref.convert_tokens_to_ids(token)
    assert ours.token_to_id("<definitely-not-a-token>") is None


def test_llama2_known_ids(llama2_folder):
    ours = Tokenizer.from_folder(llama2_folder)
    # The llava-1.5 prompt as documented (vLLM's LLaVA docs), with <image> at 32000 there;
    # here <video> is 32000 and <image> 32001 (LLaVA-NeXT-Video layout).
    ids = ours.encode("USER: <image>\nWhat's the content of the image?\nASSISTANT:")
    assert ids == [1, 3148, 1001, 29901, 29871, 32001, 29871, 13, 5618, 29915, 29879, 278, 2793, 310, 278, 1967,
                   29973, 13, 22933, 9047, 13566, 29901]
    assert ours.bos_token_id == 1 and ours.eos_token_id == 2
    assert {0, 1, 2, 32000, 32001} <= ours.special_ids


def test_qwen2_has_no_bos(qwen2_folder):
    ours = Tokenizer.from_folder(qwen2_folder)
    assert ours.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert ours.encode("你好，世界") == [108386, 3837, 99489]
    assert ours.encode(" hello") == [23811]
    assert ours.bos_token is None and ours.bos_token_id is None
    assert ours.eos_token == "<|im_end|>" and ours.eos_token_id == 151645
    assert ours.encode("<|im_start|>user\n<image>\nWhat?<|im_end|>")[:4] == [151644, 872, 198, 151646]


# -- BOS / EOS flags, class resolution, legacy folders ---------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        {"add_bos_token": False},
        {"add_eos_token": True},
        {"add_bos_token": False, "add_eos_token": True},
        {"add_bos_token": _DELETE, "add_eos_token": _DELETE},  # class defaults: BOS only
    ],
)
def test_llama_bos_eos_flags_rewrite_post_processor(trained_folder, tmp_path, flags):
    folder = Path(shutil.copytree(trained_folder, tmp_path / "tok"))
    _edit_config(folder, **flags)
    ours, ref = Tokenizer.from_folder(folder), _reference(folder)
    for text in ("Hello world.", "<image>\nWhat?", ""):
        assert ours.encode(text) == ref(text).input_ids
    has_bos = flags.get("add_bos_token", True) is not False
    assert (ours.encode("Hello")[0] == ours.bos_token_id) is has_bos


@pytest.mark.parametrize("legacy", [True, False, None])
@pytest.mark.parametrize("add_prefix_space", [True, False])
def test_llama_add_prefix_space_reconversion(trained_folder, tmp_path, legacy, add_prefix_space):
    """A non-null add_prefix_space makes LlamaTokenizerFast rebuild from tokenizer.model."""
    folder = Path(shutil.copytree(trained_folder, tmp_path / "tok"))
    assert (folder / "tokenizer.model").is_file()
    _edit_config(folder, add_prefix_space=add_prefix_space, legacy=legacy)
    ours, ref = Tokenizer.from_folder(folder), _reference(folder)
    for text in TEXTS:
        ids = ref(text).input_ids
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
        stream = ours.stream()
        assert "".join([stream.push(i) for i in ids] + [stream.flush()]) == ours.decode(ids), text


def test_model_type_decides_class_when_config_names_none(trained_folder, tmp_path):
    folder = Path(shutil.copytree(trained_folder, tmp_path / "tok"))
    _edit_config(folder, tokenizer_class=_DELETE, add_bos_token=False)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}), encoding="utf-8")
    ours, ref = Tokenizer.from_folder(folder), _reference(folder)
    assert type(ref).__name__ == "LlamaTokenizerFast"
    assert ours.encode("Hello world.") == ref("Hello world.").input_ids
    assert ours.encode("Hello")[0] != ours.bos_token_id


def test_legacy_added_tokens_json_folder(tmp_path):
    """Old folders: no added_tokens_decoder; added_tokens.json and special_tokens_map.json instead."""
    folder = tmp_path / "tok"
    _save(factory.real_llama2_tokenizer(), folder)
    _edit_config(folder, added_tokens_decoder=_DELETE, pad_token=_DELETE)
    (folder / "added_tokens.json").write_text(json.dumps({"<image>": 32000, "<pad>": 32001}), encoding="utf-8")
    special_map = json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8"))
    special_map["pad_token"] = "<pad>"
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    ours, ref = Tokenizer.from_folder(folder), _reference(folder)
    for text in ("USER: <image>\nWhat?", "a<pad>b <image> c", "plain"):
        ids = ref(text).input_ids
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.special_ids == frozenset(
        token_id for token_id, token in ref.added_tokens_decoder.items() if token.special
    )


def test_byte_level_add_prefix_space_follows_config(tmp_path):
    """transformers forces a top-level ByteLevel pre-tokenizer's add_prefix_space to the config's."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(["hello world, the quick brown fox"] * 20, trainer)
    for setting in (_DELETE, True, False):
        folder = tmp_path / f"bl-{setting}"
        PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|end|>").save_pretrained(folder)
        _edit_config(folder, add_prefix_space=setting)
        ours, ref = Tokenizer.from_folder(folder), _reference(folder)
        for text in ("hello world", "world<|end|>hello"):
            assert ours.encode(text) == ref(text).input_ids, (setting, text)


# -- clean-up of tokenization spaces ------------------------------------------------------------


def test_cleanup_default_is_off_when_key_absent(trained_folder, tmp_path):
    folder = Path(shutil.copytree(trained_folder, tmp_path / "tok"))
    _edit_config(folder, clean_up_tokenization_spaces=_DELETE)
    ours, ref = Tokenizer.from_folder(folder), _reference(folder)
    assert ref.clean_up_tokenization_spaces is False
    assert ours.clean_up_tokenization_spaces is False
    ids = ref("a , b . c 's").input_ids
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def cleanup_pair(trained_folder, tmp_path_factory):
    folder = Path(shutil.copytree(trained_folder, tmp_path_factory.mktemp("cleanup") / "tok"))
    _edit_config(folder, clean_up_tokenization_spaces=True)
    return Tokenizer.from_folder(folder), _reference(folder)


def test_cleanup_matches_transformers(cleanup_pair):
    ours, ref = cleanup_pair
    assert ours.clean_up_tokenization_spaces is True
    for text in TEXTS + ["He said ' hi ' and didn 't , we 're sure ! ok ?", "x  . y"]:
        ids = ref(text).input_ids
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text


def test_cleanup_function_matches_transformers():
    from transformers import PreTrainedTokenizerBase

    rng = random.Random(7)
    alphabet = [" ", ".", "?", "!", ",", "'", "n", "t", "m", "s", "v", "e", "r", "a"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        assert clean_up_tokenization(text) == PreTrainedTokenizerBase.clean_up_tokenization(text), text


# -- streaming ------------------------------------------------------------------------------------


def _stream(tokenizer: Tokenizer, ids, skip_special_tokens: bool = True) -> list[str]:
    decoder = tokenizer.stream(skip_special_tokens=skip_special_tokens)
    return [decoder.push(token_id) for token_id in ids] + [decoder.flush()]


def test_stream_of_multibyte_text_is_exact_and_never_partial(pair):
    ours, _ = pair
    for text in ("héllo 你好 🦙", "🦙🦙 x", "naïve café, 你好，世界! 👩‍👩‍👧 end", TEXTS[1], " Hello world"):
        ids = ours.encode(text)
        pieces = _stream(ours, ids)
        assert "".join(pieces) == ours.decode(ids), text
        assert not any("\ufffd" in piece for piece in pieces), pieces


def test_stream_first_token_space_is_stripped_once(llama2_folder):
    ours = Tokenizer.from_folder(llama2_folder)
    ids = ours.encode("Hello world again")
    pieces = [piece for piece in _stream(ours, ids) if piece]
    assert pieces[0] == "Hello"  # the Llama decoder strips the first token's space ...
    assert pieces[1:] == [" world", " again"]  # ... and only that one


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_stream_random_ids_equals_decode(pair, skip_special_tokens):
    ours, _ = pair
    rng = random.Random(99)
    specials = sorted(ours.special_ids)
    # Byte-fallback ids (Llama <0x00>..<0xFF> are 3..258) make invalid and valid UTF-8 runs.
    byte_ids = [i for i in range(len(ours)) if (ours.id_to_token(i) or "").startswith("<0x")][:256]
    text_ids = ours.encode("héllo 你好 🦙 the cat, don't . ok", add_special_tokens=False)
    for _ in range(150):
        ids = []
        for _ in range(rng.randrange(50)):
            roll = rng.random()
            if roll < 0.1 and specials:
                ids.append(rng.choice(specials))
            elif roll < 0.4 and byte_ids:
                ids.append(rng.choice(byte_ids))
            elif roll < 0.7:
                ids.append(rng.choice(text_ids))
            else:
                ids.append(rng.randrange(len(ours)))
        pieces = _stream(ours, ids, skip_special_tokens)
        full = ours.decode(ids, skip_special_tokens=skip_special_tokens)
        assert "".join(pieces) == full, ids
        if "\ufffd" not in full:
            assert not any("\ufffd" in piece for piece in pieces), ids


def test_stream_with_cleanup_equals_decode(cleanup_pair):
    ours, ref = cleanup_pair
    rng = random.Random(5)
    vocab = ours.encode("a b . , ? ! ' 's 're 've 'm n't don't it 's we 're I 'm x", add_special_tokens=False)
    for _ in range(300):
        ids = [rng.choice(vocab) for _ in range(rng.randrange(30))]
        pieces = _stream(ours, ids)
        assert "".join(pieces) == ref.decode(ids, skip_special_tokens=True), ids
    ids = ours.encode("Hello , world . They 're here !")
    assert "".join(_stream(ours, ids)) == ref.decode(ids, skip_special_tokens=True)


def test_stream_skips_special_tokens_in_the_middle(llama2_folder):
    ours = Tokenizer.from_folder(llama2_folder)
    ids = ours.encode("first part") + [32001, 32000, 2] + ours.encode("second 你好", add_special_tokens=False) + [2]
    assert "".join(_stream(ours, ids)) == ours.decode(ids)
    assert "".join(_stream(ours, ids, skip_special_tokens=False)) == ours.decode(ids, skip_special_tokens=False)


def test_stream_decodes_small_windows(llama2_folder, monkeypatch):
    """Incremental: each push decodes a few ids, not the whole answer so far."""
    ours = Tokenizer.from_folder(llama2_folder)
    ids = ours.encode("The quick brown fox jumps over the lazy dog. " * 30, add_special_tokens=False)
    sizes: list[int] = []
    original = ours.decode_raw

    def recording(token_ids, skip_special_tokens=True):
        sizes.append(len(token_ids))
        return original(token_ids, skip_special_tokens=skip_special_tokens)

    monkeypatch.setattr(ours, "decode_raw", recording)
    decoder = ours.stream()
    text = "".join(decoder.push(token_id) for token_id in ids)
    assert max(sizes) <= 4
    text += decoder.flush()
    assert text == original(ids)


def test_stream_flush_starts_afresh(trained_folder):
    ours = Tokenizer.from_folder(trained_folder)
    decoder: StreamDecoder = ours.stream()
    first, second = ours.encode("Hello world."), ours.encode(" again, hello")
    out1 = "".join(decoder.push(i) for i in first) + decoder.flush()
    out2 = "".join(decoder.push(i) for i in second) + decoder.flush()
    assert (out1, out2) == (ours.decode(first), ours.decode(second))
    assert decoder.flush() == ""


# -- errors ---------------------------------------------------------------------------------------


def _assert_one_line(error: Exception) -> None:
    assert "\n" not in str(error) and str(error)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError) as info:
        Tokenizer.from_folder(tmp_path / "nope")
    _assert_one_line(info.value)


def test_folder_without_any_tokenizer(tmp_path):
    with pytest.raises(ModelError, match="no tokenizer.json") as info:
        Tokenizer.from_folder(tmp_path)
    _assert_one_line(info.value)


@pytest.mark.parametrize("files", [["tokenizer.model"], ["vocab.json", "merges.txt"]])
def test_slow_only_folder_needs_tokenizer_json(tmp_path, files):
    for name in files:
        (tmp_path / name).write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match="tokenizer.json is required") as info:
        Tokenizer.from_folder(tmp_path)
    _assert_one_line(info.value)


def test_shared_qwen2_folder_needs_tokenizer_json():
    source = factory.SHARED_TOKENIZERS / "qwen2"
    if not source.is_dir():
        pytest.skip("shared Qwen2 tokenizer not found")
    with pytest.raises(ModelError, match="tokenizer.json is required"):
        Tokenizer.from_folder(source)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_invalid_json(trained_folder, tmp_path, name):
    folder = Path(shutil.copytree(trained_folder, tmp_path / "tok"))
    (folder / name).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError) as info:
        Tokenizer.from_folder(folder)
    _assert_one_line(info.value)


def test_llava_cli_does_not_import_transformers():
    code = (
        "import sys, llava_cli.tokenizer, llava_cli.prompt; "
        "sys.exit('transformers imported' if 'transformers' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr or result.stdout
