"""WindowTokenizer: texts -> token ids cut to a model's window, in a front-end process.

It also measures its own rate (tokens per second), which admission by work adds to the engine's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tokenizers import Tokenizer

from reward_service.engine.admission import MovingRate
from shared.schemas import TruncationSide

# A text longer than this many characters per window token cannot fit the window in any tokenizer
# this service meets (English averages about 4 per token); past it, characters are cut before
# tokenizing. BOUNDARY_TOKENS: how far the window must stay from that cut for the ids to be exact.
CHARS_PER_TOKEN = 8
BOUNDARY_TOKENS = 16
# For the admission estimate, before tokenizing: English BPE text runs about 4 characters a token.
CHARS_PER_TOKEN_GUESS = 4
# Tokenization rates are measured on requests this large or larger (small ones time overheads).
MEASURED_TOKENIZE_TOKENS = 4096
TOKENIZE_CHUNK = 64


@dataclass
class Tokenized:
    ids: list[list[int]]
    truncated: int
    first_truncated: int | None = None


class WindowTokenizer:
    """A fast tokenizer (the `tokenizers` library's JSON) set up once per truncation side, cutting
    to `max_tokens`."""

    def __init__(self, tokenizer_json: str, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        # One backend per truncation side, each configured once: the backend's truncation setting is
        # shared state, and tokenization runs on several threads at once.
        self._backends = {side: self._backend(tokenizer_json, side) for side in ("left", "right")}
        self.rate = MovingRate(min_tokens=MEASURED_TOKENIZE_TOKENS)

    def _backend(self, tokenizer_json: str, side: str) -> Tokenizer:
        backend = Tokenizer.from_str(tokenizer_json)
        backend.no_padding()
        backend.enable_truncation(self.max_tokens, direction=side)
        return backend

    def estimate_tokens(self, texts: list[str]) -> int:
        """Tokens `texts` will take, guessed from their length (before tokenizing them)."""
        return sum(min(self.max_tokens, len(text) // CHARS_PER_TOKEN_GUESS + 2) for text in texts)

    def estimate_body_tokens(self, body_bytes: int, max_items: int) -> int:
        """Tokens a JSON body of `body_bytes` may hold, guessed before it is read: about one per
        `CHARS_PER_TOKEN_GUESS` bytes, at most `max_items` windows. Texts past the window are
        over-counted until the body is read and `estimate_tokens` replaces this."""
        return min(body_bytes // CHARS_PER_TOKEN_GUESS, max_items * self.max_tokens)

    def tokenize(self, texts: list[str], side: TruncationSide) -> Tokenized:
        """Token ids with special tokens, cut to the window on `side`; counts the cut ones.

        A long text is first cut to `CHARS_PER_TOKEN` characters per window token on the kept
        side, so that the tokenizer never materialises the (unbounded) cut-off remainder. The
        result is exact when at least `BOUNDARY_TOKENS` tokens still fall between that cut and the
        window (tokenization is local, so the window's tokens are those of the whole text);
        otherwise the text is tokenized whole.
        """
        limit = self.max_tokens * CHARS_PER_TOKEN
        cut = [
            text if len(text) <= limit else (text[-limit:] if side == "left" else text[:limit])
            for text in texts
        ]
        backend = self._backends[side]
        ids, truncated, first_truncated = [], 0, None
        # In chunks: an Encoding (tokens, offsets, masks) weighs ~100 bytes a token; only the ids are
        # kept, so a chunk's encodings are freed before the next chunk is tokenized.
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = slice(start, start + TOKENIZE_CHUNK)
            encodings = backend.encode_batch_fast(cut[chunk], add_special_tokens=True)
            for text, short, encoding in zip(texts[chunk], cut[chunk], encodings, strict=True):
                was_cut = short is not text
                if was_cut and sum(len(o.ids) for o in encoding.overflowing) < BOUNDARY_TOKENS + 2:
                    encoding = backend.encode(text, add_special_tokens=True)
                ids.append(encoding.ids)
                if was_cut or encoding.overflowing:
                    truncated += 1
                    first_truncated = len(ids) - 1 if first_truncated is None else first_truncated
        return Tokenized(ids, truncated, first_truncated)

    def timed_tokenize(self, texts: list[str], side: TruncationSide) -> Tokenized:
        """`tokenize`, measuring `rate` when the batch is large enough to time fairly."""
        started = time.perf_counter()
        tokenized = self.tokenize(texts, side)
        self.rate.observe(sum(map(len, tokenized.ids)), time.perf_counter() - started)
        return tokenized
