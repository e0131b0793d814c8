"""The network: token ids -> one logit per review. Plain PyTorch; knows nothing of Lightning."""

from typing import Literal

import torch
from torch import Tensor, nn

from rnn_lightning.models.components.masked import masked_cast, masked_embedding
from rnn_lightning.models.components.recurrent import Cell, Implementation, RecurrentLayer

Pooling = Literal["last", "max", "mean", "max_mean"]


class SentimentRNN(nn.Module):
    """Embedding -> stacked recurrent layers -> linear head.

    ``dropout`` is Keras' input dropout: before every recurrent layer, one mask per review,
    reused at every time step (a per-step mask would erase a different part of the signal each step).
    ``word_dropout`` replaces each real token by padding (a zero vector) with that probability while
    training, so the model cannot lean on a few memorable words (names, titles) of a review.
    ``pooling`` reduces the last layer's outputs over time: ``last`` is the final state (for a
    bidirectional layer, each direction's final state), ``max``/``mean`` ignore padding, ``max_mean``
    concatenates the two.
    ``bigram_buckets`` > 0 adds, at each step, an embedding of the word pair (previous word, this word)
    from a table of that many rows indexed by a hash of the pair (row 0: no pair, i.e. the first word
    or next to padding). A pair like "not good" then enters the recurrence as one signal rather than
    having to be composed by it; colliding pairs share a row.
    """

    def __init__(
        self,
        vocab_size: int = 10_000,
        embed_dim: int = 100,
        cell: Cell = "rnn",
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.2,
        bidirectional: bool = False,
        pooling: Pooling = "last",
        pad_id: int = 0,
        implementation: Implementation = "auto",
        word_dropout: float = 0.0,
        bigram_buckets: int = 0,
    ) -> None:
        super().__init__()
        self.dropout, self.pooling, self.pad_id, self.implementation = dropout, pooling, pad_id, implementation
        self.word_dropout = word_dropout
        self.generator: torch.Generator | None = None  # dropout masks; the global RNG when None
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.bigrams = nn.Embedding(bigram_buckets, embed_dim, padding_idx=0) if bigram_buckets else None
        sizes = [embed_dim] + [hidden_size * (2 if bidirectional else 1)] * num_layers
        self.layers = nn.ModuleList(RecurrentLayer(cell, n_in, hidden_size, bidirectional) for n_in in sizes[:-1])
        self.head = nn.Linear(sizes[-1] * (2 if pooling == "max_mean" else 1), 1)
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
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) int ids, padded at the front -> logits (B,)."""
        device = tokens.device.type
        # Under autocast (precision: bf16-mixed) the inputs of the recurrent layers are made in the
        # autocast dtype directly, masked while gathered or cast (see masked.py); the recurrences
        # themselves decide what runs in which precision.
        lowp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        words = tokens
        if self.training and self.word_dropout > 0:
            drop = torch.empty(tokens.shape, device=tokens.device).bernoulli_(
                self.word_dropout, generator=self.generator
            )
            words = tokens.masked_fill(drop.bool(), self.pad_id)  # pooling still sees the real length
        mask = self._dropout_mask(tokens.shape[0], 0)
        x = masked_embedding(  # (T, B, E): time-major, so each step is one contiguous block
            words.t(), self.embedding.weight, mask, self.pad_id, lowp
        )
        if self.bigrams is not None:
            x = x + masked_embedding(self._bigram_rows(words).t(), self.bigrams.weight, mask, 0, lowp)
        for i, layer in enumerate(self.layers):
            mask = self._dropout_mask(tokens.shape[0], i) if i else None
            if mask is not None:
                x = masked_cast(x, mask, lowp)
            final = self.pooling == "last" and i == len(self.layers) - 1
            x = layer(x, self.implementation, last_only=final)  # (T, B, D*H), or (B, D*H) if final
        return self.head(x if self.pooling == "last" else self._pool(x, tokens)).squeeze(-1)

    def _bigram_rows(self, words: Tensor) -> Tensor:
        """(B, T) ids -> (B, T) rows of ``self.bigrams``: a hash of (previous id, id) in [1, buckets), 0 where
        either is padding (the first step, the front padding, dropped words)."""
        prev = torch.nn.functional.pad(words[:, :-1], (1, 0), value=self.pad_id)
        rows = (prev * 2_654_435_761 + words) % (self.bigrams.num_embeddings - 1) + 1
        return rows.masked_fill((prev == self.pad_id) | (words == self.pad_id), 0)

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
