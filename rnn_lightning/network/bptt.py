"""Recurrent layers with a hand-written backward through time (``implementation: bptt``).

Why this exists: on a CPU, autograd through a Python loop of 80 steps records ~10 small nodes per
step and spends most of the backward in their bookkeeping and in tanh (float32 ``torch.tanh`` costs
several times ``torch.sigmoid`` on the CPU builds measured, see BENCHMARKS.md). Here each layer is one
autograd node:

- forward: the input projections of all steps as one GEMM, then per step one small GEMM and one
  sigmoid; in float32, tanh is computed as 2*sigmoid(2x) - 1, with the factor 2 folded into the weights once;
- backward: per step one small GEMM and a few elementwise ops on coefficients prepared for all steps
  at once; the weight and input gradients come from single large GEMMs after the loop.

Gates follow PyTorch's order and formulas (gru: r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
lstm: i, f, g, o), so results equal the ``autograd`` and ``fused`` implementations (tests check 1e-5).
"""

import torch
from torch import Tensor

from rnn_lightning.network import native


def _scaled(w: Tensor, rows: slice | None) -> Tensor:
    """w with the given block of rows (a tanh gate's pre-activation) doubled, so sigmoid(.) = sigmoid(2x)."""
    if rows is None:
        return w * 2
    w = w.clone()
    w[rows] *= 2
    return w


class _RNNTanh(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
        lowp: torch.dtype | None,
        last_only: bool,
    ) -> Tensor:
        T, B, _ = x.shape
        H = w_hh.shape[1]
        ctx.lowp, ctx.last_only, ctx.native = lowp, last_only, native.usable(w_hh)
        # The float32 time loop compiled (native.py), one pass per step; under autocast too, where the
        # input and weight-gradient GEMMs still run in lowp (bfloat16 GEMMs are several times faster).
        if ctx.native:
            hs = native.tanh_forward(_project(x, w_ih, None, lowp), b_ih + b_hh, w_hh)  # the bias joins in the loop
            ctx.save_for_backward(x, w_ih, w_hh, hs)
            return _outputs(hs, last_only)
        if lowp == torch.bfloat16:  # the whole recurrence in bfloat16 (see bptt_layer); a true tanh is the precise one
            gi = _project(x, w_ih, b_ih + b_hh, lowp, keep_lowp=True)
            w_hh_t, act = w_hh.t().to(lowp), torch.tanh
        else:  # float32 (float16's range is too narrow for a chained recurrence's scaled gradients)
            gi = _project(x, _scaled(w_ih, None), _scaled(b_ih + b_hh, None), lowp)
            w_hh_t, act = _scaled(w_hh, None).t(), _tanh_by_sigmoid  # tanh(z) = 2 sigmoid(2z) - 1
        hs = _states(T, B, H, x.device, gi.dtype)  # hs[t + 1] = h_t; hs[0] = initial state (zero)
        gis, hss = gi.unbind(0), hs.unbind(0)  # per-step views made at once, not one indexing op per use
        for t in range(T):
            act(gis[t].addmm_(hss[t], w_hh_t), out=hss[t + 1])  # in place: addmm with out= would copy gi[t] first
        ctx.save_for_backward(x, w_ih, w_hh, hs)
        return _outputs(hs, last_only)

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, gout: Tensor):
        x, w_ih, w_hh, hs = ctx.saved_tensors
        if ctx.native:
            dz, db = native.tanh_backward(hs, gout, w_hh)
            return _weight_grads(ctx, dz, x, hs, w_ih, db=db)
        T = hs.shape[0] - 1
        deriv = torch.addcmul(
            torch.ones((), dtype=hs.dtype, device=hs.device), hs[1:], hs[1:], value=-1
        )  # (T, B, H): tanh' = 1 - h^2, all steps (measured faster than two ops per step)
        dz = torch.empty_like(deriv)  # gradient of each step's pre-activation
        gouts, derivs, dzs = _step_grads(gout.to(hs.dtype), ctx.last_only, T), deriv.unbind(0), dz.unbind(0)
        w_hh_c = w_hh.to(hs.dtype)
        dh = gouts[T - 1].clone()
        for t in range(T - 1, -1, -1):
            torch.mul(dh, derivs[t], out=dzs[t])
            if t:
                _add_mm(gouts[t - 1], dzs[t], w_hh_c, out=dh)
        return _weight_grads(ctx, dz, x, hs, w_ih)


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
        lowp: torch.dtype | None,
        last_only: bool,
    ) -> Tensor:
        T, B, _ = x.shape
        H = w_hh.shape[1]
        n_rows = slice(2 * H, 3 * H)
        gi = _project(x, _scaled(w_ih, n_rows), _scaled(b_ih, n_rows), lowp)
        w_hh2, b_hh2 = _scaled(w_hh, n_rows).t(), _scaled(b_hh, n_rows)
        hs = _states(T, B, H, x.device)
        gates = torch.empty(T, B, 3 * H, dtype=torch.float32, device=x.device)  # r, z, n after activation
        ghn = torch.empty(T, B, H, dtype=torch.float32, device=x.device)  # W_hn h + b_hn (times 2)
        gh = torch.empty(B, 3 * H, dtype=torch.float32, device=x.device)
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
        ctx.lowp, ctx.last_only = lowp, last_only
        ctx.save_for_backward(x, w_ih, w_hh, hs, gates, ghn)
        return _outputs(hs, last_only)

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, gout: Tensor):
        x, w_ih, w_hh, hs, gates, ghn = ctx.saved_tensors
        T, B, H = ghn.shape
        r, z, n = gates.split(H, dim=2)
        # Coefficients turning dL/dh_t into the gate gradients, for all steps in a few big ops.
        dn_pre = (1 - z) * (1 - n.square())  # dL/d(n pre-activation) = dh * dn_pre
        coef = torch.cat([dn_pre * ghn * 0.5 * r * (1 - r), (hs[:-1] - n) * z * (1 - z), dn_pre * r], dim=2)
        coef = coef.view(T, B, 3, H)
        dgh = torch.empty(T, B, 3 * H, dtype=torch.float32, device=x.device)  # d(W_hh h + b_hh) per step
        dhs = torch.empty(T, B, H, dtype=torch.float32, device=x.device)
        gouts, zs, coefs, dghs, dhss = (
            _step_grads(gout, ctx.last_only, T),
            z.unbind(0),
            coef.unbind(0),
            dgh.unbind(0),
            dhs.unbind(0),
        )
        dh = gouts[T - 1].clone()
        for t in range(T - 1, -1, -1):
            dhss[t].copy_(dh)
            torch.mul(dh.unsqueeze(1), coefs[t], out=dghs[t].view(B, 3, H))
            if t:
                carried = dh * zs[t] if gouts[t - 1] is None else torch.addcmul(gouts[t - 1], dh, zs[t])
                torch.addmm(carried, dghs[t], w_hh, out=dh)
        dgi = torch.cat([dgh[..., : 2 * H], dhs * dn_pre], dim=2)
        return _weight_grads(ctx, dgi, x, hs, w_ih, dgh)


