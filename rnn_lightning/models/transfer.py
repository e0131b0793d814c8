"""Pretrained weights to start a classifier from (``model.init_from``)."""

import torch
from lightning.pytorch.utilities import rank_zero_info

from rnn_lightning import checkpoint
from rnn_lightning.errors import InputError
from rnn_lightning.network.text_rnn import upgrade_state_dict


def copy_network(path: str, model: torch.nn.Module) -> list[str]:
    """Copy every tensor of ``path``'s network that this network has too, except the class logits' (the
    head and the n-gram bag with its scale, which start afresh for this model's classes); the names copied.

    The embedding and the recurrent layers must be there, and every tensor copied must have the same
    shape on both sides: a mismatch, e.g. another vocabulary size, is a one-line error naming both
    shapes. Tensors the source lacks (a word-pair table a language model cannot train) keep their
    initialisation, and are named.
    """
    try:
        ckpt = checkpoint.load_checkpoint(path)
    except InputError as e:
        raise InputError(f"model.init_from: {str(e).split(': ', 1)[1]}") from None
    weights = upgrade_state_dict(dict(ckpt[checkpoint.WEIGHTS_KEY]), "net.")  # names of an earlier version too
    source = {k[len("net.") :]: v for k, v in weights.items() if k.startswith("net.")}
    target = model.net.state_dict()
    wanted = [k for k in target if not k.startswith(("head.", "ngrams.", "ngram_scale"))]
    required = [k for k in wanted if k.startswith(("embedding.", "layers."))]
    missing = [k for k in required if k not in source]
    if missing:
        raise InputError(f"model.init_from: {path!r} has no {missing[0]} (another network: cell, layers or directions)")
    names = [k for k in wanted if k in source]
    for k in names:
        if source[k].shape != target[k].shape:
            raise InputError(
                f"model.init_from: {k} is {tuple(source[k].shape)} in {path!r} but {tuple(target[k].shape)} here"
                + (
                    " (vocabulary: set data.vocab_size to the pretraining's)"
                    if k == "embedding.weight" and source[k].shape[0] != target[k].shape[0]
                    else ""
                )  # fmt: skip
            )
    with torch.no_grad():
        for k in names:
            target[k].copy_(source[k])
    kept = sorted(set(wanted) - set(names))
    if kept:
        rank_zero_info(f"model.init_from: not in the checkpoint, so initialised afresh: {', '.join(kept)}")
    return names
