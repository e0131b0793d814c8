"""Step time of the network's code at two revisions, measured in one process, steps alternating.

    python -m bench.ab_step --data ../shared/imdb --base 9c0a189 [--bf16] [--pairs 40]

The network package (rnn_lightning/models/components) of ``--base`` is loaded from git beside the
working tree's; both models start from the same weights and train on the same base-config batches,
one step each in turn (the order flips every pair). This VM's speed drifts by 10-20% within minutes;
alternating puts the drift on both alike, so the median ratio over pairs is what to read.
"""

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rnn_lightning.data import IMDBDataModule
from rnn_lightning.models.components.network import SentimentRNN
from rnn_lightning.runtime import tune_cpu_runtime

COMPONENTS = "rnn_lightning/models/components"


def load_base_network(rev: str, into: Path):
    """SentimentRNN as it was at ``rev``, imported as a package of its own (``base_components``)."""
    pkg = into / "base_components"
    pkg.mkdir()
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", f"{rev}:{COMPONENTS}"], check=True, capture_output=True, text=True
    ).stdout.split()
    for name in names:  # with subfolders (csrc/: the compiled kernels' source)
        text = subprocess.run(["git", "show", f"{rev}:{COMPONENTS}/{name}"], check=True, capture_output=True, text=True)
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text.stdout.replace("rnn_lightning.models.components", "base_components"))
    sys.path.insert(0, str(into))
    return importlib.import_module("base_components.network").SentimentRNN


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--base", required=True, help="git revision to compare the working tree against")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as precision: bf16-mixed")
    p.add_argument("--pairs", type=int, default=40)
    args = p.parse_args()
    tune_cpu_runtime()
    torch.manual_seed(42)
    dm = IMDBDataModule(dataset=args.data)  # configs/base.yaml's data settings are the defaults
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    with tempfile.TemporaryDirectory() as tmp:
        nets = {"base": load_base_network(args.base, Path(tmp))(), "new": SentimentRNN()}
        nets["base"].load_state_dict(nets["new"].state_dict())
        opts = {k: torch.optim.Adam(n.parameters(), lr=1e-4, foreach=True) for k, n in nets.items()}

        def step(which: str, tokens, labels) -> float:
            t0 = time.perf_counter()
            opts[which].zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = F.binary_cross_entropy_with_logits(nets[which](tokens).float(), labels.float())
            loss.backward()
            opts[which].step()
            return time.perf_counter() - t0

        for tokens, labels in batches[:3]:  # warm-up
            step("base", tokens, labels), step("new", tokens, labels)
        times = {"base": [], "new": []}
        for i in range(args.pairs):
            tokens, labels = batches[i % len(batches)]
            for which in ("base", "new") if i % 2 == 0 else ("new", "base"):
                times[which].append(step(which, tokens, labels))
    ratios = sorted(b / n for b, n in zip(times["base"], times["new"], strict=True))
    med = {k: 1000 * sorted(v)[len(v) // 2] for k, v in times.items()}
    print(
        f"step ms, median of {args.pairs}: base {args.base} {med['base']:.1f}, working tree {med['new']:.1f}; "
        f"base/new per pair, median {ratios[len(ratios) // 2]:.3f} (quartiles {ratios[len(ratios) // 4]:.3f}-"
        f"{ratios[3 * len(ratios) // 4]:.3f})"
    )


if __name__ == "__main__":
    main()
