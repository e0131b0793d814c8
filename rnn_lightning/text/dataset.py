"""Token ids as a torch ``Dataset``: the token cache's arrays (read into memory up to ``IN_MEMORY_BYTES``,
memory-mapped beyond), or the texts to classify encoded into an unlinked temporary file; a batch is one
read of its rows."""

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor
from torch.utils.data import Dataset

from rnn_lightning.errors import InputError
from rnn_lightning.text.readers import EMPTY, InputRows, ReviewRows
from rnn_lightning.text.tokenizer import encode, length

# A memory-mapped view up to this size (IMDB's splits at 80 tokens) is read into memory when the dataset
# is made: a batch of 1,024 rows is then one indexing instead of 1,024 preads, a system call each, on the
# training loop's thread. Larger views stay on disk, so memory does not grow with the data.
IN_MEMORY_BYTES = 32 << 20


class FileRows:
    """(N, T) int32 token rows at the start of an open file that has no name (an unlinked temporary
    file), read by ``read_rows`` with ``pread`` on its descriptor (DataLoader workers inherit it)."""

    dtype = np.dtype(np.int32)

    def __init__(self, file, shape: tuple[int, int]) -> None:
        self.file, self.shape = file, shape

    def __len__(self) -> int:
        return self.shape[0]


class TokenizedReviews(Dataset):
    """Token ids (N, T) and labels ((N,) class ids or (N, K) label sets), optionally a view of the rows
    ``rows``; a batch is one indexing.

    ``ids`` may be a memory-mapped array (the token cache on disk) or ``FileRows``: beyond
    ``IN_MEMORY_BYTES`` a batch reads only its rows, so a dataset of millions of reviews never has to fit
    in memory. ``__getitems__`` hands the DataLoader a whole batch at once instead of N single items to
    collate: with 1024 short rows per batch that per-item work would cost more than the model step.
    """

    def __init__(self, ids: np.ndarray | FileRows, labels: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.labels = torch.from_numpy(np.asarray(labels if rows is None else labels[rows], dtype=np.int64))
        n = len(self.labels)
        if isinstance(ids, np.memmap) and n * ids.itemsize * int(np.prod(ids.shape[1:])) <= IN_MEMORY_BYTES:
            ids, rows = np.array(ids if rows is None else ids[rows]), None  # one read now, none per batch
        self.ids, self.rows = ids, rows

    def __len__(self) -> int:
        return len(self.labels)

    def token_ids(self) -> np.ndarray:
        """All ids of this view, (N, T) (read into memory)."""
        if isinstance(self.ids, FileRows):
            return read_rows(self.ids, np.arange(len(self.ids)) if self.rows is None else self.rows)
        return np.asarray(self.ids if self.rows is None else self.ids[self.rows])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        ids, labels = self.__getitems__([i])
        return ids[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        return torch.from_numpy(read_rows(self.ids, rows).astype(np.int64)), self.labels[idx]


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate for ``TokenizedReviews``: ``__getitems__`` already returned (ids (B, T), labels (B,))."""
    return batch


def read_rows(ids: np.ndarray | FileRows, rows: np.ndarray) -> np.ndarray:
    """``ids[rows]``. From a memory-mapped array or ``FileRows``, each row is read with ``pread``
    instead: indexing a map would map the file pages around every row read into this process (the
    kernel's fault-around), so its resident memory would grow towards the whole file over an epoch."""
    if isinstance(ids, FileRows):
        fd, offset, name = ids.file.fileno(), 0, "the temporary token file"
    elif isinstance(ids, np.memmap) and ids.filename is not None:
        fd, offset, name = _read_fd(ids.filename), ids.offset, ids.filename
    else:
        return ids[rows]
    out = np.empty((len(rows), *ids.shape[1:]), dtype=ids.dtype)
    row_bytes = out[0].nbytes if len(out) else 0
    for i, row in enumerate(rows.tolist()):
        if os.preadv(fd, [out[i]], offset + row * row_bytes) != row_bytes:
            raise InputError(f"data: {name} is shorter than its header says; clear data.cache_dir and rerun")
    return out


_read_fds: dict[tuple[int, str], int] = {}  # (process id, file) -> descriptor: DataLoader workers open their own


def _read_fd(filename: str) -> int:
    key = (os.getpid(), filename)
    if key not in _read_fds:
        _read_fds[key] = os.open(filename, os.O_RDONLY)
    return _read_fds[key]


def encode_reviews(
    chunks: Iterable[ReviewRows], tokenizer: Tokenizer, folder: Path
) -> tuple[TokenizedReviews, InputRows]:
    """Texts to classify, encoded a chunk at a time into an unlinked temporary file in ``folder`` (it goes
    when the process does), with every input row's id and error in another (``InputRows``). So an input
    of any size costs memory for one index per text only. Empty rows get no ids; each dataset row's
    label is its row's index in the input, which places its prediction in the output."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens, inputs, keep = tempfile.TemporaryFile(dir=folder), InputRows(folder), []
    for chunk in chunks:
        rows = [i for i, error in enumerate(chunk.errors) if error != EMPTY]
        if rows:
            tokens.write(encode(tokenizer, [chunk.texts[i] for i in rows]).tobytes())
        keep.append(np.asarray(rows, dtype=np.int64) + len(inputs))
        inputs.extend(chunk.ids, chunk.errors)
    tokens.flush()  # kept open by the dataset's FileRows, which reads it
    keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return TokenizedReviews(FileRows(tokens, (len(keep), length(tokenizer))), keep), inputs