class _LSTM(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
        lowp: torch.dtype | None,
        last_only: bool,
    ) -> Tensor:
        T, B, _ = x.shape
        H = w_hh.shape[1]
        g_rows = slice(2 * H, 3 * H)
        gates = _project(x, _scaled(w_ih, g_rows), _scaled(b_ih + b_hh, g_rows), lowp)  # -> i, f, g, o in place
        w_hh2 = _scaled(w_hh, g_rows).t()
        hs = _states(T, B, H, x.device)
        cs = _states(T, B, H, x.device)
        tcs = torch.empty(T, B, H, dtype=torch.float32, device=x.device)  # tanh(c_t)
        gatess, hss, css, tcss = gates.unbind(0), hs.unbind(0), cs.unbind(0), tcs.unbind(0)
        for t in range(T):
            g = gatess[t]
            g.addmm_(hss[t], w_hh2).sigmoid_()
            i, f, gg, o = g.split(H, dim=1)
            gg.mul_(2).sub_(1)
            torch.addcmul(f * css[t], i, gg, out=css[t + 1])
            _tanh_by_sigmoid(css[t + 1] * 2, out=tcss[t])
            torch.mul(o, tcss[t], out=hss[t + 1])
        ctx.lowp, ctx.last_only = lowp, last_only
        ctx.save_for_backward(x, w_ih, w_hh, hs, cs, gates, tcs)
        return _outputs(hs, last_only)

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, gout: Tensor):
        x, w_ih, w_hh, hs, cs, gates, tcs = ctx.saved_tensors
        T, B, H = tcs.shape
        i, f, gg, o = gates.split(H, dim=2)
        to_c = o * (1 - tcs.square())  # dL/dc_t gets dh_t * to_c
        coef = torch.cat([gg * i * (1 - i), cs[:-1] * f * (1 - f), i * (1 - gg.square())], dim=2).view(T, B, 3, H)
        to_o = tcs * o * (1 - o)
        dgates = torch.empty(T, B, 4 * H, dtype=torch.float32, device=x.device)
        gouts, to_cs, to_os, coefs, dgatess, fs = (
            _step_grads(gout, ctx.last_only, T), to_c.unbind(0), to_o.unbind(0), coef.unbind(0), dgates.unbind(0), f.unbind(0)
        )  # fmt: skip
        dh = gouts[T - 1].clone()
        dc = torch.zeros_like(dh)
        for t in range(T - 1, -1, -1):
            dc.addcmul_(dh, to_cs[t])
            d = dgatess[t]
            torch.mul(dc.unsqueeze(1), coefs[t], out=d[:, : 3 * H].view(B, 3, H))
            torch.mul(dh, to_os[t], out=d[:, 3 * H :])
            if t:
                dc.mul_(fs[t])
                _add_mm(gouts[t - 1], d, w_hh, out=dh)
        return _weight_grads(ctx, dgates, x, hs, w_ih)


