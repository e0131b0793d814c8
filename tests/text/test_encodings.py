"""Training data saved as UTF-16 where ``datasets`` reads it (a ``.json`` file, a folder of data files): one
line that names the file and its encoding, instead of datasets' "An error occurred while generating the
dataset"."""

import json

import pytest

from rnn_lightning.errors import InputError
from rnn_lightning.text import opening
from tests.helpers import make_reviews

WANTED = {"train": "train", "test": "test"}


def rows_as_json_lines(n: int = 12) -> str:
    return "".join(json.dumps(row) + "\n" for row in make_reviews(n, seed=7).to_dict("records"))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_utf16_json_file_is_named_with_its_encoding(tmp_path, encoding):
    train = tmp_path / "train.json"
    train.write_text(rows_as_json_lines(), encoding=encoding)
    with pytest.raises(InputError) as raised:
        opening.open_splits({"train": str(train)}, WANTED)
    name = "UTF-32" if encoding == "utf-32" else "UTF-16"
    assert str(raised.value) == f"data.dataset: {str(train)!r} is {name} text: save it as UTF-8"


def test_a_utf16_csv_in_a_folder_datasets_reads_is_named_with_its_encoding(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    make_reviews(12, seed=7).to_csv(folder / "train_part.csv", index=False)
    make_reviews(12, seed=8).to_csv(folder / "train_more.csv", index=False, encoding="utf-16")
    with pytest.raises(InputError) as raised:
        opening.open_splits(str(folder), WANTED)
    assert str(raised.value) == f"data.dataset: {str(folder / 'train_more.csv')!r} is UTF-16 text: save it as UTF-8"


def test_utf16_with_a_byte_order_mark_is_read_where_rnn_lightning_reads_it(tmp_path):
    frame = make_reviews(12, seed=7)
    frame.to_csv(tmp_path / "train.csv", index=False, encoding="utf-16")
    split = opening.open_splits({"train": str(tmp_path / "train.csv")}, WANTED)["train"]
    assert split["text"] == list(frame.text) and split["label"] == list(frame.label)
