"""Tokenizers for tests: how to make one.

A tiny trained Llama-style one (train_llama_tokenizer), the real Llama-2 one from ../shared
(real_llama2_tokenizer), tiny ones shaped like Yi, Llama-3 and Qwen2 (train_yi_tokenizer,
train_llama3_tokenizer, train_qwen2_tokenizer_next / _onevision), the real Qwen2 one
(real_qwen2_tokenizer), and add_tokens to append the LLaVA specials.

`transformers` is the test oracle only, so it is imported inside the functions: importing
this module stays cheap and never drags transformers into `llava_cli`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import transformers

SHARED = Path(os.environ.get("LLAVA_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
SHARED_TOKENIZERS = SHARED / "reference" / "tokenizers"

# A few hundred words of plain English with punctuation, digits, contractions and a little
# non-ASCII, so the trained model has merges, a "▁" piece and byte-fallback cases to exercise.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A small cat sat on the warm mat, and it
watched the birds outside the window. What is shown in this image? It's a picture of a
red car parked next to a tall tree. Why is this video funny? Because the baby is reading a
book upside down! The man doesn't know that the dog took his hat. They're walking along
the river, and we've seen them there before. I'm not sure what happens next; maybe the
children will play football in the park. There are two cats on the sofa: one is black,
the other is white. How many people are standing near the door? Three people are waiting.
Describe the scene in detail. The sky is blue, the grass is green, and the sun is shining
brightly over the hills. A woman holds an umbrella while a boy runs through the rain.
Is there a bicycle in the picture? Yes, there is a bicycle leaning against the wall.
The video shows a chef cooking pasta in a busy kitchen; he adds salt, pepper and olive
oil. Later, the chef tastes the sauce and smiles. What color is the car? The car is red.
Where is the cat? The cat is under the table, next to a bowl of milk. Can you read the
sign? The sign says "Open 24 hours". The train arrives at 10:45 and leaves at 11:00.
In the first frame, a girl waves; in the second frame, she turns around and walks away.
People often say that a picture is worth a thousand words, but a video is worth more.
The answer is simple: look closely, count carefully, and describe what you see.
She said, "Don't forget the keys!" and he replied, "I won't." The end of the story is
happy, and everyone goes home. Numbers like 1, 2, 3, 42 and 2024 appear in the text too.
Café, naïve, résumé: a few words carry accents. 100% of the apples were eaten (really).
The assistant answers questions about images and videos; the user asks, the assistant
replies. USER: What is in the box? ASSISTANT: A small wooden toy and a red ball.
"""


def _training_sentences() -> list[str]:
    # Repeating the corpus gives SentencePiece enough counts for stable merges.
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    return lines * 1


def train_llama_tokenizer(workdir: Path, vocab_size: int = 400) -> "transformers.LlamaTokenizerFast":
    """Train a tiny SentencePiece BPE model shaped like Llama's and wrap it as transformers does.

    Same trainer settings as Meta's Llama tokenizer where they matter for parity: BPE,
    byte_fallback, digits split, whitespace kept verbatim (identity normalization), a dummy
    prefix space, and ids 0/1/2 = <unk>/<s>/</s>.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # from_pretrained looks for exactly this file name.
    prefix = workdir / "tokenizer"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_sentences()),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # one thread: training is then byte-for-byte deterministic
        minloglevel=2,
    )
    # legacy=True on purpose. transformers 4.48.3 defaults `legacy` to True when it is None,
    # and what matters for parity is the tokenizer.json the llava-hf repos ship: it was
    # converted (Dec 2023) before the non-legacy fast converter existed, so it has the legacy
    # shape (normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, decoder ending in
    # Strip(left=1)). That is why llava-1.5 tokenizes "USER: <image>\nWhat" as
    # [..., 29871, 32000, 29871, 13, ...]: a "▁" is prepended to the text after an added token.
    # Their tokenizer_config.json says "legacy": false, but with a tokenizer.json present the
    # flag is not used by the fast tokenizer, so legacy=True reproduces what users really get.
    #
    # Loaded with from_pretrained(folder) rather than LlamaTokenizerFast(vocab_file=...): in
    # 4.48.3 the direct constructor passes add_prefix_space=None down to the slow tokenizer, and
    # the converter then drops the Prepend("▁") normalizer and the Strip decoder ("Hello" ->
    # "H", "e", ...; Llama-2 "USER:" -> 11889 instead of 3148, 1001). from_pretrained goes
    # through the slow tokenizer with its own add_prefix_space=True default, the path the
    # llava-hf conversion scripts took (AutoTokenizer.from_pretrained("lmsys/vicuna-7b-v1.5")).
    return LlamaTokenizerFast.from_pretrained(str(workdir), legacy=True)


def real_llama2_tokenizer() -> "transformers.LlamaTokenizerFast":
    """The Llama-2 / Vicuna tokenizer from the shared reference folder (skips when absent)."""
    import pytest

    model = SHARED_TOKENIZERS / "llama2" / "tokenizer.model"
    if not model.is_file():
        pytest.skip(f"shared Llama-2 tokenizer not found at {model}")
    from transformers import LlamaTokenizerFast

    import shutil
    import tempfile

    # Same reasoning as in train_llama_tokenizer (legacy=True, loaded from a folder). The
    # folder is only read during the call; the returned tokenizer keeps no file handle.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(model, Path(tmp) / "tokenizer.model")
        return LlamaTokenizerFast.from_pretrained(tmp, legacy=True)


def add_tokens(tok: "transformers.PreTrainedTokenizerBase", specials: list[str]) -> list[int]:
    """Add `specials` as special added tokens, in order, as the llava-hf conversion scripts do.

    Returns their ids (len(tok) onward for new tokens).
    """
    from transformers import AddedToken

    for content in specials:
        tok.add_tokens(AddedToken(content, special=True, normalized=False), special_tokens=True)
    return [tok.convert_tokens_to_ids(content) for content in specials]


# -- tokenizers shaped like the non-Llama backbones (used by support.checkpoints) ----------------

# Llama-3's pre-tokenizer split (tokenizer.json of Meta-Llama-3-8B-Instruct).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's (Qwen2TokenizerFast / Qwen2Converter).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_yi_tokenizer(workdir: Path, vocab_size: int = 400):
    """A SentencePiece BPE with Yi's special-token layout: <unk> 0, <|startoftext|> 1,
    <|endoftext|> 2, <|im_start|> 6, <|im_end|> 7; BOS <|startoftext|>, EOS <|im_end|>
    (as in Nous-Hermes-2-Yi-34B's tokenizer_config), BOS added."""
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_sentences()), model_prefix=str(workdir / "tokenizer"),
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        add_dummy_prefix=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        bos_piece="<|startoftext|>", eos_piece="<|endoftext|>",
        control_symbols=["<|Human|>", "<|Assistant|>", "<|System|>", "<|im_start|>", "<|im_end|>"],
        num_threads=1, minloglevel=2,
    )
    tok = LlamaTokenizerFast.from_pretrained(str(workdir), legacy=True, bos_token="<|startoftext|>",
                                             eos_token="<|im_end|>", pad_token="<unk>")
    assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|im_start|>", "<|im_end|>"]) == [1, 6, 7]
    return tok


