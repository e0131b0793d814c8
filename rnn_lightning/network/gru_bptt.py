"""The GRU cell's recurrence with a hand-written backward through time, registered as PyTorch custom ops.

Why it exists: on a CPU, PyTorch's own GRU kernel is differentiated step by step through many small
autograd nodes; this backward runs one small GEMM per step on gate coefficients prepared for all
steps at once (docs/results.md has the side-by-side measurement). PyTorch's formulas and gate order
(r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn))), so it computes what ``nn.GRU`` does.

Only the recurrence is custom: the input projections ``gi = x W_ih^T + b_ih`` are an ordinary GEMM
before it, differentiated by autograd. tanh is computed as 2 * sigmoid(2x) - 1 (float32 ``tanh``
costs several times ``sigmoid`` on a CPU), with the factor 2 applied to the n gate's inputs once.
"""

import torch
from torch import Tensor


def _doubled_n(t: Tensor, H: int) -> Tensor:
    """t (..., 3H) with its n block times 2 (exact in floating point)."""
    t = t.clone()
    t[..., 2 * H :] *= 2
    return t


@torch.library.custom_op("rnn_lightning::gru_recurrence", mutates_args=())
def gru_recurrence(gi: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gi (T, B, 3H) float32, the input projections with b_ih; w_hh (3H, H); b_hh (3H) -> (the final state
    (B, H), every state hs (T + 1, B, H) with hs[0] = 0, the gates r, z, n after activation (T, B, 3H),
    and 2 * (W_hn h + b_hn) per step (T, B, H)); the last two are kept for the backward."""
    T, B, _ = gi.shape
    H = w_hh.shape[1]
    gi, w_hh2, b_hh2 = _doubled_n(gi, H), _doubled_n(w_hh.t(), H), _doubled_n(b_hh, H)
    hs = gi.new_empty(T + 1, B, H)
    hs[0].zero_()
    gates, ghn, gh = gi.new_empty(T, B, 3 * H), gi.new_empty(T, B, H), gi.new_empty(B, 3 * H)
    gis, hss, gatess, ghns = gi.unbind(0), hs.unbind(0), gates.unbind(0), ghn.unbind(0)
    for t in range(T):
        torch.addmm(b_hh2, hss[t], w_hh2, out=gh)
        g, gi_t = gatess[t], gis[t]
        torch.add(gi_t[:, : 2 * H], gh[:, : 2 * H], out=g[:, : 2 * H])
        ghns[t].copy_(gh[:, 2 * H :])
        torch.addcmul(gi_t[:, 2 * H :], g[:, :H].sigmoid_(), gh[:, 2 * H :], out=g[:, 2 * H :])
        g[:, H:].sigmoid_()
        n, z = g[:, 2 * H :].mul_(2).sub_(1), g[:, H : 2 * H]
        torch.addcmul(n, z, hss[t] - n, out=hss[t + 1])  # h = n + z * (h_prev - n)
    return hs[-1].clone(), hs, gates, ghn


@gru_recurrence.register_fake
def _(gi: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    T, B, G = gi.shape
    H = G // 3
    return gi.new_empty(B, H), gi.new_empty(T + 1, B, H), gi.new_empty(T, B, G), gi.new_empty(T, B, H)


@torch.library.custom_op("rnn_lightning::gru_recurrence_backward", mutates_args=())
def gru_recurrence_backward(
    gout: Tensor, w_hh: Tensor, hs: Tensor, gates: Tensor, ghn: Tensor
) -> tuple[Tensor, Tensor]:
    """gout: the gradient of the outputs hs[1:] (T, B, H), or of the final state only (B, H) -> (the gradient
    of gi (T, B, 3H), and of each step's W_hh h + b_hh (T, B, 3H))."""
    T, B, H = ghn.shape
    r, z, n = gates.split(H, dim=2)
    # Coefficients turning dL/dh_t into the gate gradients, for all steps in a few big ops.
    dn_pre = (1 - z) * (1 - n.square())  # dL/d(n pre-activation) = dh * dn_pre
    coef = torch.cat([dn_pre * ghn * 0.5 * r * (1 - r), (hs[:-1] - n) * z * (1 - z), dn_pre * r], dim=2)
    coefs = coef.view(T, B, 3, H).unbind(0)
    dgh, dhs = gates.new_empty(T, B, 3 * H), gates.new_empty(T, B, H)
    gouts = [None] * (T - 1) + [gout] if gout.dim() == 2 else list(gout.unbind(0))
    zs, dghs, dhss = z.unbind(0), dgh.unbind(0), dhs.unbind(0)
    dh = gouts[T - 1].clone()
    for t in range(T - 1, -1, -1):
        dhss[t].copy_(dh)
        torch.mul(dh.unsqueeze(1), coefs[t], out=dghs[t].view(B, 3, H))
        if t:
            carried = dh * zs[t] if gouts[t - 1] is None else torch.addcmul(gouts[t - 1], dh, zs[t])
            torch.addmm(carried, dghs[t], w_hh, out=dh)
    return torch.cat([dgh[..., : 2 * H], dhs * dn_pre], dim=2), dgh


@gru_recurrence_backward.register_fake
def _(gout: Tensor, w_hh: Tensor, hs: Tensor, gates: Tensor, ghn: Tensor) -> tuple[Tensor, Tensor]:
    return gates.new_empty(gates.shape), gates.new_empty(gates.shape)


def _setup_context(ctx, inputs, output) -> None:
    _, hs, gates, ghn = output
    ctx.save_for_backward(inputs[1], hs, gates, ghn)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None


def _backward(ctx, g_last: Tensor | None, g_hs: Tensor | None, _g_gates, _g_ghn):
    w_hh, hs, gates, ghn = ctx.saved_tensors
    if g_hs is None:  # only the final state was used
        gout = g_last if g_last is not None else hs.new_zeros(hs.shape[1:])
    else:
        gout = g_hs[1:] if g_last is None else g_hs[1:].clone().index_add_(0, torch.tensor([len(hs) - 2]), g_last[None])
    dgi, dgh = gru_recurrence_backward(gout.float(), w_hh, hs, gates, ghn)
    flat = dgh.flatten(0, 1)
    return dgi, flat.t() @ hs[:-1].flatten(0, 1), flat.sum(0)  # gi, w_hh (3H, H), b_hh (3H)


gru_recurrence.register_autograd(_backward, setup_context=_setup_context)


def gru_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, reverse: bool, last_only: bool):
    """One direction of a GRU layer: x (T, B, in) -> outputs (T, B, H), or the final state (B, H) if
    ``last_only`` (for ``reverse``, the state after reading x[0]). In float32 whatever the autocast."""
    if reverse:
        x = x.flip(0)
    with torch.autocast(x.device.type, enabled=False):
        gi = torch.nn.functional.linear(x.float(), w_ih, b_ih)  # (T, B, 3H): one GEMM for all steps
        last, hs, _, _ = gru_recurrence(gi, w_hh, b_hh)
    if last_only:
        return last
    return hs[1:].flip(0) if reverse else hs[1:]
