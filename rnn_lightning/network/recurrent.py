"""One recurrent layer, PyTorch's ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` with Keras' initialisation.

Every implementation computes the same function from the same parameters:

- ``fused``: PyTorch's own recurrent kernels (cuDNN on a GPU, ATen's on a CPU): the layer's module called.
- ``bptt``: the ``rnn`` cell's time loop compiled for the CPU (``cpu_rnn.py``), float32 recurrence.
- ``auto``: ``bptt`` for the ``rnn`` cell on a CPU where the loop is built, ``fused`` otherwise.

The reference they are tested against, a Python loop over time steps, is in tests/network.
"""

from typing import Literal

import torch
from torch import Tensor, nn

from rnn_lightning.network import cpu_rnn

Cell = Literal["rnn", "gru", "lstm"]
Implementation = Literal["auto", "fused", "bptt"]

MODULES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class RecurrentLayer(nn.Module):
    """One recurrent layer over a whole sequence, one or two directions: ``self.rnn``, PyTorch's module
    of the cell, one layer deep (parameters ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``, and ``..._reverse``).

    The ``rnn`` cell keeps Keras' single bias, h_t = tanh(W x_t + U h_{t-1} + b), so a 100 -> 64 layer
    has 10,560 parameters as in the Keras SimpleRNN it reproduces: its ``bias_hh_l0`` is a zero buffer,
    not a parameter, never saved and never trained.
    """

    def __init__(self, cell: Cell, input_size: int, hidden_size: int, bidirectional: bool = False) -> None:
        super().__init__()
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.directions = ("", "_reverse") if bidirectional else ("",)
        # Built without PyTorch's initial weights (on the meta device, then given memory): Keras' are drawn
        # below, from the same random stream as always.
        module = MODULES[cell](input_size, hidden_size, bidirectional=bidirectional, device="meta")
        self.rnn = module.to_empty(device=torch.get_default_device())
        if cell == "rnn":
            for sfx in self.directions:
                zeros = torch.zeros_like(self.rnn.get_parameter("bias_hh_l0" + sfx), requires_grad=False)
                delattr(self.rnn, "bias_hh_l0" + sfx)
                self.rnn.register_buffer("bias_hh_l0" + sfx, zeros, persistent=False)
                setattr(self.rnn, "bias_hh_l0" + sfx, zeros)  # through nn.RNN's __setattr__: its weight list
            # A network built on the meta device and given a checkpoint's tensors (load_state_dict(assign=True))
            # has real weights but still a meta zero bias, since that is never saved: make it real zeros.
            self.register_load_state_dict_post_hook(_real_zero_bias)
        self.reset_parameters()

    @property
    def output_size(self) -> int:
        return self.hidden_size * len(self.directions)

    def reset_parameters(self) -> None:
        """Keras' defaults: glorot-uniform input kernel, orthogonal recurrent kernel, zero biases,
        and (lstm) a forget-gate bias of one. A vanilla RNN trains far worse without them."""
        h = self.hidden_size
        for sfx in self.directions:
            nn.init.xavier_uniform_(self.tensor("weight_ih", sfx))  # fans (in, G*H), as Keras' kernel
            nn.init.orthogonal_(self.tensor("weight_hh", sfx))
            nn.init.zeros_(self.tensor("bias_ih", sfx))
            nn.init.zeros_(self.tensor("bias_hh", sfx))
            if self.cell == "lstm":
                with torch.no_grad():
                    self.tensor("bias_ih", sfx)[h : 2 * h].fill_(1.0)

    def tensor(self, name: str, sfx: str = "") -> Tensor:
        """One direction's ``weight_ih``, ``weight_hh``, ``bias_ih`` or ``bias_hh`` (the zero buffer for rnn)."""
        return getattr(self.rnn, f"{name}_l0{sfx}")

    def forward(self, x: Tensor, implementation: Implementation = "auto", last_only: bool = False) -> Tensor:
        """x (T, B, in) -> outputs (T, B, D*H), time-major; D = 2 when bidirectional.

        The reverse direction's output at step t has read x[t:], so its final state is at t = 0.
        ``last_only``: return only each direction's final state, (B, D*H); the ``bptt``
        implementation then stores and back-propagates nothing for the other steps' outputs.
        """
        if implementation == "auto":
            implementation = "bptt" if self._compiled_loop_runs(x) else "fused"
        if implementation == "bptt":
            if not self._compiled_loop_runs(x):
                raise RuntimeError(
                    "implementation bptt: the compiled loop runs the rnn cell on a CPU, where a C++ compiler built it"
                )
            outs = [
                cpu_rnn.tanh_layer(
                    x,
                    *(self.tensor(n, sfx) for n in ("weight_ih", "weight_hh", "bias_ih")),
                    reverse=sfx != "",
                    last_only=last_only,
                )  # fmt: skip
                for sfx in self.directions
            ]
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if x.is_cuda or not torch.is_autocast_enabled("cpu"):
            out, h_n = self.rnn(x)
        else:  # CPU autocast would run the whole recurrence in bfloat16, losing precision at every step
            with torch.autocast("cpu", enabled=False):
                out, h_n = self.rnn(x.float())
        if isinstance(h_n, tuple):  # lstm: (h_n, c_n)
            h_n = h_n[0]
        return torch.cat(tuple(h_n), dim=-1) if last_only else out  # h_n (D, B, H): each direction's final state

    def _compiled_loop_runs(self, x: Tensor) -> bool:
        """Whether ``bptt`` can run on x: the rnn cell, float32 parameters on a CPU, the loop built."""
        w = self.tensor("weight_hh")
        return (
            self.cell == "rnn"
            and not x.is_cuda
            and w.device.type == "cpu"
            and w.dtype == torch.float32
            and cpu_rnn.available()
        )


def _real_zero_bias(layer: RecurrentLayer, incompatible_keys) -> None:
    for sfx in layer.directions:
        bias = layer.tensor("bias_hh", sfx)
        if bias.is_meta:
            like = layer.tensor("weight_hh", sfx)
            setattr(layer.rnn, "bias_hh_l0" + sfx, torch.zeros(bias.shape, dtype=like.dtype, device=like.device))
