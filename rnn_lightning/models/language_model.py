"""Language-model pretraining of the classifier's network on unlabelled text: next-word prediction.

    python cli.py pretrain --config configs/lm.yaml --data.dataset ../shared/imdb

The network is ``TextRNN`` itself, so its embedding and recurrent layers move to a classifier
unchanged (``--model.init_from`` of ``cli.py``). The last layer's output at step t predicts the next
word (forward direction) and, for a bidirectional layer, the previous word (backward direction, which
has read steps t..T). Both share one output layer.
"""

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from rnn_lightning.errors import InputError
from rnn_lightning.models.recurrent_module import NonFinite, RecurrentModule


class LanguageModel(RecurrentModule):
    """Next-word prediction over ``TextRNN``'s per-step outputs.

    The output layer is ``nn.AdaptiveLogSoftmaxWithLoss``: frequent words (ids below the first
    cutoff: the tokenizer numbers words by frequency) get a full softmax row, rarer ones share
    clusters with narrower projections. A full 30,000-word softmax costs more than the recurrence
    itself per token; this one is exact (a true log-likelihood, so perplexity means what it says),
    unlike a sampled softmax, at a fraction of the cost.

    Args:
        on_nonfinite: ``stop`` or ``skip`` on a NaN/inf loss or gradient, as for the classifier.
        cutoffs: ids where the adaptive softmax's clusters begin, increasing, below ``vocab_size``.
        div_value: each further cluster's projection is this many times narrower.
        **net: the network's hyperparameters (``TextRNN``'s arguments, as for the classifier).
            A bidirectional network must have one layer: a second layer would let the forward
            direction see the words it has to predict through the first layer's backward outputs.
    """

    CHECKPOINT_MONITOR, CHECKPOINT_MODE = "val/loss", "min"

    def __init__(
        self,
        on_nonfinite: NonFinite = "stop",
        cutoffs: list[int] = [2000, 10000],  # noqa: B006 (jsonargparse needs the literal default)
        div_value: float = 4.0,
        **net: Any,
    ) -> None:
        super().__init__()
        net.pop("num_classes", None)  # in the hyperparameters of older checkpoints: no head here
        self.save_hyperparameters()
        self.build_network(on_nonfinite, num_outputs=0, **net)
        config = self.net.config
        if config["bidirectional"] and config["num_layers"] > 1:
            raise InputError(
                f"model.num_layers: a bidirectional language model needs 1 layer, got {config['num_layers']} "
                "(the forward direction would see the words it predicts)"
            )
        if config["bidirectional"] and config["bigram_buckets"]:
            raise InputError(
                "model.bigram_buckets: a bidirectional language model cannot use word-pair embeddings "
                "(the pair at step t holds word t-1, which the backward direction predicts there); set it to 0"
            )
        if config["ngram_buckets"]:
            raise InputError(
                "model.ngram_buckets: a language model predicts words, it has no class logits to add to; set it to 0"
            )
        del self.hparams["num_outputs"]  # always 0: the network's body only
        vocab = config["vocab_size"]
        if list(cutoffs) != sorted(set(cutoffs)) or not cutoffs or cutoffs[0] < 2 or cutoffs[-1] >= vocab - 1:
            raise InputError(
                f"model.cutoffs: expected increasing ids between 2 and vocab_size-2={vocab - 2}, got {cutoffs}"
            )
        self.hidden = config["hidden_size"]
        self.output = nn.AdaptiveLogSoftmaxWithLoss(self.hidden, vocab, list(cutoffs), div_value=div_value)
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()  # per-token mean, exact under DDP

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> the summed negative log-likelihood of every real next (and previous) word, and their count."""
        out = self.net.encode(self.net.embed(tokens))  # (T, B, D*H)
        ids = tokens.t()  # (T, B)
        pairs = [(out[:-1, :, : self.hidden], ids[1:])]  # forward: step t predicts word t+1
        if out.shape[-1] > self.hidden:
            pairs.append((out[1:, :, self.hidden :], ids[:-1]))  # backward: step t predicts word t-1
        nll, count = out.new_zeros((), dtype=torch.float32), 0
        pad = self.net.pad_id
        for states, targets in pairs:
            real = targets != pad
            # float32 output layer under bf16 autocast: log-probabilities over 30,000 words need the range
            with torch.autocast(tokens.device.type, enabled=False):
                result = self.output(states[real].float(), targets[real])
            nll = nll + result.loss * real.sum()
            count += int(real.sum())
        return nll, count

    def _step(self, batch, stage: str) -> Tensor:
        if isinstance(batch, dict):  # labelled and unlabelled reviews (CombinedLoader): all are text here
            batch = (torch.cat([part[0] for part in batch.values()]),)
        nll, count = self(batch[0])
        loss = nll / max(count, 1)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=count)
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def _log_epoch(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_loss")
        loss = metric.compute()
        # synced already by the MeanMetric: Lightning's max of the equal values is exact and does not warn
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, reduce_fx="max")
        self.log(f"{stage}/ppl", loss.exp(), prog_bar=stage == "val", sync_dist=True, reduce_fx="max")
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
