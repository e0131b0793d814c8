"""Run an exported model (``python -m rnn_lightning.inference export``) with torch and tokenizers only.

from rnn_lightning.serving import ExportedPredictor
ExportedPredictor("exported/")(["A wonderful film."])   # -> [{"label": "pos", "prob": 0.93, "probs": {...}}]
"""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from rnn_lightning.network import cpu_rnn  # noqa: F401  (registers the rnn cell's op, which an exported graph may hold)
from rnn_lightning.text.tokenizer import encode


def predictions(
    texts: list[str], tokenizer: Tokenizer, probabilities, names: list[str], batch_size: int = 1024
) -> list[dict]:
    """One dict per text: the predicted class (``label``), its probability (``prob``) and every class's
    (``probs``, by name), via ``probabilities`` (ids (B, T) -> (B, K)). An empty or whitespace-only text
    gets ``None`` for all three."""
    out: list[dict] = [{"label": None, "prob": None, "probs": None} for _ in texts]
    keep = [i for i, t in enumerate(texts) if t.strip()]
    for start in range(0, len(keep), batch_size):
        rows = keep[start : start + batch_size]
        ids = torch.from_numpy(encode(tokenizer, [texts[i] for i in rows])).long()
        for i, p in zip(rows, probabilities(ids).tolist(), strict=True):
            out[i] = prediction(p, names)
    return out


def prediction(probs: list[float], names: list[str]) -> dict:
    """One text's class probabilities (in ``names`` order) -> the predicted class (``label``), its
    probability (``prob``) and every class's (``probs``, by name)."""
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"label": names[best], "prob": probs[best], "probs": dict(zip(names, probs, strict=True))}


class ExportedPredictor:
    """An exported folder: ``model.pt2`` (ids (B, T) -> probabilities (B, K)), ``tokenizer.json``, ``meta.json``."""

    def __init__(self, folder: str) -> None:
        folder = Path(folder)
        self.module = torch.export.load(folder / "model.pt2").module()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.class_names = json.loads((folder / "meta.json").read_text())["class_names"]

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[dict]:
        """See ``predictions``."""
        return predictions(texts, self.tokenizer, self.module, self.class_names)