def _tanh_by_sigmoid(z2: Tensor, out: Tensor) -> None:
    """out = tanh(z) from z2 = 2z, as 2 sigmoid(2z) - 1: float32 ``torch.tanh`` costs several times
    ``torch.sigmoid`` on the CPU builds measured (in bfloat16 the sigmoid's rounding would cost precision: see bptt_layer)."""
    torch.sigmoid(z2, out=out).mul_(2).sub_(1)


def _outputs(hs: Tensor, last_only: bool) -> Tensor:
    """The layer's outputs from its states: every step's (T, B, H), or only the final one (B, H)."""
    return hs[-1] if last_only else hs[1:]


def _step_grads(gout: Tensor, last_only: bool, T: int) -> list[Tensor | None]:
    """Per-step gradients of the outputs; None where no output was returned (``last_only``)."""
    return [None] * (T - 1) + [gout] if last_only else list(gout.unbind(0))


def _add_mm(c: Tensor | None, a: Tensor, b: Tensor, out: Tensor) -> None:
    """out = c + a @ b, or a @ b when c is None."""
    if c is None:
        torch.mm(a, b, out=out)
    else:
        torch.addmm(c, a, b, out=out)


def _states(T: int, B: int, H: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """(T + 1, B, H) states with a zero initial state; the rest is written by the loop
    (zeroing all of it would be one more pass over a tensor larger than the CPU's caches)."""
    states = torch.empty(T + 1, B, H, dtype=dtype, device=device)
    states[0].zero_()
    return states


def _mm(a: Tensor, b: Tensor, lowp: torch.dtype | None, keep_lowp: bool = False) -> Tensor:
    """a @ b, in ``lowp`` (bfloat16 under bf16 autocast: several times the float32 rate on CPUs with AVX512-BF16) if given;
    the result in float32 unless ``keep_lowp``."""
    if lowp is None:
        return a @ b
    out = a.to(lowp) @ b.to(lowp)
    return out if keep_lowp else out.float()


def _mm_tn(a: Tensor, b: Tensor, lowp: torch.dtype | None, chunks: int = 8) -> Tensor:
    """a^T @ b (float32) for tall a (N, m) and b (N, n), e.g. a weight gradient summed over all steps.
    In bfloat16 as a batch of ``chunks`` products summed: one long inner dimension runs below the
    GEMM's peak (BENCHMARKS.md)."""
    if lowp is None or a.shape[0] % chunks:
        return _mm(a.t(), b, lowp)
    a, b = a.to(lowp).view(chunks, -1, a.shape[1]), b.to(lowp).view(chunks, -1, b.shape[1])
    return torch.bmm(a.transpose(1, 2), b).float().sum(0)


def _project(x: Tensor, w: Tensor, b: Tensor | None, lowp: torch.dtype | None, keep_lowp: bool = False) -> Tensor:
    """Input projections of all steps as one GEMM: x (T, B, in), already in ``lowp`` if given -> (T, B, G*H),
    float32 unless ``keep_lowp``; without the bias if ``b`` is None."""
    T, B, _ = x.shape
    if b is None:
        return _mm(x.reshape(T * B, -1), w.t(), lowp, keep_lowp).view(T, B, -1)
    if lowp is None:
        return torch.addmm(b, x.reshape(T * B, -1), w.t()).view(T, B, -1)
    # The bias joins the low-precision GEMM, as autocast does for nn.Linear: one pass less over the output.
    out = torch.addmm(b.to(lowp), x.reshape(T * B, -1), w.t().to(lowp)).view(T, B, -1)
    return out if keep_lowp else out.float()


def _weight_grads(
    ctx, dgi: Tensor, x: Tensor, hs: Tensor, w_ih: Tensor, dgh: Tensor | None = None, db: Tensor | None = None
):
    """Gradients of (x, w_ih, w_hh, b_ih, b_hh, lowp, last_only) from the per-step pre-activation gradients, as large GEMMs.

    dgi (T, B, G*H): gradient of x W_ih^T + b_ih; dgh: of h W_hh^T + b_hh (same as dgi unless given);
    db: dgi's sum over steps and rows, where already computed (then both biases' gradient).
    """
    T, B, GH = dgi.shape
    dgh = dgi if dgh is None else dgh
    flat_i, flat_h = dgi.reshape(T * B, GH), dgh.reshape(T * B, GH)
    need, lowp = ctx.needs_input_grad, ctx.lowp
    # A bfloat16 sum accumulates in float32 and rounds once at the end (sum(dtype=float32) would first
    # cast the whole tensor, one more pass over the largest gradient).
    db_ih = (flat_i.sum(0).float() if db is None else db) if need[3] else None
    db_hh = (flat_h.sum(0).float() if db is None else db.clone()) if need[4] else None
    if lowp is not None:  # cast each operand once, not once per GEMM
        flat_i = flat_i.to(lowp)
        flat_h = flat_i if dgh is dgi else flat_h.to(lowp)
    # dx in x's dtype (lowp under autocast, see bptt_layer); autograd casts it for a float32 producer.
    dx = _mm(flat_i, w_ih, lowp, keep_lowp=True).view(T, B, -1) if need[0] else None
    dw_ih = _mm_tn(flat_i, x.reshape(T * B, -1), lowp) if need[1] else None
    dw_hh = _mm_tn(flat_h, hs[:-1].reshape(T * B, -1), lowp) if need[2] else None
    return dx, dw_ih, dw_hh, db_ih, db_hh, None, None


_FUNCTIONS = {"rnn": _RNNTanh, "gru": _GRU, "lstm": _LSTM}


def bptt_layer(
    cell: str,
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    reverse: bool = False,
    last_only: bool = False,
) -> Tensor:
    """One direction of a recurrent layer: x (T, B, in) -> outputs (T, B, H), zero initial state;
    with ``last_only`` only the final state (B, H) (at t = 0 for ``reverse``): nothing is stored or
    back-propagated for the other steps' outputs.

    Under autocast (e.g. Lightning's ``precision: bf16-mixed``) the large input and weight-gradient
    GEMMs run in the autocast dtype (x, best given in that dtype already, gets its gradient in it).
    With the compiled kernels (native.py) the ``rnn`` cell's recurrence runs in float32 whatever the
    autocast dtype. Without them, under bfloat16 it runs its whole recurrence in it too, states and
    gradients, as autocast runs the ``autograd`` loop's products and cuDNN its RNNs, with a true tanh (2 sigmoid(2z) - 1 from
    a bfloat16 sigmoid would lose precision near h = 0); a test checks it stays at least as close to
    float32 as autocast's own loop over 80 steps. It saves the casts between the loop and the GEMMs
    and halves the memory traffic (BENCHMARKS.md has the step times). ``gru`` and ``lstm`` keep float32
    recurrences: their steps are mostly elementwise ops, where a bfloat16 sigmoid is no faster.
    """
    device = x.device.type
    lowp = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    with torch.autocast(device, enabled=False):
        # In lowp from here on (a no-op when the network made it so): the Functions save it for the
        # weight-gradient GEMM, which reads it in lowp.
        x = x.to(lowp) if lowp is not None else x
        if reverse:
            out = _FUNCTIONS[cell].apply(x.flip(0), w_ih, w_hh, b_ih, b_hh, lowp, last_only)
            return out if last_only else out.flip(0)
        return _FUNCTIONS[cell].apply(x, w_ih, w_hh, b_ih, b_hh, lowp, last_only)
