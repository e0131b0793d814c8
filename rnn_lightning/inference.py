"""Use a trained checkpoint on raw text from Python, and export it for serving without Lightning.

from rnn_lightning.inference import Predictor
predictor = Predictor.from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
predictor(["A wonderful film."])   # -> [{"label": "pos", "prob": 0.93, "probs": {"neg": 0.07, "pos": 0.93}}]
# a multi-label model's: [{"labels": ["admiration", "joy"], "probs": {"admiration": 0.81, ...}}]

rnn-lightning export CKPT OUT_DIR        # model.pt2 + tokenizer.json + meta.json
"""

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.files import atomic_file, check_writable
from rnn_lightning.network.text_rnn import TextRNN
from rnn_lightning.serving import predictions
from rnn_lightning.tasks import Task, make_task


class Probabilities(torch.nn.Module):
    """A network as what is exported: ids (B, T) -> probabilities (B, K) of the classes (``Task.probabilities``)."""

    def __init__(self, net: torch.nn.Module, task: Task) -> None:
        super().__init__()
        self.net, self.task = net, task

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.task.probabilities(self.net(tokens))


class Predictor:
    """A network, its tokenizer and class names: texts -> the task's decision for each (see
    ``serving.predictions``). Empty or whitespace-only texts get None (the CLI's prediction file
    gives them an error field). ``task``: what the classes are to each other (default: single-label)."""

    def __init__(
        self,
        net: torch.nn.Module,
        tokenizer: Tokenizer,
        class_names: list[str],
        batch_size: int = 1024,
        task: Task | None = None,
    ) -> None:
        self.net, self.tokenizer, self.class_names, self.batch_size = net.eval(), tokenizer, class_names, batch_size
        self.task = task if task is not None else make_task(class_names)

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str = "cpu", thresholds=None) -> "Predictor":
        """Read with ``weights_only=True`` (``checkpoint.load_checkpoint``): no code from the file runs.
        ``thresholds`` (multi-label) override the checkpoint's."""
        ckpt = checkpoint.load_checkpoint(path, mmap=True)
        task = checkpoint.task(ckpt, thresholds, f"ckpt_path: {str(path)!r}")
        net = TextRNN.from_checkpoint(path, map_location, ckpt=ckpt)
        tokenizer = Tokenizer.from_str(checkpoint.tokenizer_json(ckpt))
        return cls(net, tokenizer, task.class_names, task=task)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[dict]:
        device = next(self.net.parameters()).device
        forward = lambda ids: self.task.probabilities(self.net(ids.to(device)))  # noqa: E731
        return predictions(texts, self.tokenizer, forward, self.task, self.batch_size)

    def export(self, out_dir: str) -> Path:
        """Write ``model.pt2`` (``torch.export``, batch size dynamic) and ``tokenizer.json`` to ``out_dir``.

        The graph holds PyTorch's own ops only: the recurrent layers are traced with their ``fused``
        implementation, never the compiled CPU loop, so an exported model runs where nothing was compiled.
        """
        out = Path(out_dir)
        param_bytes = sum(t.numel() * t.element_size() for t in self.net.parameters())
        check_writable([out], need_bytes=2 * param_bytes + 2**20, field="export: out_dir")  # before tracing
        out.mkdir(parents=True, exist_ok=True)
        max_len = self.tokenizer.truncation["max_length"]
        example = torch.ones(2, max_len, dtype=torch.long, device=next(self.net.parameters()).device)
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        implementation, self.net.implementation = self.net.implementation, "fused"
        try:
            program = torch.export.export(Probabilities(self.net, self.task), (example,), dynamic_shapes=({0: batch},))
        finally:
            self.net.implementation = implementation
        with atomic_file(out / "model.pt2", "wb") as f:
            torch.export.save(program, f)
        with atomic_file(out / "tokenizer.json") as f:
            f.write(self.tokenizer.to_str())
        with atomic_file(out / "meta.json") as f:
            meta = {
                "output": "probabilities (B, K) of class_names",
                "class_names": self.class_names,
                "task": self.task.state(),
                "max_len": max_len,
            }
            json.dump(meta, f)
        return out


def main(argv: list[str], prog: str = "rnn-lightning export") -> None:
    """``rnn-lightning export CKPT OUT_DIR``."""
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Write a checkpoint as OUT_DIR/model.pt2 (torch.export), tokenizer.json and meta.json, "
        "for rnn-lightning serve or rnn_lightning.serving.ExportedPredictor (no Lightning).",
    )
    p.add_argument("ckpt_path", help="a classifier checkpoint (.ckpt)")
    p.add_argument("out_dir", help="the export folder (created)")
    args = p.parse_args(argv)
    try:
        out = Predictor.from_checkpoint(args.ckpt_path).export(args.out_dir)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"exported to {out}")
