"""The meta-network of VeLO and Celo (upstream's HyperV2): a per-tensor LSTM and a bank of per-element MLPs.

Two parts, with the state-dict keys of the published PyLO hub repositories
(``Pauljanson002/VeLO_RNN`` and ``Pauljanson002/VeLO_MLP``):

* :class:`VeLORNN` -- ``mix_layer1`` (upstream's dead first mixing layer, kept
  so checkpoints load), ``mix_layer2``, ``final_mix_layer``, the Haiku-style
  ``lstm.linear`` (input ``[x, h]``, gates i, g, f, o, forget bias +1 in the
  forward pass), ``rnn_to_controls``, ``step_size`` and the learned initial
  state ``lstm_init_state.{0: hidden, 1: cell}``;
* :class:`VeLOMLP` -- the bank of ``param_inits`` MLPs: ``input_weights_``
  ``(P, hidden, inputs)`` (upstream's ``w0__0..13`` concatenated in order and
  transposed), ``input_bias_``, ``hidden_weights_.<i>``, ``hidden_bias_.<i>``,
  ``output_weights_``, ``output_bias_``. The published module also carries
  scratch copies of one interpolated MLP (``input_weights`` etc.); they hold no
  meta-parameters and are not part of this module (see :func:`merge_hub_parts`).

:class:`HyperNetwork` holds both (``rnn.*``, ``mlp.*``): what a pylo checkpoint
folder stores and what the optimizers take as ``network=``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from pylo.checkpoint_io import Checkpoint
from pylo.core.mlp import split_input_mlp
from pylo.errors import CheckpointError
from pylo.spec.features import HYPER_GROUP_WIDTHS

LSTMState = Tuple[torch.Tensor, torch.Tensor]


class LSTM(nn.Module):
    """Haiku's ``hk.LSTM``: ``gates = linear([x, h])`` split as i, g, f, o; ``f = sigmoid(f + 1)``."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(input_size + hidden_size, 4 * hidden_size)

    def forward(self, x: torch.Tensor, state: LSTMState) -> Tuple[torch.Tensor, LSTMState]:
        hidden, cell = state
        i, g, f, o = self.linear(torch.cat([x, hidden], dim=-1)).chunk(4, dim=-1)
        f = torch.sigmoid(f + 1)
        cell = f * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        return hidden, (hidden, cell)


class VeLORNN(nn.Module):
    """Per-tensor features -> ``(controls, raw lr multiplier, next LSTM state)``.

    Tensors interact only through a max-pool over the tensor axis.

    Example:
        >>> rnn = VeLORNN(input_size=30, lstm_hidden_size=8, param_inits=4)
        >>> controls, lr, (h, c) = rnn(torch.zeros(3, 30), rnn.initial_state(3))
        >>> controls.shape, lr.shape, h.shape
        (torch.Size([3, 4]), torch.Size([3]), torch.Size([3, 8]))
    """

    def __init__(self, input_size: int = 30, lstm_hidden_size: int = 512, param_inits: int = 256):
        super().__init__()
        if min(input_size, lstm_hidden_size, param_inits) < 1:
            raise ValueError(f"invalid VeLORNN geometry ({input_size}, {lstm_hidden_size}, {param_inits})")
        self.input_size, self.lstm_hidden_size, self.param_inits = input_size, lstm_hidden_size, param_inits
        self.mix_layer1 = nn.Linear(input_size, lstm_hidden_size)  # upstream computes it and discards it
        self.mix_layer2 = nn.Linear(input_size, lstm_hidden_size)
        self.final_mix_layer = nn.Linear(input_size, lstm_hidden_size)
        self.lstm = LSTM(lstm_hidden_size, lstm_hidden_size)
        self.rnn_to_controls = nn.Linear(lstm_hidden_size, param_inits)
        self.step_size = nn.Linear(lstm_hidden_size, 1)
        self.lstm_init_state = nn.ParameterList([nn.Parameter(torch.zeros(1, lstm_hidden_size)),
                                                 nn.Parameter(torch.zeros(1, lstm_hidden_size))])

    def initial_state(self, n: int) -> LSTMState:
        """The learned initial state, one row per tensor."""
        hidden, cell = self.lstm_init_state
        return hidden.detach().expand(n, -1).clone(), cell.detach().expand(n, -1).clone()

    def forward(self, x: torch.Tensor, state: LSTMState):
        mixed = F.relu(self.mix_layer2(x)).max(dim=0, keepdim=True).values
        out, state = self.lstm(self.final_mix_layer(x) + mixed, state)
        return self.rnn_to_controls(out), self.step_size(out).squeeze(-1), state


