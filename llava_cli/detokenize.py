"""The streaming detokenizer: generated ids, one at a time, to text that is final once
printed, equal when joined to the tokenizer's one-shot decode; and transformers' optional
clean-up of tokenization spaces, which it must respect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


# `clean_up_tokenization` of transformers 4.48.3, in the order it applies them. Every rule only
# deletes spaces, which is what lets the stream decoder release text early (see _last_safe_cut).
_CLEANUP_RULES: tuple[tuple[str, str], ...] = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)

# Adjacent non-space character pairs inside a cleanup pattern. A cut between two non-space
# characters that do not form one of these pairs can never lie inside a match.
_STRADDLE_PAIRS = frozenset(
    pattern[i : i + 2]
    for pattern, _ in _CLEANUP_RULES
    for i in range(len(pattern) - 1)
    if " " not in pattern[i : i + 2]
)


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: drop the space before punctuation and contractions."""
    for pattern, replacement in _CLEANUP_RULES:
        text = text.replace(pattern, replacement)
    return text


def _is_byte_piece(token: str | None) -> bool:
    # The same test as the ByteFallback decoder: exactly "<0xHH>".
    if token is None or len(token) != 6 or not token.startswith("<0x") or not token.endswith(">"):
        return False
    try:
        int(token[3:5], 16)
    except ValueError:
        return False
    return True



def _last_safe_cut(text: str) -> int:
    """The largest 0 < c < len(text) where clean-up of text[:c] and text[c:] can be done apart.

    Clean-up only deletes spaces, so two neighbouring non-space characters stay neighbours
    through every rule; a rule match could only span them if they formed a pair inside a
    pattern (like "'s"). Returns 0 when there is no such cut yet.
    """
    for cut in range(len(text) - 1, 0, -1):
        left, right = text[cut - 1], text[cut]
        if left != " " and right != " " and left + right not in _STRADDLE_PAIRS:
            return cut
    return 0


class StreamDecoder:
    """Turns generated ids, one at a time, into text that is final once printed.

    Joined, the pieces from `push` and `flush` equal `tokenizer.decode(all_ids)` exactly.
    Like text-generation-inference, it decodes only a small window: the ids from
    `prefix_offset` (the start of the previous piece) onwards, and prints what the window
    adds beyond the text of ids[prefix_offset:read_offset]. Decoding from an earlier token
    keeps the window's own quirks (the Llama decoder strips the leading space of whichever
    token comes first) identical in both decodes, so the difference is exact.

    Text is held back while it is not final:
      * it ends in U+FFFD (an incomplete UTF-8 sequence that later bytes may complete);
      * the last token is a byte-fallback piece: ByteFallback decodes a run of byte tokens as
        a whole and turns all of it into U+FFFD when the run turns out invalid, so a run is
        final only once a non-byte token ends it;
      * clean-up is on and a later token could still delete a space in it (" ." -> ".").
    `flush` releases everything at the end and starts the decoder afresh.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = []  # ids the decoder sees: skipped specials and unknown ids dropped
        self._prefix_offset = 0
        self._read_offset = 0
        self._raw_released = 0  # characters of the raw (pre-clean-up) text handed on so far
        self._pending = ""  # raw text held back for clean-up

    def push(self, token_id: int) -> str:
        """Add one generated id; return the new final text ("" when nothing is final yet)."""
        token = self._tokenizer.id_to_token(token_id)
        # decode() drops both of these, so the window must never start on one.
        if token is None or (self._skip_special_tokens and token_id in self._tokenizer.special_ids):
            return ""
        self._ids.append(token_id)
        if self._tokenizer.byte_fallback and _is_byte_piece(token):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd") or not new_text.startswith(prefix_text):
            return ""
        piece = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._raw_released += len(piece)
        return self._release(piece)

    def flush(self) -> str:
        """Return whatever is still held back, and start afresh for a new sequence."""
        # One full decode at the end is cheap and exact even where the window rules held text.
        remainder = self._decode(self._ids)[self._raw_released :]
        if self._tokenizer.clean_up_tokenization_spaces:
            remainder = clean_up_tokenization(self._pending + remainder)
        self._reset()
        return remainder

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode_raw(ids, skip_special_tokens=self._skip_special_tokens)

    def _release(self, raw_piece: str) -> str:
        if not self._tokenizer.clean_up_tokenization_spaces:
            return raw_piece
        self._pending += raw_piece
        cut = _last_safe_cut(self._pending)
        if cut == 0:
            return ""
        released, self._pending = self._pending[:cut], self._pending[cut:]
        return clean_up_tokenization(released)
