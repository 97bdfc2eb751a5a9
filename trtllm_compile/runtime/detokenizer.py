"""Incremental detokenization: each step decodes a request's newest tokens, not its whole output.

Decoding the whole output every step costs O(n) a step and O(n^2) a request, on the host thread that keeps the
GPU fed. A token's text depends only on the few tokens before it: SentencePiece drops the leading space of the
first token it decodes, and a character split over byte tokens decodes to U+FFFD until its last byte comes. So,
as vLLM's `detokenize_incrementally` does, each step decodes a window from `prefix_offset`, where the tokens of
the last step that settled begin, and keeps what it adds past the decode of the tokens before `read_offset`.

Exact (the text of decoding every token at once) for byte-level BPE and SentencePiece decoders. Not for a
tokenizer whose `clean_up_tokenization_spaces` joins " ." across tokens: the engine decodes a finished output
whole, so its final text is the tokenizer's there too, though what it streamed may differ. So may it where
SentencePiece's byte fallback meets an output cut mid-character: the tokenizer then decodes the whole run of
byte tokens, characters streamed already included, as U+FFFD.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IncrementalDetokenizer:
    """One request's text so far, and how much of it has been streamed."""

    text: str = ""  # the decode of the first `read_offset` output tokens; never ends in a partial character
    prefix_offset: int = 0
    read_offset: int = 0
    sent: int = 0  # characters streamed as `new_text` so far

    def decode(self, tokenizer, token_ids: list[int]) -> str:
        """The text of `token_ids` (the request's output, grown since the last call) from a few tokens' decode."""
        prefix = tokenizer.decode(token_ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        window = tokenizer.decode(token_ids[self.prefix_offset :], skip_special_tokens=True)
        new = window[len(prefix) :]
        if len(window) <= len(prefix) or window.endswith("\ufffd"):
            # Only skipped special tokens, or a character still incomplete: the next window keeps the tokens
            # these depend on (a leading space is dropped only from a window's first token).
            return self.text + new
        self.text += new
        self.prefix_offset, self.read_offset = self.read_offset, len(token_ids)
        return self.text


def find_stop(text: str, stops: list[str], since: int = 0) -> int:
    """Where the first of `stops` in `text` begins (-1: none), looking only at matches that end at or past
    `since`: a stream whose `text[:since]` was searched before searches its new characters and a few before."""
    found = (text.find(stop, max(since - len(stop), 0)) for stop in stops)
    return min((i for i in found if i >= 0), default=-1)
