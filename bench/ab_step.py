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

from rnn_lightning.text import TextDataModule
from rnn_lightning.network.text_rnn import TextRNN
from rnn_lightning.runtime import tune_cpu_runtime

COMPONENTS = "rnn_lightning/models/components"


def load_base_network(rev: str, into: Path):
    """TextRNN as it was at ``rev``, imported as a package of its own (``base_components``)."""
    pkg = into / "base_components"
    pkg.mkdir()
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", f"{rev}:{COMPONENTS}"], check=True, capture_output=True, text=True
    ).stdout.split()
    for name in names:  # with subfolders (csrc/: the compiled kernels' source)
        text = subprocess.run(["git", "show", f"{rev}:{COMPONENTS}/{name}"], check=True, capture_output=True, text=True)
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text.stdout.replace("rnn_lightning.network", "base_components"))
    sys.path.insert(0, str(into))
    return importlib.import_module("base_components.network").TextRNN


def base_batches(data: str) -> list:
    """configs/base.yaml's training batches of IMDB (its data settings are the data module's defaults)."""
    tune_cpu_runtime()
    torch.manual_seed(42)
    dm = TextDataModule(dataset=data)
    dm.prepare_data()
    dm.setup("fit")
    return list(dm.train_dataloader())


def alternate(nets: dict, bf16: dict[str, bool], batches: list, pairs: int) -> dict[str, list[float]]:
    """Seconds of each of two networks' training steps (Adam 1e-4, as base.yaml), taken in turn on the
    same batches, the order flipping every pair, after 3 warm-up steps each; ``bf16`` per network."""
    opts = {k: torch.optim.Adam(n.parameters(), lr=1e-4, foreach=True) for k, n in nets.items()}

    def step(which: str, tokens, labels) -> float:
        t0 = time.perf_counter()
        opts[which].zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16[which]):
            loss = F.binary_cross_entropy_with_logits(nets[which](tokens).float(), labels.float())
        loss.backward()
        opts[which].step()
        return time.perf_counter() - t0

    first, second = nets
    for tokens, labels in batches[:3]:  # warm-up
        step(first, tokens, labels), step(second, tokens, labels)
    times = {first: [], second: []}
    for i in range(pairs):
        tokens, labels = batches[i % len(batches)]
        for which in (first, second) if i % 2 == 0 else (second, first):
            times[which].append(step(which, tokens, labels))
    return times


def report(times: dict[str, list[float]], labels: dict[str, str]) -> str:
    """Each network's median step and the median (quartiles) of the first's time over the second's per pair."""
    first, second = times
    ratios = sorted(a / b for a, b in zip(times[first], times[second], strict=True))
    med = {k: 1000 * sorted(v)[len(v) // 2] for k, v in times.items()}
    n = len(ratios)
    return (
        f"step ms, median of {n}: {labels[first]} {med[first]:.1f}, {labels[second]} {med[second]:.1f}; "
        f"{first}/{second} per pair, median {ratios[n // 2]:.3f} (quartiles {ratios[n // 4]:.3f}-{ratios[3 * n // 4]:.3f})"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--base", required=True, help="git revision to compare the working tree against")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as precision: bf16-mixed")
    p.add_argument("--pairs", type=int, default=40)
    args = p.parse_args()
    batches = base_batches(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        nets = {"base": load_base_network(args.base, Path(tmp))(), "new": TextRNN()}
        nets["base"].load_state_dict(nets["new"].state_dict())
        times = alternate(nets, {"base": args.bf16, "new": args.bf16}, batches, args.pairs)
    print(report(times, {"base": f"base {args.base}", "new": "working tree"}))


if __name__ == "__main__":
    main()
