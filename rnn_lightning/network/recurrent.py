"""Recurrent layers with Keras' initialisation, computed by PyTorch's kernels.

Every implementation computes the same function from the same parameters:

- ``fused``: PyTorch's own recurrent kernels (cuDNN on a GPU, ATen's on a CPU), through ``nn.RNN``,
  ``nn.GRU`` and ``nn.LSTM`` called with this layer's parameters.
- ``bptt``: the ``rnn`` cell's time loop compiled for the CPU (``cpu_rnn.py``), float32 recurrence.
- ``autograd``: a Python loop over time steps differentiated by autograd; the reference the tests
  compare the others against.
- ``auto``: ``bptt`` for the ``rnn`` cell on a CPU where the loop is built, ``fused`` otherwise.
"""

from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from rnn_lightning.network import cpu_rnn

Cell = Literal["rnn", "gru", "lstm"]
Implementation = Literal["auto", "autograd", "fused", "bptt"]

# Gate blocks stacked in weight_ih / weight_hh, in PyTorch's order (gru: r, z, n; lstm: i, f, g, o).
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


class RecurrentLayer(nn.Module):
    """One recurrent layer over a whole sequence, one or two directions.

    Parameters per direction, in PyTorch's layout so the fused kernels take them as they are:
    ``weight_ih`` (G*H, in), ``weight_hh`` (G*H, H), ``bias_ih`` (G*H); gru and lstm also ``bias_hh``.
    The ``rnn`` cell keeps Keras' single bias, h_t = tanh(W x_t + U h_{t-1} + b), so a 100 -> 64
    layer has 10,560 parameters as in the Keras SimpleRNN it reproduces.
    """

    def __init__(self, cell: Cell, input_size: int, hidden_size: int, bidirectional: bool = False) -> None:
        super().__init__()
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.directions = ("", "_reverse") if bidirectional else ("",)
        gh = GATES[cell] * hidden_size
        for sfx in self.directions:
            self.register_parameter("weight_ih" + sfx, nn.Parameter(torch.empty(gh, input_size)))
            self.register_parameter("weight_hh" + sfx, nn.Parameter(torch.empty(gh, hidden_size)))
            self.register_parameter("bias_ih" + sfx, nn.Parameter(torch.empty(gh)))
            if cell != "rnn":
                self.register_parameter("bias_hh" + sfx, nn.Parameter(torch.empty(gh)))
        if cell == "rnn":
            # PyTorch's kernel wants two biases; this zero one is not a parameter and is never saved.
            self.register_buffer("zero_bias", torch.zeros(gh), persistent=False)
        # PyTorch's module for this cell, parameterless (on the meta device) and outside the module tree:
        # ``_fused`` runs it with this layer's parameters, which keep Keras' single bias for the rnn cell.
        module = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
        object.__setattr__(self, "_kernel", module(input_size, hidden_size, bidirectional=bidirectional, device="meta"))
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        return self.hidden_size * len(self.directions)

    def reset_parameters(self) -> None:
        """Keras' defaults: glorot-uniform input kernel, orthogonal recurrent kernel, zero biases,
        and (lstm) a forget-gate bias of one. A vanilla RNN trains far worse without them."""
        h = self.hidden_size
        for sfx in self.directions:
            nn.init.xavier_uniform_(getattr(self, "weight_ih" + sfx))  # fans (in, G*H), as Keras' kernel
            nn.init.orthogonal_(getattr(self, "weight_hh" + sfx))
            nn.init.zeros_(getattr(self, "bias_ih" + sfx))
            if self.cell != "rnn":
                nn.init.zeros_(getattr(self, "bias_hh" + sfx))
            if self.cell == "lstm":
                with torch.no_grad():
                    getattr(self, "bias_ih" + sfx)[h : 2 * h].fill_(1.0)

    def direction_weights(self, sfx: str) -> list[Tensor]:
        """[weight_ih, weight_hh, bias_ih, bias_hh] of one direction (bias_hh is zeros for rnn)."""
        b_hh = self.zero_bias if self.cell == "rnn" else getattr(self, "bias_hh" + sfx)
        return [
            getattr(self, "weight_ih" + sfx),
            getattr(self, "weight_hh" + sfx),
            getattr(self, "bias_ih" + sfx),
            b_hh,
        ]

    def forward(self, x: Tensor, implementation: Implementation = "auto", last_only: bool = False) -> Tensor:
        """x (T, B, in) -> outputs (T, B, D*H), time-major; D = 2 when bidirectional.

        The reverse direction's output at step t has read x[t:], so its final state is at t = 0.
        ``last_only``: return only each direction's final state, (B, D*H); the ``bptt``
        implementation then stores and back-propagates nothing for the other steps' outputs.
        """
        if implementation == "auto":
            implementation = "bptt" if self._compiled_loop_runs(x) else "fused"
        if implementation == "fused":
            return self._fused(x, last_only)
        if implementation == "bptt":
            if not self._compiled_loop_runs(x):
                raise RuntimeError(
                    "implementation bptt: the compiled loop runs the rnn cell on a CPU, where a C++ compiler built it"
                )
            outs = [
                cpu_rnn.tanh_layer(x, w_ih, w_hh, b_ih, sfx != "", last_only)
                for sfx in self.directions
                for w_ih, w_hh, b_ih, _ in [self.direction_weights(sfx)]
            ]
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        outs = [self._loop(x, *self.direction_weights(sfx), reverse=sfx != "") for sfx in self.directions]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if not last_only:
            return out
        h = self.hidden_size
        return out[-1] if len(self.directions) == 1 else torch.cat([out[-1, :, :h], out[0, :, h:]], dim=-1)

    def _compiled_loop_runs(self, x: Tensor) -> bool:
        """Whether ``bptt`` can run on x: the rnn cell, float32 parameters on a CPU, the loop built."""
        w = self.weight_hh
        return (
            self.cell == "rnn"
            and not x.is_cuda
            and w.device.type == "cpu"
            and w.dtype == torch.float32
            and cpu_rnn.available()
        )

    def _fused(self, x: Tensor, last_only: bool) -> Tensor:
        """PyTorch's module of this cell, run with this layer's parameters (``nn.RNN``'s names: ``_l0``)."""
        params = {
            name + "_l0" + sfx: w
            for sfx in self.directions
            for name, w in zip(
                ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), self.direction_weights(sfx), strict=True
            )
        }
        if x.is_cuda or not torch.is_autocast_enabled("cpu"):
            out, h_n = functional_call(self._kernel, params, (x,))
        else:  # CPU autocast would run the whole recurrence in bfloat16, losing precision at every step
            with torch.autocast("cpu", enabled=False):
                out, h_n = functional_call(self._kernel, params, (x.float(),))
        if isinstance(h_n, tuple):  # lstm: (h_n, c_n)
            h_n = h_n[0]
        return torch.cat(tuple(h_n), dim=-1) if last_only else out  # h_n (D, B, H): each direction's final state

    def _loop(self, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, reverse: bool) -> Tensor:
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        gi = torch.addmm(b_ih, x.flatten(0, 1), w_ih.t()).view(x.shape[0], x.shape[1], -1)  # (T, B, G*H): one GEMM
        h = x.new_zeros(x.shape[1], self.hidden_size)
        c = h
        outs: list[Tensor] = [h] * x.shape[0]
        for t in steps:
            gh = torch.addmm(b_hh, h, w_hh.t())  # (B, G*H)
            if self.cell == "rnn":
                h = torch.tanh(gi[t] + gh)
            elif self.cell == "gru":
                i_r, i_z, i_n = gi[t].chunk(3, dim=1)
                h_r, h_z, h_n = gh.chunk(3, dim=1)
                r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                h = n + z * (h - n)
            else:
                i, f, g, o = (gi[t] + gh).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            outs[t] = h
        return torch.stack(outs)
