"""Tokenizers for tests: a tiny trained Llama-style one, the real Llama-2 one, and helpers.

`transformers` is the test oracle only, so it is imported inside the functions: importing
this module stays cheap and never drags transformers into `llava_cli`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import transformers

SHARED = Path(os.environ.get("LLAVA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
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
