"""The losses of the semi-supervised objectives: perturbations of the embedded input, soft labels, KL."""

import torch
import torch.nn.functional as F
from torch import Tensor


def perturbation(direction: Tensor, tokens: Tensor, pad_id: int, norm: float) -> Tensor:
    """``direction`` (T, B, E) zeroed at padding and scaled so each review's slice has L2 norm ``norm``."""
    real = (tokens.t() != pad_id).unsqueeze(-1).to(direction.dtype)  # (T, B, 1)
    d = direction.float() * real
    scale = norm / d.square().sum(dim=(0, 2), keepdim=True).sqrt().clamp_min(1e-12)
    return (d * scale).to(direction.dtype)


def soft_label_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits (B,) or (B, K) against probabilities ``targets`` (B, K) of each class."""
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), targets)
    return F.binary_cross_entropy_with_logits(logits.float(), targets[:, 1])


def categorical_kl(clean_logits: Tensor, logits: Tensor) -> Tensor:
    """Mean KL(p(clean) || p(logits)) over the batch, for binary (B,) or K-class (B, K) logits; the
    clean side is a constant."""
    if logits.dim() == 2:
        p_log = F.log_softmax(clean_logits.detach().float(), -1)
        return (p_log.exp() * (p_log - F.log_softmax(logits.float(), -1))).sum(-1).mean()
    p = torch.sigmoid(clean_logits.detach().float())
    logits = logits.float()
    # p log p/q + (1-p) log (1-p)/(1-q), with log q = logsigmoid(l), log(1-q) = logsigmoid(-l)
    return (
        p * (F.logsigmoid(clean_logits.detach().float()) - F.logsigmoid(logits))
        + (1 - p) * (F.logsigmoid(-clean_logits.detach().float()) - F.logsigmoid(-logits))
    ).mean()
