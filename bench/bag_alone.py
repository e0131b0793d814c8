"""The n-gram bag alone, without the recurrent path, and NBSVM on the same token ids: validation accuracy.

    pip install -e ".[bench]"
    python -m bench.bag_alone --data ../shared/imdb --cache_dir CACHE [--nb] [--gain 30] [--epochs 2] [--buckets N]
    python -m bench.bag_alone --data ../shared/imdb --cache_dir CACHE --nbsvm [--buckets N]
    python -m bench.bag_alone --data ../shared/imdb --cache_dir CACHE --checkpoint CKPT

Reads the token cache of the preset's data settings (30,000 words, the last 400 tokens of each review,
the movie-disjoint ``blocks`` validation split). Trains only the network's n-gram table (its own
``_ngram_logits``; with ``--nb`` the NBSVM form, its ratios counted by ``fit_ngram_scale``) with the
preset's optimizer (AdamW 2e-3, weight decay 0.01, batch 128, a cosine over all steps) and prints the
validation accuracy after each epoch. ``--nbsvm`` fits ``bench.linear_baselines.nbsvm`` on the same ids
instead (``--buckets``: hashed into that many features, as the bag is; 0: not hashed). A diagnostic of what bounds the
preset (BENCHMARKS.md), not a model to use. ``--checkpoint``: a trained classifier with a bag, its
validation accuracy from the whole logit, from the bag's term alone and from the rest alone. Never
reads the test split.
"""

import argparse

import numpy as np
import torch

from bench.linear_baselines import nbsvm
from rnn_lightning.data import IMDBDataModule
from rnn_lightning.inference import SentimentPredictor
from rnn_lightning.models.components.network import SentimentRNN


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
    dm = IMDBDataModule(dataset=args.data, vocab_size=30_000, max_len=400, batch_size=128, val_split="blocks",
                        cache_dir=args.cache_dir)  # fmt: skip
    dm.prepare_data(), dm.setup("fit")
    fit, val = dm.splits["fit"], dm.splits["val"]
    x_fit, y_fit = torch.from_numpy(fit.token_ids().astype(np.int64)), fit.labels
    x_val, y_val = torch.from_numpy(val.token_ids().astype(np.int64)), val.labels
    if args.checkpoint:
        net = SentimentPredictor.from_checkpoint(args.checkpoint).net
        with torch.no_grad():
            parts = [(net(x_val[i : i + 512]), net._ngram_logits(x_val[i : i + 512]).squeeze(-1)) for i in range(0, len(y_val), 512)]
        whole, bag = torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts])
        for name, logit in (("whole", whole), ("bag alone", bag), ("network alone", whole - bag)):
            print(f"{name}: val accuracy {((logit > 0).long() == y_val).float().mean():.4f}")
        return
    if args.nbsvm:
        words = lambda x: [" ".join(f"w{i}" for i in row if i) for row in x.tolist()]  # noqa: E731
        acc = nbsvm((words(x_fit), y_fit.numpy()), (words(x_val), y_val.numpy()), n_features=args.buckets or None)
        print(f"nbsvm buckets {args.buckets or 'none'}: val accuracy {acc:.4f}")
        return
    torch.manual_seed(0)
    net = SentimentRNN(vocab_size=30_000, embed_dim=1, hidden_size=1, num_layers=1, ngram_buckets=args.buckets,
                       ngram_gain=args.gain, ngram_nb=args.nb)  # fmt: skip
    if args.nb:
        net.fit_ngram_scale(dm.batches("fit"))
    bag = lambda x: net._ngram_logits(x).squeeze(-1)  # noqa: E731
    opt = torch.optim.AdamW(net.ngrams.parameters(), lr=2e-3, weight_decay=0.01)
    steps_per_epoch = -(-len(y_fit) // 128)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        order = torch.randperm(len(y_fit))
        for start in range(0, len(y_fit), 128):
            b = order[start : start + 128]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(bag(x_fit[b]), y_fit[b].float())
            opt.zero_grad(), loss.backward(), opt.step(), sched.step()
        with torch.no_grad():
            right = sum(int(((bag(x_val[i : i + 512]) > 0).long() == y_val[i : i + 512]).sum()) for i in range(0, len(y_val), 512))
        print(f"bag nb={args.nb} gain {args.gain} buckets {args.buckets} epoch {epoch}: val accuracy {right / len(y_val):.4f}", flush=True)


if __name__ == "__main__":
    main()
