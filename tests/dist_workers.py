"""Worker functions for the multi-process tests (importable by the spawned ranks: ``tests`` is on the path)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

BATCH, FEATURES, OUT = 8, 6, 3


@contextlib.contextmanager
def process_group(rank: int, world: int, store: str):
    """A gloo process group on this machine (loopback, file store), destroyed on leaving."""
    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def data(seed: int = 0):
    """The whole batch (every rank takes its own contiguous slice)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(BATCH, FEATURES, generator=g), torch.randn(BATCH, OUT, generator=g)
    y[BATCH // 2:] = 3 * y[BATCH // 2:] + 2  # the halves' losses differ in level and in how they fall
    return x, y


def model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(FEATURES, 5), torch.nn.Tanh(), torch.nn.Linear(5, OUT))


def train(module: torch.nn.Module, opt, x, y, steps: int) -> None:
    """``steps`` steps of MSE on ``(x, y)``; the loss handed to ``opt.step``."""
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(module(x), y)
        loss.backward()
        opt.step(loss=loss.detach())


def loss_means(opt) -> torch.Tensor:
    """The loss averages VeLO/Celo keep (what their LSTM reads of the loss)."""
    from pylo.optim.hyperv2.state import global_entry

    return global_entry(opt.state)["loss_buffer"]["means"].clone()


def ddp_loss_worker(rank: int, world: int, store: str, out: str, name: str, steps: int) -> None:
    """Two DDP replicas of one model, trained on different halves of the batch: one optimizer with the
    default loss handling, one with ``all_reduce_loss=False``; each rank saves its parameters."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pylo.parity_tests.optim_db import get

    with process_group(rank, world, store):
        x, y = data()
        share = BATCH // world
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        saved = {}
        for label, kwargs in (("default", {}), ("opt_out", {"all_reduce_loss": False})):
            net = DDP(model())
            opt = get(name).build(list(net.module.named_parameters()), **kwargs)
            train(net, opt, x, y, steps)
            saved[label] = {k: v.detach().clone() for k, v in net.module.state_dict().items()}
            saved[label]["loss_means"] = loss_means(opt)
        torch.save(saved, Path(out) / f"rank{rank}.pt")


# ------------------------------------------------------------------ FSDP2
#: the parity shapes FSDP2 accepts (it refuses 0-D parameters), with uneven and smaller-than-world dims
SHARDED_SHAPES = {"tiny": (1,), "vector": (7,), "wide": (5, 9), "tall": (11, 4), "square": (6, 6),
                  "size1": (1, 5), "tensor3d": (3, 4, 5), "conv": (6, 4, 3, 2), "embedding": (50, 8)}
#: shapes that leave a rank an empty shard on an axis other than the first work axis: ``column`` under
#: tensor parallel's Shard(1), ``conv1`` (one output channel, HWIO's last work axis) under FSDP2. A fixture
#: of their own: VeLO couples all of a model's tensors through its LSTM and loss, and on the parity shapes
#: and these together its float32 trajectory is so sensitive that one process's naive and fused engines
#: differ by 2.7e-6 after 50 steps (the sharded run by 1.3e-6): a bound on sharding needs a fixture on
#: which the unsharded engines themselves agree
EMPTY_SHARD_SHAPES = {"tiny": (1,), "column": (5, 1), "conv1": (1, 3, 2, 2), "square": (6, 6)}
FIXTURES = {"parity": SHARDED_SHAPES, "empty": EMPTY_SHARD_SHAPES}


def unpack_case(case):
    """``(optimizer, backend[, kwargs as (key, value) pairs[, fixture]])`` -> its four parts."""
    name, backend, *rest = case
    return name, backend, dict(rest[0]) if rest else {}, rest[1] if len(rest) > 1 else "parity"


class Shapes(torch.nn.Module):
    """One parameter per shape; ``forward(t)`` is a loss whose gradient is ``p + c * cos(t)`` per tensor."""

    def __init__(self, seed: int = 0, fixture: str = "parity"):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        for name, shape in FIXTURES[fixture].items():
            self.register_parameter(name, torch.nn.Parameter(0.5 * torch.randn(shape, generator=g)))
            self.register_buffer(f"{name}_c", torch.randn(shape, generator=g))

    def loss(self, tensors, t: int) -> torch.Tensor:
        """The loss of step ``t`` at ``tensors`` (``{name: tensor}``, the parameters' values)."""
        scale = float(torch.cos(torch.tensor(0.7 * t)))
        return torch.stack([(p * getattr(self, f"{n}_c") * scale + 0.5 * p * p).sum()
                            for n, p in tensors.items()]).sum()

    def forward(self, t: int) -> torch.Tensor:
        return self.loss(dict(self.named_parameters()), t)


def train_shapes(module: torch.nn.Module, opt, steps: int) -> None:
    for t in range(steps):
        opt.zero_grad()
        loss = module(t)
        loss.backward()
        opt.step(loss=loss.detach())


def whole_params(module: torch.nn.Module):
    """Every parameter as a whole plain tensor (DTensors gathered)."""
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in module.named_parameters()}


