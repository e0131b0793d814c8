"""Run an exported model (``python -m rnn_lightning.inference export``) with torch and tokenizers only.

from rnn_lightning.serving import ExportedPredictor
ExportedPredictor("exported/")(["A wonderful film."])   # -> [0.93]
"""

import math
from pathlib import Path

import torch
from tokenizers import Tokenizer

from rnn_lightning.data.tokenizer import encode


class ExportedPredictor:
    def __init__(self, folder: str) -> None:
        folder = Path(folder)
        self.module = torch.export.load(folder / "model.pt2").module()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        """Probabilities of a positive review; NaN for empty texts."""
        keep = [i for i, t in enumerate(texts) if t.strip()]
        probs = [math.nan] * len(texts)
        if keep:
            ids = torch.from_numpy(encode(self.tokenizer, [texts[i] for i in keep])).long()
            for i, p in zip(keep, torch.sigmoid(self.module(ids)).tolist(), strict=True):
                probs[i] = p
        return probs
