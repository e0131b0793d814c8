"""The network's input path under mixed precision: gather, dropout mask and cast in as few passes as possible.

Why this exists: the tensors feeding the recurrent layers are the largest of a training step
(80 x 1024 x 100 floats, 33 MB for the base model, more than this CPU's L3 cache), so every pass over
them is a trip to main memory. ``F.embedding`` then ``x * mask`` then autocast's cast to bfloat16
makes three such passes forward and three back. Here, under autocast, the embedding rows are gathered
straight from a bfloat16 copy of the table and masked in place (half the bytes, one pass), and the
dropout mask between layers is applied while casting. The embedding's gradient is still summed in
float32: summing thousands of a frequent token's gradients in bfloat16 loses them (see the tests).

Without autocast (``dtype`` float32) both ops compute exactly ``F.embedding(tokens, w) * mask``; on a
CPU the embedding's gather with its mask, and its gradient (the masked rows summed into the table),
are one compiled pass each (native.py) where the kernels are built.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from rnn_lightning.network import native


class _MaskedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens: Tensor, weight: Tensor, mask: Tensor | None, padding_idx: int, dtype: torch.dtype):
        # float32 on a CPU: gather, mask and (backward) the masked sum of rows as one pass each (native.py)
        one_mask = mask is None or mask.shape == (1, tokens.shape[1], weight.shape[1])  # (1, B, E): every step alike
        ctx.native = dtype == torch.float32 and one_mask and native.usable(weight)
        ctx.save_for_backward(tokens, mask)
        ctx.num_weights, ctx.padding_idx, ctx.weight_dtype = weight.shape[0], padding_idx, weight.dtype
        if ctx.native:
            return native.embedding_forward(tokens, weight, None if mask is None else mask[0].float())
        out = F.embedding(tokens, weight.to(dtype))
        if mask is not None:
            out.mul_(mask.to(dtype))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        tokens, mask = ctx.saved_tensors
        if ctx.native:
            mask = None if mask is None else mask[0].float()
            return None, native.embedding_backward(tokens, grad, mask, ctx.num_weights, ctx.padding_idx), None, None, None
        if mask is not None:
            grad = grad * mask.to(grad.dtype)
        grad = grad.float()  # summed in float32 whatever the compute dtype
        if grad.device.type == "cpu":  # index_add_ takes about half of embedding_dense_backward's time on a CPU (BENCHMARKS.md)
            grad_weight = grad.new_zeros(ctx.num_weights, grad.shape[-1])
            grad_weight.index_add_(0, tokens.reshape(-1), grad.reshape(-1, grad.shape[-1]))
            grad_weight[ctx.padding_idx] = 0
        else:  # on CUDA the sorted reduction, not atomics
            grad_weight = torch.ops.aten.embedding_dense_backward(grad, tokens, ctx.num_weights, ctx.padding_idx, False)
        return None, grad_weight.to(ctx.weight_dtype), None, None, None


class _MaskedCast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, dtype: torch.dtype):
        ctx.save_for_backward(mask)
        if x.dtype == dtype:  # e.g. bfloat16 states: a mixed-dtype product would run in float32 through a temporary
            return x * mask.to(dtype)  # exact either way: the mask holds 0 and 1 / (1 - p)
        return torch.mul(x, mask, out=torch.empty(x.shape, dtype=dtype, device=x.device))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None  # autograd casts it to x's dtype


def masked_embedding(
    tokens: Tensor, weight: Tensor, mask: Tensor | None, padding_idx: int, dtype: torch.dtype | None = None
) -> Tensor:
    """``(F.embedding(tokens, weight) * mask)`` in ``dtype`` (default: the weight's); the pad row gets no gradient.

    tokens (T, B); mask broadcastable to (T, B, E), e.g. (1, B, E), or None.
    """
    return _MaskedEmbedding.apply(tokens, weight, mask, padding_idx, dtype or weight.dtype)


def masked_cast(x: Tensor, mask: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``(x * mask).to(dtype)`` in one pass over x (x * mask would promote a bfloat16 x to the mask's float32)."""
    if dtype is None:
        return x * mask
    return _MaskedCast.apply(x, mask, dtype)