def fsdp2_worker(rank: int, world: int, store: str, out: str, cases, steps: int, mesh_shape=None) -> None:
    """Each case (:func:`unpack_case`) of ``cases`` on a ``fully_shard``-ed :class:`Shapes` (a 2-D
    ``mesh_shape``: HSDP, replicate x shard); each rank saves the whole parameters it ends with."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from pylo.parity_tests.optim_db import get

    with process_group(rank, world, store):
        shape = tuple(mesh_shape or (world,))
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard")[-len(shape):])
        saved = {}
        for case in cases:
            name, backend, kwargs, fixture = unpack_case(case)
            module = Shapes(fixture=fixture)
            fully_shard(module, mesh=mesh)
            opt = get(name).build(list(module.named_parameters()), run_on=backend, **kwargs)
            train_shapes(module, opt, steps)
            saved[case] = whole_params(module)
        torch.save(saved, Path(out) / f"rank{rank}.pt")


def placed_worker(rank: int, world: int, store: str, out: str, cases, steps: int) -> None:
    """Tensor-parallel placements without a parallel module: every matrix ``Shard(1)`` (column-wise),
    every vector ``Shard(0)``, on a 1-D mesh, and gradients set as DTensors of the same placements."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from pylo.parity_tests.optim_db import get

    with process_group(rank, world, store):
        mesh = init_device_mesh("cpu", (world,))
        saved = {}
        for case in cases:
            name, backend, _, fixture = unpack_case(case)
            module = Shapes(fixture=fixture)
            for n, p in list(module.named_parameters()):
                placement = [Shard(1 if p.dim() >= 2 else 0)]
                setattr(module, n, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, placement)))
            opt = get(name).build(list(module.named_parameters()), run_on=backend)
            for t in range(steps):
                whole = {n: p.full_tensor().detach().requires_grad_() for n, p in module.named_parameters()}
                loss = module.loss(whole, t)
                grads = torch.autograd.grad(loss, list(whole.values()))
                for (n, p), g in zip(module.named_parameters(), grads):
                    p.grad = distribute_tensor(g, mesh, p.placements)
                opt.step(loss=loss.detach())
            saved[case] = whole_params(module)
        torch.save(saved, Path(out) / f"rank{rank}.pt")


# ------------------------------------------------------------------ MuLO under FSDP2
def mup_model() -> torch.nn.Module:
    """A μP model (width 16 over base width 8) with μLO's readout; base shapes set."""
    import mup

    from pylo.util.mup import MuLOReadout

    def make(width):
        return torch.nn.Sequential(torch.nn.Linear(FEATURES, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                   torch.nn.Tanh(), MuLOReadout(width, OUT))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make(16)
    mup.set_base_shapes(model, make(8))
    return model


def train_mulo(module: torch.nn.Module, steps: int, x, y) -> None:
    from pylo.optim import MuLO
    from pylo.parity_tests.optim_db import get

    opt = MuLO(module.parameters(), network=get("mulo").make_small_network(0), backend="naive")
    train(module, opt, x, y, steps)


def mulo_fsdp2_worker(rank: int, world: int, store: str, out: str, steps: int) -> None:
    """The documented recipe: base shapes recorded before ``fully_shard`` and restored after it, then MuLO;
    every rank trains on the whole batch (the same loss as one process) and saves the whole parameters."""
    from torch.distributed.fsdp import fully_shard

    from pylo.util.mup import record_base_shapes, restore_base_shapes

    with process_group(rank, world, store):
        module = mup_model()
        shapes = record_base_shapes(module)
        fully_shard(module)
        restore_base_shapes(module, shapes)
        x, y = data()
        train_mulo(module, steps, x, y)
        torch.save(whole_params(module), Path(out) / f"rank{rank}.pt")


def nan_shard_worker(rank: int, world: int, store: str, out: str, name: str, poison: str = "nan") -> None:
    """FSDP2, ``poison="nan"``: a NaN in the gradient's last element only (on the last rank's shard);
    ``"overflow"``: 1.4e19 in each rank's last element (each shard's sum of squares is finite, the whole
    tensor's overflows float32). Every rank must refuse the step with the same message and keep its
    parameters; each rank saves what it saw."""
    from torch.distributed.fsdp import fully_shard

    from pylo.optim.base import NonFiniteGradientError
    from pylo.parity_tests.optim_db import get

    with process_group(rank, world, store):
        module = Shapes()
        fully_shard(module)
        opt = get(name).build(list(module.named_parameters()))
        train_shapes(module, opt, 1)
        before = whole_params(module)
        opt.zero_grad()
        loss = module(1)
        loss.backward()
        grad = module.wide.grad.to_local()
        if poison == "overflow":
            grad.view(-1)[-1] = 1.4e19
        elif rank == world - 1:
            grad.view(-1)[-1] = float("nan")
        try:
            opt.step(loss=loss.detach())
            message = None
        except NonFiniteGradientError as e:
            message = str(e)
        unchanged = all(torch.equal(before[k], v) for k, v in whole_params(module).items())
        torch.save({"message": message, "unchanged": unchanged}, Path(out) / f"rank{rank}.pt")
