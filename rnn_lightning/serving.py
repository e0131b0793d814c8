"""Run an exported model (``python -m rnn_lightning.inference export``) with torch and tokenizers only.

from rnn_lightning.serving import ExportedPredictor
ExportedPredictor("exported/")(["A wonderful film."])   # -> [0.93]
"""

import math
from pathlib import Path

import torch
from tokenizers import Tokenizer

from rnn_lightning.data.tokenizer import encode


def probabilities(texts: list[str], tokenizer: Tokenizer, forward, batch_size: int = 1024) -> list[float]:
    """Probabilities of a positive review for ``texts`` via ``forward`` (ids (B, T) -> logits (B,));
    NaN for empty or whitespace-only texts."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    probs = [math.nan] * len(texts)
    for start in range(0, len(keep), batch_size):
        rows = keep[start : start + batch_size]
        ids = torch.from_numpy(encode(tokenizer, [texts[i] for i in rows])).long()
        for i, p in zip(rows, torch.sigmoid(forward(ids)).tolist(), strict=True):
            probs[i] = p
    return probs


class ExportedPredictor:
    def __init__(self, folder: str) -> None:
        folder = Path(folder)
        self.module = torch.export.load(folder / "model.pt2").module()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        """Probabilities of a positive review; NaN for empty texts."""
        return probabilities(texts, self.tokenizer, self.module)