def _train_byte_level(split: str, vocab_size: int, *, ignore_merges: bool, nfc: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(ignore_merges=ignore_merges, byte_fallback=False, fuse_unk=False))
    if nfc:
        raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    raw.train_from_iterator(_training_sentences() * 4, trainer)
    return raw


def train_llama3_tokenizer(vocab_size: int = 600):
    """Byte-level BPE shaped like Llama-3's tokenizer.json: Llama-3 split regex, ignore_merges,
    the special tokens after the regular vocabulary, and a post-processor that prepends
    <|begin_of_text|> (tokenizer_class PreTrainedTokenizerFast: BOS comes from tokenizer.json)."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    raw = _train_byte_level(LLAMA3_SPLIT, vocab_size, ignore_merges=True, nfc=False)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|reserved_special_token_4|>",
                "<|eot_id|>"]
    raw.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos_id = raw.token_to_id("<|begin_of_text|>")
    raw.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos_id)]),
    ])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  clean_up_tokenization_spaces=True,
                                  model_input_names=["input_ids", "attention_mask"])
    assert tok("hi").input_ids[0] == bos_id
    return tok


def train_qwen2_tokenizer_next(vocab_size: int = 600):
    """The LLaVA-NeXT checkpoints' trained Qwen2 tokenizer (see the note above
    train_qwen2_tokenizer_onevision for why there are two).

    Byte-level BPE shaped like Qwen2's (NFC, Qwen2 split regex), <|endoftext|>, <|im_start|>,
    <|im_end|> after the regular vocabulary; Qwen2TokenizerFast: no BOS, EOS <|im_end|>."""
    from tokenizers import AddedToken, processors
    from transformers import Qwen2TokenizerFast

    raw = _train_byte_level(QWEN2_SPLIT, vocab_size, ignore_merges=False, nfc=True)
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    raw.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    return Qwen2TokenizerFast(tokenizer_object=raw, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", unk_token=None,
                              additional_special_tokens=["<|im_start|>", "<|im_end|>"])


# -- Qwen2-shaped tokenizers, trained two ways ----------------------------------------------------
# The NeXT builder (train_qwen2_tokenizer_next) and the OneVision builder
# (train_qwen2_tokenizer_onevision) each train a small Qwen2-like BPE, with different trainer
# settings (corpus ×4 vs ×1, min_frequency, ignore_merges/trim_offsets). They are kept apart on
# purpose: each family's tiny checkpoints, and the seeds chosen so their greedy answers are
# well separated, were tuned against the vocabulary its own recipe produces; one recipe for both
# would change the trained vocabularies and so every answer the parity tests compare.

def train_qwen2_tokenizer_onevision(vocab_size: int = 600):
    """The LLaVA-OneVision checkpoints' trained Qwen2 tokenizer: a small byte-level BPE
    shaped like Qwen2's, trained here (needs nothing from ../shared).

    Same pipeline as Qwen2's tokenizer.json: NFC, the Qwen2 split regex then ByteLevel
    without prefix space, ByteLevel decoder, no BOS. The three Qwen2 specials follow the
    regular vocabulary, as in Qwen2 (151643–151645); `<image>`/`<video>` are added after.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Qwen2TokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    backend.train_from_iterator(_training_sentences(), trainer=trainer)
    base = backend.get_vocab_size()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_SPECIALS])
    tok = Qwen2TokenizerFast(tokenizer_object=backend, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", additional_special_tokens=QWEN2_SPECIALS[1:],
                             add_prefix_space=False)
    assert tok.convert_tokens_to_ids(QWEN2_SPECIALS) == [base, base + 1, base + 2]
    assert tok.bos_token_id is None and len(tok) == base + 3
    return tok


def real_qwen2_tokenizer():
    """The Qwen2 BPE from ../shared (skips when vocab.json or merges.txt is absent), converted
    to a fast tokenizer (Qwen2TokenizerFast). Used by the NeXT and OneVision builders alike."""
    import pytest

    source = SHARED_TOKENIZERS / "qwen2"
    if not (source / "vocab.json").is_file() or not (source / "merges.txt").is_file():
        pytest.skip(f"shared Qwen2 tokenizer not found at {source}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)  # vocab.json + merges.txt → Qwen2TokenizerFast
