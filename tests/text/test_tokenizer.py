import numpy as np
from tokenizers import Tokenizer

from rnn_lightning.text.tokenizer import PAD_ID, UNK_ID, encode, train_tokenizer

TEXTS = ["A GREAT movie!<br /><br />Loved it.", "terrible, boring movie", "great great acting"]


def test_vocabulary_is_capped_with_specials_first():
    tok = train_tokenizer(TEXTS, vocab_size=6, max_len=8)
    vocab = tok.get_vocab()
    assert len(vocab) == 6
    assert vocab["<pad>"] == PAD_ID and vocab["<unk>"] == UNK_ID
    assert {"great", "movie"} <= set(vocab)  # the most frequent words survive the cap


def test_lowercases_strips_line_breaks_and_splits_punctuation():
    tok = train_tokenizer(TEXTS, vocab_size=100, max_len=16)
    tokens = [t for t in tok.encode("A GREAT movie!<br /><br />Loved it.").tokens if t != "<pad>"]
    assert tokens == ["a", "great", "movie", "!", "loved", "it", "."]


def test_pads_and_truncates_at_the_front_like_keras():
    tok = train_tokenizer(TEXTS, vocab_size=100, max_len=4)
    vocab = tok.get_vocab()
    short, long = encode(tok, ["great movie", "terrible , boring movie great acting"])
    assert short.tolist() == [PAD_ID, PAD_ID, vocab["great"], vocab["movie"]]
    assert long.tolist() == [vocab["boring"], vocab["movie"], vocab["great"], vocab["acting"]]  # the end is kept
    assert encode(tok, ["zzz unseen"]).tolist() == [[PAD_ID, PAD_ID, UNK_ID, UNK_ID]]


def test_json_round_trip_keeps_the_whole_pipeline():
    tok = train_tokenizer(TEXTS, vocab_size=100, max_len=5)
    again = Tokenizer.from_str(tok.to_str())
    np.testing.assert_array_equal(encode(tok, TEXTS), encode(again, TEXTS))


def test_training_is_deterministic():
    assert train_tokenizer(TEXTS * 3, 8, 5).to_str() == train_tokenizer(TEXTS * 3, 8, 5).to_str()


def test_tail_cut_gives_exactly_the_whole_text_encoding():
    # Long texts whose cut point lands near "<br />" tags, punctuation and long words.
    rng = np.random.default_rng(0)
    words = ["good", "bad", "<br />", "<br /><br />", "!", "...", "x" * 40, "it's", "movie,"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 400))) for _ in range(300)]
    texts += ["word " * 500, "a" * 500, "<br /> " * 300]  # a word within text_chars(12): no space to cut at
    tok = train_tokenizer(texts, vocab_size=20, max_len=12)
    whole = np.array([e.ids for e in tok.encode_batch(texts)])
    np.testing.assert_array_equal(encode(tok, texts), whole)


def test_empty_input_gives_an_empty_matrix():
    tok = train_tokenizer(TEXTS, vocab_size=10, max_len=7)
    assert encode(tok, []).shape == (0, 7)
