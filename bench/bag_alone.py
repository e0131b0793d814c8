"""The n-gram bag alone, without the recurrent path, and NBSVM on the same token ids: validation accuracy.

    pip install -e ".[bench]"
    python -m bench.bag_alone --data ../shared/imdb --cache_dir CACHE [--nb] [--gain 30] [--epochs 2] [--buckets N]
    python -m bench.bag_alone --data ../shared/imdb --cache_dir CACHE --nbsvm [--buckets N]
    python -m bench.bag_alone --data ../shared/imdb --cache_dir CACHE --checkpoint CKPT

Reads the token cache of the preset's data settings (``configs/bigru.yaml`` + ``bigru_bigram.yaml``:
30,000 words, the last 400 tokens of each review, the movie-disjoint ``blocks`` validation split).
Trains only the network's n-gram table (its own ``_ngram_logits``; with ``--nb`` the NBSVM form, its
ratios counted by ``fit_ngram_scale``) with the preset's optimizer and batch size (AdamW 2e-3, weight
decay 0.01, batch 128), a cosine over all steps, and prints the validation accuracy after each epoch. ``--nbsvm`` fits ``bench.linear_baselines.nbsvm`` on the same ids
instead (``--buckets``: hashed into that many features, as the bag is; 0: not hashed). A diagnostic of what bounds the
preset (BENCHMARKS.md), not a model to use. ``--checkpoint``: a trained classifier with a bag, its
validation accuracy from the whole logit, from the bag's term alone and from the rest alone (the
reviews encoded with its own tokenizer). Never reads the test split.
"""

import argparse

import numpy as np
import torch
import yaml

from bench.benchmark import ROOT
from bench.linear_baselines import nbsvm
from rnn_lightning.text import TextDataModule
from rnn_lightning.inference import Predictor
from rnn_lightning.network.text_rnn import TextRNN

PRESET = ("bigru.yaml", "bigru_bigram.yaml")  # the configs whose data and optimizer settings the bag gets


def preset() -> tuple[dict, dict]:
    """The data and optimizer init_args of the PRESET configs, later files overriding earlier ones."""
    data, optimizer = {}, {}
    for name in PRESET:
        config = yaml.safe_load((ROOT / "configs" / name).read_text())
        data.update(config.get("data", {}))
        optimizer.update(config.get("optimizer", {}).get("init_args", {}))
    return data, optimizer


def accuracy(logit_fn, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``logit_fn`` (ids (B, T) -> class-1 logits (B,)) over x, in batches of 512."""
    with torch.no_grad():
        logits = torch.cat([logit_fn(x[i : i + 512]) for i in range(0, len(y), 512)])
    return float(((logits > 0).long() == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--cache_dir", required=True)
    p.add_argument("--buckets", type=int, default=2_097_152)
    p.add_argument("--gain", type=float, default=30.0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--nb", action="store_true", help="the bag as ngram_nb: true has it")
    p.add_argument("--nbsvm", action="store_true", help="NBSVM (scikit-learn) on the same ids instead")
    p.add_argument("--checkpoint", help="split a trained model's validation logit into the bag and the rest")
    args = p.parse_args()
    data, optimizer = preset()
    dm = TextDataModule(dataset=args.data, cache_dir=args.cache_dir, tokenizer_from=args.checkpoint, **data)
    dm.prepare_data(), dm.setup("fit")
    fit, val = dm.splits["fit"], dm.splits["val"]
    x_fit, y_fit = torch.from_numpy(fit.token_ids().astype(np.int64)), fit.labels
    x_val, y_val = torch.from_numpy(val.token_ids().astype(np.int64)), val.labels
    if args.checkpoint:
        net = Predictor.from_checkpoint(args.checkpoint).net
        bag = lambda x: net._ngram_logits(x).squeeze(-1)  # noqa: E731
        for name, fn in (("whole", net), ("bag alone", bag), ("network alone", lambda x: net(x) - bag(x))):
            print(f"{name}: val accuracy {accuracy(fn, x_val, y_val):.4f}")
        return
    if args.nbsvm:
        words = lambda x: [" ".join(f"w{i}" for i in row if i) for row in x.tolist()]  # noqa: E731
        acc = nbsvm((words(x_fit), y_fit.numpy()), (words(x_val), y_val.numpy()), n_features=args.buckets or None)
        print(f"nbsvm buckets {args.buckets or 'none'}: val accuracy {acc:.4f}")
        return
    torch.manual_seed(0)
    net = TextRNN(vocab_size=data["vocab_size"], embed_dim=1, hidden_size=1, num_layers=1, ngram_buckets=args.buckets,
                       ngram_gain=args.gain, ngram_nb=args.nb)  # fmt: skip
    if args.nb:
        net.fit_ngram_scale(dm.batches("fit"))
    bag = lambda x: net._ngram_logits(x).squeeze(-1)  # noqa: E731
    opt = torch.optim.AdamW(net.ngrams.parameters(), lr=optimizer["lr"], weight_decay=optimizer["weight_decay"])
    batch = data["batch_size"]
    steps_per_epoch = -(-len(y_fit) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        order = torch.randperm(len(y_fit))
        for start in range(0, len(y_fit), batch):
            b = order[start : start + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(bag(x_fit[b]), y_fit[b].float())
            opt.zero_grad(), loss.backward(), opt.step(), sched.step()
        acc = accuracy(bag, x_val, y_val)
        print(f"bag nb={args.nb} gain {args.gain} buckets {args.buckets} epoch {epoch}: val accuracy {acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