class VeLOMLP(nn.Module):
    """The bank of ``param_inits`` per-element MLPs and their per-tensor interpolation.

    ``hidden_layers`` counts hidden-to-hidden layers (upstream's
    ``ff_hidden_layers=2`` is 1 here); the first layer reads the 14 feature
    groups of :func:`pylo.core.features.hyper_feature_groups` (30 inputs).
    """

    def __init__(self, param_inits: int = 256, input_size: int = 30, hidden_size: int = 4, hidden_layers: int = 1,
                 output_size: int = 3):
        super().__init__()
        if min(param_inits, input_size, hidden_size) < 1 or hidden_layers < 0 or output_size < 2:
            raise ValueError(f"invalid VeLOMLP geometry ({param_inits}, {input_size}, {hidden_size}, "
                             f"{hidden_layers}, {output_size})")
        self.param_inits, self.input_size, self.hidden_size = param_inits, input_size, hidden_size
        self.hidden_layers, self.output_size = hidden_layers, output_size
        P, H = param_inits, hidden_size
        self.input_weights_ = nn.Parameter(torch.zeros(P, H, input_size))
        self.input_bias_ = nn.Parameter(torch.zeros(P, H))
        self.hidden_weights_ = nn.ParameterList([nn.Parameter(torch.zeros(P, H, H)) for _ in range(hidden_layers)])
        self.hidden_bias_ = nn.ParameterList([nn.Parameter(torch.zeros(P, H)) for _ in range(hidden_layers)])
        self.output_weights_ = nn.Parameter(torch.zeros(P, output_size, H))
        self.output_bias_ = nn.Parameter(torch.zeros(P, output_size))

    def bank(self) -> List[torch.Tensor]:
        """Every bank tensor, leading axis ``param_inits``, in a fixed order."""
        return [self.input_weights_, self.input_bias_, *self.hidden_weights_, *self.hidden_bias_,
                self.output_weights_, self.output_bias_]

    def flat_bank(self) -> torch.Tensor:
        """The bank as one ``(param_inits, n)`` matrix (for interpolating all at once)."""
        return torch.cat([t.detach().reshape(self.param_inits, -1) for t in self.bank()], dim=1)

    def unflatten(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Split interpolated rows (``flat_bank`` layout, last axis) back into per-layer tensors.

        One row gives the layers' shapes; leading axes (a batch of tensors' MLPs) are kept.
        """
        shapes = [t.shape[1:] for t in self.bank()]
        sizes = [s.numel() for s in shapes]
        lead = tuple(flat.shape[:-1])
        return [x.reshape(lead + tuple(s)) for x, s in zip(flat.split(sizes, dim=-1), shapes)]

    def forward(self, groups: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                group_widths: Sequence[int] = HYPER_GROUP_WIDTHS) -> torch.Tensor:
        """Run one interpolated MLP (``weights`` from :meth:`unflatten`) on the feature groups.

        As upstream: ``relu(sum_i group_i @ w0__i + b0)``, then the dense layers.
        """
        n = self.hidden_layers
        w_in, b_in = weights[0], weights[1]
        hidden_w, hidden_b = weights[2:2 + n], weights[2 + n:2 + 2 * n]
        w_out, b_out = weights[2 + 2 * n], weights[3 + 2 * n]
        # contiguous (in, out) blocks: matmuls with transposed views take a slow path
        blocks = w_in.t().contiguous().split(list(group_widths)[:len(groups)])
        dense = [w.t().contiguous() for w in (*hidden_w, w_out)]
        return split_input_mlp(groups, blocks, b_in, dense, [*hidden_b, b_out])


class HyperNetwork(nn.Module, PyTorchModelHubMixin, license="apache-2.0", tags=["learned-optimizer", "pylo"]):
    """VeLO's / Celo's meta-network: ``rnn`` (:class:`VeLORNN`) and ``mlp`` (:class:`VeLOMLP`).

    Argument names are those of the published ``VeLO_naive`` optimizer:
    ``lstm_input_size`` (30 for VeLO, 18 for Celo), ``lstm_hidden_size``,
    ``param_inits``, and the MLP's ``input_size``, ``hidden_size``, ``hidden_layers``.

    Example:
        >>> net = HyperNetwork(lstm_input_size=18, lstm_hidden_size=64, param_inits=1)
        >>> sorted(net.state_dict())[:2]
        ['mlp.hidden_bias_.0', 'mlp.hidden_weights_.0']
    """

    def __init__(self, lstm_input_size: int = 30, lstm_hidden_size: int = 512, param_inits: int = 256,
                 input_size: int = 30, hidden_size: int = 4, hidden_layers: int = 1, output_size: int = 3):
        super().__init__()
        self.rnn = VeLORNN(lstm_input_size, lstm_hidden_size, param_inits)
        self.mlp = VeLOMLP(param_inits, input_size, hidden_size, hidden_layers, output_size)

    def flops_per_element(self) -> int:
        """Multiply-adds x 2 of one interpolated per-element MLP (what every parameter element costs)."""
        m = self.mlp
        return 2 * m.hidden_size * (m.input_size + m.hidden_size * m.hidden_layers + m.output_size)

    @classmethod
    def random(cls, seed: int = 0, std: float = 0.05, **config) -> "HyperNetwork":
        """A network with small random weights (benchmarks and examples; not a trained optimizer)."""
        gen = torch.Generator().manual_seed(seed)
        net = cls(**config)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(std * torch.randn(p.shape, generator=gen))
        return net

    @property
    def config(self) -> Dict[str, int]:
        return {"lstm_input_size": self.rnn.input_size, "lstm_hidden_size": self.rnn.lstm_hidden_size,
                "param_inits": self.rnn.param_inits, "input_size": self.mlp.input_size,
                "hidden_size": self.mlp.hidden_size, "hidden_layers": self.mlp.hidden_layers,
                "output_size": self.mlp.output_size}


CONFIG_KEYS = ("lstm_input_size", "lstm_hidden_size", "param_inits", "input_size", "hidden_size", "hidden_layers",
               "output_size")


def build_hyper_network(config: Dict) -> HyperNetwork:
    return HyperNetwork(**{k: int(config[k]) for k in CONFIG_KEYS if k in config})


# ------------------------------------------------------------ published hub layout
#: the published VeLOMLP's scratch slots (one interpolated MLP, overwritten at every use)
def _hub_scratch_shapes(config: Dict) -> Dict[str, Tuple[int, ...]]:
    H, n = config["hidden_size"], config["hidden_layers"]
    shapes = {"input_weights": (H, config["input_size"]), "input_bias": (H,),
              "output_weights": (config["output_size"], H), "output_bias": (config["output_size"],)}
    for i in range(n):
        shapes[f"hidden_weights.{i}"] = (H, H)
        shapes[f"hidden_bias.{i}"] = (H,)
    return shapes


def config_from_tensors(tensors: Dict[str, torch.Tensor], origin: str = "checkpoint") -> Dict[str, int]:
    """Geometry of a :class:`HyperNetwork` state dict (``rnn.*`` / ``mlp.*`` keys) from its shapes."""
    try:
        mix, controls = tensors["rnn.mix_layer2.weight"], tensors["rnn.rnn_to_controls.weight"]
        w_in, w_out = tensors["mlp.input_weights_"], tensors["mlp.output_weights_"]
    except KeyError as e:
        raise CheckpointError(f"{origin}: not a VeLO/Celo network (no {e.args[0]})") from None
    if mix.dim() != 2 or controls.dim() != 2 or w_in.dim() != 3 or w_out.dim() != 3:
        raise CheckpointError(f"{origin}: VeLO/Celo network tensors have unexpected ranks")
    hidden_layers = sum(1 for k in tensors if k.startswith("mlp.hidden_weights_."))
    return {"lstm_input_size": int(mix.shape[1]), "lstm_hidden_size": int(mix.shape[0]),
            "param_inits": int(controls.shape[0]), "input_size": int(w_in.shape[2]),
            "hidden_size": int(w_in.shape[1]), "hidden_layers": hidden_layers, "output_size": int(w_out.shape[1])}


def merge_hub_parts(parts: Sequence[Checkpoint]) -> Checkpoint:
    """One :class:`HyperNetwork` checkpoint from the published ``VeLO_RNN`` and ``VeLO_MLP`` folders.

    Keys are prefixed ``rnn.`` / ``mlp.``; the MLP's scratch slots are checked
    (names and shapes) and dropped. Anything else unexpected stays and is
    refused by strict loading.
    """
    if len(parts) != 2:
        raise CheckpointError(f"expected the RNN and the MLP hub checkpoints, got {len(parts)}")
    rnn, mlp = parts
    if "lstm.linear.weight" not in rnn.tensors:
        raise CheckpointError(f"{rnn.origin}: not a VeLO_RNN checkpoint (no lstm.linear.weight)")
    if "input_weights_" not in mlp.tensors:
        raise CheckpointError(f"{mlp.origin}: not a VeLO_MLP checkpoint (no input_weights_)")
    tensors = {f"rnn.{k}": v for k, v in rnn.tensors.items()}
    tensors.update({f"mlp.{k}": v for k, v in mlp.tensors.items()})
    origin = f"{rnn.origin} + {mlp.origin}"
    config = config_from_tensors(tensors, origin)
    for key, shape in _hub_scratch_shapes(config).items():
        t = tensors.pop(f"mlp.{key}", None)
        if t is None:
            raise CheckpointError(f"{mlp.origin}: missing {key} (the published VeLO_MLP layout has it)")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{mlp.origin}: {key} has shape {tuple(t.shape)}, expected {shape}")
    return Checkpoint(config, tensors, origin)
