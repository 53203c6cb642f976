"""An answer sealed chunk by chunk under the key its request's HPKE context exported (seal/request.py), in the
construction of seal/chunks.py: chunk i at nonce base XOR i, then the end marker. The opener notices a chunk
changed, dropped, reordered or replayed, and an answer cut short: 502 `sealed_answer_invalid`.
"""

from __future__ import annotations

from cocoon.seal.chunks import CHUNK_KEY_LEN, ChunkDigest, ChunkOpener, ChunkSealer

ANSWER_KEY_LEN = CHUNK_KEY_LEN  # what a request's HPKE context exports for its answer


class AnswerSealer(ChunkSealer):
    """The worker's side: seals each chunk in order, then the end marker."""

    __slots__ = ()


class AnswerOpener(ChunkOpener):
    """The client's side: opens each chunk in the order it arrives, then checks the end marker."""

    __slots__ = ()


class AnswerDigest(ChunkDigest):
    """SHA-256 over a sealed answer as it travels: each sealed chunk, then the end marker, each length-prefixed.
    The worker signs its usage over it and the proxy, which relays the same bytes, checks that signature."""

    __slots__ = ()
