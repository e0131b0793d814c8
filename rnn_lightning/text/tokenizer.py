"""Word-level tokenizer (Hugging Face ``tokenizers``) that also pads and truncates at the front.

The whole text pipeline lives in the tokenizer's JSON: normalisation (``<br />`` to a space, NFKC,
lowercase), splitting into words and punctuation runs, the vocabulary, and front padding/truncation
to ``max_len`` (as Keras' ``pad_sequences``: the final state of the network sees a review's last words).
So the JSON alone turns raw text into the model's input, in training, in a checkpoint and in an export.
"""

import hashlib
from collections.abc import Iterable

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
CHUNK = 8192  # texts encoded at a time
# Characters of a text the vocabulary is learned from (its end, the part a model reads). Bounds the
# tokenizer trainer's memory, which grows to many times a text's size (one huge review could exhaust it).
# The longest IMDB review (all splits) has 14,282 characters, so no IMDB text is cut.
TRAIN_CHARS = 100_000
# Characters per token a text is granted before tokenizing: a text is cut to its last
# ``text_chars(max_len)`` characters, all its last ``max_len`` tokens could need unless they average more
# than this (no word of natural text comes near it). Bounds the tokenizer's memory, which grows to many
# times a text's size, for text without spaces too (one 100 MB "word" would be normalised and split whole).
TOKEN_CHARS = 64


def text_chars(max_len: int) -> int:
    """Characters of a text's end that are tokenized for ``max_len`` tokens (``TOKEN_CHARS`` a token)."""
    return TOKEN_CHARS * (max_len + 1)


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_len: int) -> Tokenizer:
    """Learn the ``vocab_size`` most frequent words (specials included) from ``texts``."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.NFKC(), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # runs of \w and of punctuation: "great!!" -> great, !!
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator((tail(t, TRAIN_CHARS) for t in texts), trainer)
    return set_length(tok, max_len)


def set_length(tok: Tokenizer, max_len: int) -> Tokenizer:
    """Make ``tok`` truncate and pad every text to ``max_len`` ids, at the front; returns it."""
    tok.enable_truncation(max_len, direction="left")
    tok.enable_padding(direction="left", length=max_len, pad_id=PAD_ID, pad_token=PAD)
    return tok


def length(tok: Tokenizer) -> int:
    """Ids per text that ``tok`` gives (``set_length``'s ``max_len``)."""
    return tok.truncation["max_length"]


def digest(tokenizer_json: str) -> str:
    """A short hash of a tokenizer's JSON (16 hex digits): its identity in cache keys and between processes."""
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()[:16]


def encode(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Raw texts -> (N, max_len) int32 ids, padded and truncated at the front (Rust, all cores).

    Only a review's last ``max_len`` tokens are kept, so each text is first cut to a tail of a few
    characters per token, at a space (a token boundary for this tokenizer). Rows whose tail yields
    fewer than ``max_len`` tokens are encoded again from a tail of ``text_chars(max_len)`` characters,
    so the result is exactly that of encoding the whole texts (unless their last tokens average more than
    ``TOKEN_CHARS`` characters), while most texts are pre-tokenized (most of the cost) over their tail only.
    """
    max_len = length(tok)
    if len(texts) > CHUNK:  # the Rust encodings of a chunk hold ~50x the ids' bytes: bound them
        return np.concatenate([encode(tok, texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)])
    if not texts:
        return np.zeros((0, max_len), dtype=np.int32)
    tails = [tail(s, 6 * max_len + 64) for s in texts]  # IMDB: ~4.5 characters a token
    encs = tok.encode_batch_fast(tails)
    ids = np.array([e.ids for e in encs], dtype=np.int32)
    short = [i for i, e in enumerate(encs) if len(tails[i]) < len(texts[i]) and e.attention_mask[0] == 0]
    if short:
        budget = text_chars(max_len)
        ids[short] = [e.ids for e in tok.encode_batch_fast([tail(texts[i], budget) for i in short])]
    return ids


def tail(text: str, n_chars: int) -> str:
    """The end of ``text`` from the first space in its last ``n_chars`` characters, or, with no space
    there, its last ``n_chars`` characters (never more: a text without spaces is cut inside a word).

    A space inside an HTML line break (``<br />``) is not a boundary: the normaliser replaces the
    whole tag, so cutting there would leave "/>" behind.
    """
    if len(text) <= n_chars:
        return text
    cut = text.find(" ", len(text) - n_chars)
    while cut > 0 and text.endswith("<br", 0, cut):
        cut = text.find(" ", cut + 1)
    return text[cut:] if cut > 0 else text[len(text) - n_chars :]
