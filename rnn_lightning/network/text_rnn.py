"""The network: token ids -> one logit per review. Plain PyTorch; knows nothing of Lightning."""

import inspect
import os
import re
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from rnn_lightning.errors import InputError
from rnn_lightning.network.recurrent import Cell, Implementation, RecurrentLayer

Pooling = Literal["last", "max", "mean", "max_mean"]


class TextRNN(nn.Module):
    """Embedding -> stacked recurrent layers -> linear head: token ids (B, T) -> logits, (B,) for one
    output (e.g. the logit of class 1 of two), (B, K) for K.

    This signature is the one place the network's hyperparameters, their defaults and their checks
    live; the LightningModule and the command line (``model.*``) take them from here. The defaults
    are the Keras tutorial's model (1,018,881 parameters).

    Args:
        vocab_size: rows of the embedding; the CLI links it from ``data.vocab_size``.
        num_outputs: logits per text; the classifier sets it from its task (``Task.num_outputs``: one for
            two classes that exclude each other, else one per class); 0 builds no head (a language
            model's body: ``embed`` and ``encode`` only).
        pad_id: id of ``<pad>``; its embedding row stays zero. The CLI links it from the data module.
        embed_dim: embedding width.
        cell: ``rnn`` (Keras SimpleRNN, one bias), ``gru`` or ``lstm`` (PyTorch's formulas).
        hidden_size: units per direction of each recurrent layer.
        num_layers: stacked recurrent layers.
        dropout: Keras' input dropout before every recurrent layer: one mask per review and feature,
            reused at every time step (a per-step mask would erase a different part of the signal each step).
        bidirectional: run each layer in both directions and concatenate.
        pooling: how the last layer's outputs (T, B, D*H) become one vector per review: ``last``
            state (for a bidirectional layer each direction's final state), ``max`` or ``mean`` over
            the real (unpadded) steps, or ``max_mean`` (the two concatenated).
        implementation: ``auto`` (the compiled loop for the rnn cell on a CPU, else fused), ``fused``
            (PyTorch's kernels) or ``bptt`` (the rnn cell's compiled CPU loop); the same function, different
            speed (see ``recurrent.py``).
        word_dropout: probability of replacing each token of a training review by padding, so the
            model cannot lean on a few memorable words (names, titles).
        bigram_buckets: rows of a table of word-pair embeddings (0: none). Each step's input is then
            the word's embedding plus that of (previous word, word), indexed by a hash of the pair
            (row 0: no pair, i.e. the first word or next to padding); colliding pairs share a row.
            A pair like "not good" enters the recurrence as one signal instead of being composed by it.
        ngram_buckets: rows of a table of per-class weights of the review's words, word pairs and word
            triples, hashed (0: none). Their sum over sqrt(count) is added to the head's logits: a
            linear bag-of-n-grams path beside the recurrent one (the model a linear baseline is),
            at almost no cost beside the recurrence.
        ngram_gain: the bag's sum is scaled by ngram_gain / sqrt(n) for n n-grams. Under Adam, whose
            steps do not depend on a gradient's scale, the gain is the bag's learning rate relative to
            the network's: a linear model of ~1,000 features a review needs larger weights than one
            step size per update can reach in an epoch.
        ngram_nb: the bag as NBSVM (Wang & Manning 2012) has it: each n-gram counts once per review,
            and each row's weight is multiplied by its naive-Bayes log-count ratio, counted on the
            training split at the start of ``fit`` (``fit_ngram_scale``) and saved in the checkpoint
            (``ngram_scale``). Then one update moves an n-gram's weight in proportion to how much its
            presence tells the classes apart, instead of the same step for every n-gram (Adam's).
    """

    def __init__(
        self,
        vocab_size: int = 10_000,
        num_outputs: int = 1,
        pad_id: int = 0,
        embed_dim: int = 100,
        cell: Cell = "rnn",
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.2,
        bidirectional: bool = False,
        pooling: Pooling = "last",
        implementation: Implementation = "auto",
        word_dropout: float = 0.0,
        bigram_buckets: int = 0,
        ngram_buckets: int = 0,
        ngram_gain: float = 30.0,
        ngram_nb: bool = False,
    ) -> None:
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # as passed, by name
        check_hyperparameters(self.config)
        self.dropout, self.pooling, self.pad_id, self.implementation = dropout, pooling, pad_id, implementation
        self.word_dropout = word_dropout
        self.generator: torch.Generator | None = None  # dropout masks; the global RNG when None
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.bigrams = nn.Embedding(bigram_buckets, embed_dim, padding_idx=0) if bigram_buckets else None
        sizes = [embed_dim] + [hidden_size * (2 if bidirectional else 1)] * num_layers
        self.layers = nn.ModuleList(RecurrentLayer(cell, n_in, hidden_size, bidirectional) for n_in in sizes[:-1])
        self.num_outputs = num_outputs
        pooled = sizes[-1] * (2 if pooling == "max_mean" else 1)
        self.head = nn.Linear(pooled, num_outputs) if num_outputs else None
        self.ngrams = nn.Embedding(ngram_buckets, num_outputs, padding_idx=0) if ngram_buckets and num_outputs else None
        self.ngram_gain, self.ngram_nb = ngram_gain, ngram_nb
        if ngram_nb:  # (buckets, C) log-count ratios; ones until fit_ngram_scale counts the training split
            self.register_buffer("ngram_scale", torch.ones(ngram_buckets, num_outputs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras' defaults: embedding uniform +-0.05, glorot-uniform head, zero bias (pad row stays zero)."""
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        with torch.no_grad():
            self.embedding.weight[self.pad_id].zero_()
        if self.bigrams is not None:
            nn.init.uniform_(self.bigrams.weight, -0.05, 0.05)
            with torch.no_grad():
                self.bigrams.weight[0].zero_()
        if self.head is not None:
            nn.init.xavier_uniform_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if self.ngrams is not None:
            nn.init.zeros_(self.ngrams.weight)  # the bag starts silent; a linear model's usual start
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) int ids, padded at the front -> logits (B,) or (B, K)."""
        return self.classify(self.embed(tokens), tokens)

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> the first layer's input (T, B, E), time-major so each step is one contiguous
        block; while training with word dropout and the first input dropout mask applied.

        Adversarial training perturbs this tensor and passes it on to ``classify``.
        """
        words = tokens
        if self.training and self.word_dropout > 0:
            drop = torch.empty(tokens.shape, device=tokens.device).bernoulli_(
                self.word_dropout, generator=self.generator
            )
            words = tokens.masked_fill(drop.bool(), self.pad_id)  # pooling still sees the real length
        x = _lookup(self.embedding, words.t())  # (T, B, E)
        if self.bigrams is not None:
            x = x + _lookup(self.bigrams, self._bigram_rows(words).t())
        mask = self._dropout_mask(tokens.shape[0], 0)
        return x if mask is None else x.mul_(mask)  # in place: x is this function's own new tensor

    def classify(self, x: Tensor, tokens: Tensor) -> Tensor:
        """Embedded input x (T, B, E) of ``tokens`` (B, T) -> logits (B,) or (B, K)."""
        last_only = self.pooling == "last"
        x = self.encode(x, last_only=last_only)  # (B, D*H) if last_only, else (T, B, D*H)
        logits = self.head(x if last_only else self._pool(x, tokens))
        if self.ngrams is not None:
            logits = logits + self._ngram_logits(tokens)
        return logits.squeeze(-1) if self.num_outputs == 1 else logits

    def encode(self, x: Tensor, last_only: bool = False) -> Tensor:
        """Embedded input x (T, B, E) -> the last layer's outputs at every step (T, B, D*H), or with
        ``last_only`` each direction's final state (B, D*H)."""
        for i, layer in enumerate(self.layers):
            mask = self._dropout_mask(x.shape[1], i) if i else None
            if mask is not None:
                x = x * mask
            x = layer(x, self.implementation, last_only=last_only and i == len(self.layers) - 1)
        return x

    def _bigram_rows(self, words: Tensor) -> Tensor:
        """(B, T) ids -> (B, T) rows of ``self.bigrams``: a hash of (previous id, id) in [1, buckets), 0 where
        either is padding (the first step, the front padding, dropped words)."""
        prev = torch.nn.functional.pad(words[:, :-1], (1, 0), value=self.pad_id)
        rows = (prev * 2_654_435_761 + words) % (self.bigrams.num_embeddings - 1) + 1
        return rows.masked_fill((prev == self.pad_id) | (words == self.pad_id), 0)

    def _ngram_logits(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, C): the sum of the ngram table's rows of the review's n words, pairs and triples,
        times ngram_gain / sqrt(n) (a linear model of length-normalised n-gram counts, as TF-IDF's L2 norm gives).
        With ``ngram_nb`` each distinct n-gram counts once, its row times its ``ngram_scale``."""
        rows = self._review_ngrams(tokens)  # (B, 3T)
        count = (rows != 0).sum(dim=1).clamp(min=1).unsqueeze(-1)  # (B, 1)
        weights = self.ngrams(rows)  # (B, 3T, C)
        if self.ngram_nb:
            weights = weights * self.ngram_scale[rows]
        return weights.sum(dim=1).float() * (self.ngram_gain / count.sqrt())

    def _review_ngrams(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, 3T) rows of each review's n-grams (0: none); with ``ngram_nb`` each distinct
        row once (sorted, repeats set to 0)."""
        rows = self._ngram_rows(tokens).permute(1, 0, 2).reshape(tokens.shape[0], -1)
        if not self.ngram_nb:
            return rows
        rows = rows.sort(dim=1).values
        repeat = torch.zeros_like(rows, dtype=torch.bool)
        repeat[:, 1:] = rows[:, 1:] == rows[:, :-1]
        return rows.masked_fill(repeat, 0)

    @torch.no_grad()
    def fit_ngram_scale(self, batches, alpha: float = 1.0) -> None:
        """Set ``ngram_scale`` from (tokens (B, T), labels) batches of the training split, labels class ids
        (B,) or, multi-label, (B, K) of 0/1: for each class c, log(f_c / f_rest), with f the smoothed
        (``alpha``) share of the n-gram presences of the texts of c (f_rest: of the texts without c) that
        fall in the row; one column (two classes) is class 1 against class 0. Rows no review has keep
        scale 0 (an n-gram unseen in training carries no evidence)."""
        buckets, n_logits = self.ngram_scale.shape
        k = max(2, n_logits)
        counts = torch.zeros(k, buckets, dtype=torch.float64)
        total = torch.zeros(buckets, dtype=torch.float64)
        for tokens, labels in batches:
            rows = self._review_ngrams(tokens.to(self.ngram_scale.device)).cpu()  # (B, 3T)
            total += torch.bincount(rows.flatten(), minlength=buckets)
            for c in range(k):
                members = labels[:, c].bool() if labels.dim() == 2 else labels == c
                counts[c] += torch.bincount(rows[members].flatten(), minlength=buckets)
        counts[:, 0], total[0] = 0, 0  # row 0: "no n-gram"
        seen = total > 0
        rest = total - counts
        f_class, f_rest = counts + alpha, rest + alpha
        ratio = (f_class / f_class.sum(1, keepdim=True)).log() - (f_rest / f_rest.sum(1, keepdim=True)).log()
        ratio = (ratio[1:] if n_logits == 1 else ratio).t() * seen.unsqueeze(-1)  # (buckets, C)
        self.ngram_scale.copy_(ratio.to(self.ngram_scale.dtype))

    def _ngram_rows(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (3, B, T) rows of ``self.ngrams`` for the word, the pair and the triple ending at
        each step: hashes in [1, buckets), 0 where the n-gram touches padding."""
        real = tokens != self.pad_id
        prev1 = torch.nn.functional.pad(tokens[:, :-1], (1, 0), value=self.pad_id)
        prev2 = torch.nn.functional.pad(tokens[:, :-2], (2, 0), value=self.pad_id)
        real1 = real & (prev1 != self.pad_id)
        real2 = real1 & (prev2 != self.pad_id)
        p, a = 2_147_483_647, 2_654_435_761  # a prime modulus keeps every product inside int64
        pair = (prev1 * a + tokens) % p
        triple = ((prev2 * a + prev1) % p * a + tokens) % p
        buckets = self.ngrams.num_embeddings - 1
        return torch.stack(
            [
                (tokens % buckets + 1).masked_fill(~real, 0),
                ((pair * 3 + 1) % buckets + 1).masked_fill(~real1, 0),
                ((triple * 3 + 2) % buckets + 1).masked_fill(~real2, 0),
            ]
        )

    def _dropout_mask(self, batch: int, layer: int) -> Tensor | None:
        """Input dropout before layer ``layer``: (1, B, in), one draw per review and feature, or None."""
        if not (self.training and self.dropout > 0):
            return None
        width = self.embedding.embedding_dim if layer == 0 else self.layers[layer - 1].output_size
        weight = self.embedding.weight
        keep = 1.0 - self.dropout
        mask = torch.empty(1, batch, width, dtype=weight.dtype, device=weight.device)
        return mask.bernoulli_(keep, generator=self.generator).div_(keep)

    def _pool(self, x: Tensor, tokens: Tensor) -> Tensor:
        """x (T, B, D*H) -> (B, D*H), over the real (unpadded) steps: max, mean or both."""
        real = (tokens.t() != self.pad_id).unsqueeze(-1)  # (T, B, 1)
        pooled = []
        if self.pooling in ("max", "max_mean"):
            pooled.append(x.masked_fill(~real, float("-inf")).amax(dim=0).nan_to_num(neginf=0.0))
        if self.pooling in ("mean", "max_mean"):
            pooled.append((x * real).sum(dim=0) / real.sum(dim=0).clamp(min=1))
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)

    @classmethod
    def from_checkpoint(cls, path: str, map_location: str = "cpu", ckpt: dict | None = None) -> "TextRNN":
        """The network of classifier checkpoint ``path``, in eval mode on ``map_location``.

        Read with ``checkpoint.load_checkpoint`` (``weights_only``, memory-mapped), unless ``ckpt`` is what
        that read already; built on the meta device and given the file's tensors (renamed by
        ``upgrade_state_dict`` where an earlier version saved them), so nothing is initialised or copied.
        Anything but a classifier's checkpoint is one ``InputError`` naming the file.
        """
        from rnn_lightning import checkpoint

        ckpt = checkpoint.load_checkpoint(path, mmap=True) if ckpt is None else ckpt
        hparams = ckpt[checkpoint.HPARAMS_KEY]
        outputs = checkpoint.task(ckpt).num_outputs
        prefix = "net."
        try:
            if "cutoffs" in hparams:
                raise InputError("a language model, which predicts words, not classes")
            with torch.device("meta"):
                net = cls(**network_arguments(hparams), num_outputs=outputs)
            weights = upgrade_state_dict(dict(ckpt[checkpoint.WEIGHTS_KEY]), prefix)
            net.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, assign=True)
        except (InputError, TypeError, RuntimeError) as e:
            raise InputError(
                f"ckpt_path: {str(path)!r} does not hold an rnn-lightning classifier ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        return net.to(map_location).eval()


class _RowsAdded(torch.autograd.Function):
    """``F.embedding`` whose weight gradient is ``index_add_`` of the output gradient into the used rows.

    Same values, bit for bit (each row sums its gradients in index order either way); ATen's
    ``embedding_dense_backward`` on a CPU takes about twice as long for a (80 x 1024, 100) batch.
    """

    @staticmethod
    def forward(ids: Tensor, weight: Tensor, pad_id: int) -> Tensor:
        return torch.nn.functional.embedding(ids, weight, padding_idx=pad_id)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ids, weight, pad_id = inputs
        ctx.save_for_backward(ids)
        ctx.rows, ctx.pad_id = weight.shape[0], pad_id

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        dw = grad.new_zeros(ctx.rows, grad.shape[1]).index_add_(0, ids.reshape(-1), grad)
        dw[ctx.pad_id] = 0  # padding_idx: the pad row never learns
        return None, dw, None


def _lookup(table: nn.Embedding, ids: Tensor) -> Tensor:
    """``table(ids)``; on a CPU while its weight learns, through ``_RowsAdded``."""
    weight = table.weight
    if weight.requires_grad and torch.is_grad_enabled() and weight.device.type == "cpu":
        return _RowsAdded.apply(ids, weight, table.padding_idx)
    return table(ids)


# A layer's parameters before they lived in an nn.RNN/GRU/LSTM: ``layers.0.weight_ih_reverse`` is now
# ``layers.0.rnn.weight_ih_l0_reverse`` (the same tensors, in the same order: an optimizer's state still fits).
_FORMER_NAME = re.compile(r"(layers\.\d+\.)(weight_ih|weight_hh|bias_ih|bias_hh)(_reverse)?")


def upgrade_state_dict(weights: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Rename, in place, a network's tensors saved under names of an earlier version (the keys of ``weights``
    that start with ``prefix``, e.g. ``net.`` in a LightningModule's checkpoint) to today's; returns ``weights``.
    Every reader of a checkpoint's weights calls it; today's names pass unchanged."""
    renamed = {}
    for key, value in weights.items():
        match = _FORMER_NAME.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
        if match:
            layer, name, sfx = match.groups()
            key = f"{prefix}{layer}rnn.{name}_l0{sfx or ''}"
        renamed[key] = value
    if renamed.keys() != weights.keys():
        weights.clear()
        weights.update(renamed)
    return weights


def network_arguments(hparams: dict) -> dict:
    """The arguments of ``TextRNN`` among a model's saved hyperparameters (which hold others too)."""
    names = inspect.signature(TextRNN).parameters.keys() - {"num_outputs"}
    return {k: v for k, v in hparams.items() if k in names}


def check_hyperparameters(config: dict) -> None:
    """``TextRNN``'s arguments by name, checked before anything is built; the error names the argument."""
    for name, choices in (("cell", Cell), ("pooling", Pooling), ("implementation", Implementation)):
        if config[name] not in get_args(choices):
            raise InputError(f"{name}: expected one of {', '.join(get_args(choices))}; got {config[name]!r}")
    for name, low in (("vocab_size", 3), ("embed_dim", 1), ("hidden_size", 1), ("num_layers", 1)):
        if not isinstance(config[name], int) or config[name] < low:
            raise InputError(f"{name}: expected an integer >= {low}, got {config[name]!r}")
    if not isinstance(config["num_outputs"], int) or config["num_outputs"] < 0:
        raise InputError(f"num_outputs: expected 0 (no head) or an integer >= 1, got {config['num_outputs']!r}")
    for name in ("bigram_buckets", "ngram_buckets"):
        if not isinstance(config[name], int) or config[name] == 1 or config[name] < 0:
            raise InputError(f"{name}: expected 0 (none) or an integer >= 2, got {config[name]!r}")
    if config["ngram_nb"] and not config["ngram_buckets"]:
        raise InputError("ngram_nb: needs ngram_buckets, the bag's table (e.g. 2097152)")
    if not config["ngram_gain"] > 0:
        raise InputError(f"ngram_gain: expected a number > 0, got {config['ngram_gain']}")
    for name in ("dropout", "word_dropout"):
        if not 0.0 <= config[name] < 1.0:
            raise InputError(f"{name}: expected a number in [0, 1), got {config[name]}")
    table_bytes = 4 * 4 * config["vocab_size"] * config["embed_dim"]  # float32 weights, gradient, two Adam moments
    if table_bytes > _physical_memory():
        raise InputError(
            f"vocab_size: {config['vocab_size']} rows of {config['embed_dim']} need about {table_bytes / 2**30:.0f} GB "
            f"to train, more than this machine's {_physical_memory() / 2**30:.0f} GB"
        )
    if not 0 <= config["pad_id"] < config["vocab_size"]:
        raise InputError(f"pad_id: expected an id in [0, vocab_size={config['vocab_size']}), got {config['pad_id']}")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return 1 << 62
