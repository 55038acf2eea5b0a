"""pylo.spec is the one place for each fact: the meta-networks' keys and shapes are the torch modules',
and every list of optimizer names in the project is drawn from ``pylo.spec.OPTIMIZERS``."""

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import pytest
import torch

from pylo.spec import OPTIMIZERS, optimizer_names
from pylo.spec import networks
from pylo.spec.features import HYPER_GROUP_WIDTHS, hyper_decay_counts, hyper_group_widths
from pylo.spec.networks import NETWORKS, PARTS, geometry_from_shapes, state_dict_shapes

CONFIGS = {
    "meta_mlp": [{}, {"hidden_layers": 0}, {"input_size": 7, "hidden_size": 5, "hidden_layers": 3},
                 {"momentum_decays": [0.1, 0.2, 0.3], "rms_decays": [0.1], "adafactor_decays": [0.0, 0.1, 0.2]}],
    "hyper_network": [{"lstm_hidden_size": 8, "param_inits": 4},
                      {"lstm_input_size": 18, "lstm_hidden_size": 6, "param_inits": 1, "hidden_layers": 0},
                      {"lstm_hidden_size": 5, "param_inits": 3, "input_size": 11, "hidden_size": 7,
                       "hidden_layers": 3, "output_size": 4}],
    "celo2_mlp": [{}, {"feature_dims": (2, 3), "hidden_layers": 1, "output_size": 2},
                  {"hidden_size": 3, "hidden_layers": 4, "activation": "tanh"}],
    "velo_rnn": [{"lstm_hidden_size": 8, "param_inits": 4},
                 {"input_size": 18, "lstm_hidden_size": 3, "param_inits": 1}],
    "velo_mlp": [{"param_inits": 4}, {"param_inits": 2, "input_size": 9, "hidden_size": 5, "hidden_layers": 0},
                 {"param_inits": 3, "hidden_layers": 2, "output_size": 5}],
}
KINDS = {**NETWORKS, **PARTS}


def module_class(kind):
    module, name = KINDS[kind].module.split(":")
    return getattr(importlib.import_module(module), name)


def torch_shapes(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("kind,config", [(k, c) for k, cs in CONFIGS.items() for c in cs])
def test_spec_keys_and_shapes_are_the_modules_state_dict(kind, config):
    module = module_class(kind)(**config)
    assert list(state_dict_shapes(kind, config).items()) == torch_shapes(module)


def test_every_network_and_part_is_tested():
    assert set(CONFIGS) == set(KINDS)
    assert {o.network for o in OPTIMIZERS.values()} == set(NETWORKS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_spec_defaults_are_the_constructor_defaults(kind):
    params = inspect.signature(module_class(kind).__init__).parameters
    defaults = {name: p.default for name, p in params.items() if name != "self"}
    assert defaults == dict(KINDS[kind].defaults)
    assert set(KINDS[kind].geometry) <= set(defaults)
    assert KINDS[kind].config() == defaults
    with pytest.raises(TypeError, match="no argument"):
        KINDS[kind].config(nope=1)


@pytest.mark.parametrize("kind,config", [(k, c) for k, cs in CONFIGS.items() if k in NETWORKS for c in cs])
def test_geometry_is_read_back_from_the_shapes(kind, config):
    full = NETWORKS[kind].config(**config)
    geometry = geometry_from_shapes(kind, state_dict_shapes(kind, config))
    assert {k: (list(v) if k == "feature_dims" else v) for k, v in geometry.items()} == {
        k: (list(full[k]) if k == "feature_dims" else full[k]) for k in NETWORKS[kind].geometry}


def test_geometry_of_something_else_is_empty():
    mlp = state_dict_shapes("meta_mlp", {})
    for kind in ("hyper_network", "celo2_mlp"):
        assert geometry_from_shapes(kind, mlp) == {}
    assert geometry_from_shapes("meta_mlp", state_dict_shapes("celo2_mlp", {})) == {}
    with pytest.raises(KeyError, match="no meta-network"):
        geometry_from_shapes("velo_rnn", mlp)


def test_hyper_geometry_errors_name_the_problem():
    from pylo.errors import CheckpointError

    shapes = state_dict_shapes("hyper_network", {"lstm_hidden_size": 4, "param_inits": 2})
    with pytest.raises(CheckpointError, match="x: not a VeLO/Celo network .no rnn.mix_layer2.weight"):
        networks.hyper_network_geometry({k: v for k, v in shapes.items() if "mix_layer2" not in k}, "x")
    with pytest.raises(CheckpointError, match="unexpected ranks"):
        networks.hyper_network_geometry({**shapes, "mlp.input_weights_": (2, 4)})


def test_published_hub_scratch_is_one_interpolated_mlp():
    scratch = networks.velo_mlp_hub_scratch(30, 4, 1, 3)
    bank = networks.velo_mlp_layout(7, 30, 4, 1, 3)
    assert [(t.key + "_", (7, *t.shape)) for t in scratch.tensors() if "." not in t.key] == [
        (t.key, t.shape) for t in bank.tensors() if "." not in t.key]
    assert networks.HUB_PART_KEYS == {"velo_rnn": "lstm.linear.weight", "velo_mlp": "input_weights_"}


def test_decay_counts_invert_the_group_widths():
    assert hyper_decay_counts(HYPER_GROUP_WIDTHS) == (3, 1, 3)
    for counts in [(1, 1, 1), (2, 1, 3), (3, 2, 1), (4, 4, 2)]:
        assert hyper_decay_counts(hyper_group_widths(*counts)) == counts
    assert hyper_decay_counts(HYPER_GROUP_WIDTHS[:-1]) is None
    assert hyper_decay_counts((1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 2)) is None


def test_spec_loads_neither_torch_nor_jax():
    code = ("import pylo.spec, pylo.spec.networks, pylo.spec.features, pylo.spec.shapes, sys, json\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "jax", "numpy", "flax"}, sorted(loaded)


# ------------------------------------------------------------ name lists
def test_converter_choices_are_the_spec_names():
    from pylo.converters import cli

    assert tuple(cli.OPTIMIZERS) == optimizer_names()


def test_theta_layouts_partition_the_spec_names():
    from pylo.converters.mappings import LAYOUTS, layout_for

    names = [o for layout in LAYOUTS for o in layout.optimizers]
    assert sorted(names) == sorted(optimizer_names()) and len(set(names)) == len(names)
    for layout in LAYOUTS:
        assert all(OPTIMIZERS[o].network == layout.network for o in layout.optimizers)
    assert all(layout_for(o) is next(la for la in LAYOUTS if o in la.optimizers) for o in names)


def test_a_theta_layout_refuses_names_outside_the_spec():
    from pylo.converters.layouts.meta_mlp import ELO_MLP
    from dataclasses import replace

    with pytest.raises(ValueError, match="pylo.spec.OPTIMIZERS"):
        replace(ELO_MLP, optimizers=("elo", "nope"))
    with pytest.raises(ValueError, match="network 'meta_mlp'"):
        replace(ELO_MLP, optimizers=("velo",))


def test_registry_optimizers_are_spec_names():
    from pylo import checkpoints

    entries = checkpoints.known()
    assert entries and all(e.optimizer in OPTIMIZERS for e in entries)
    with pytest.raises(ValueError, match="pylo.spec.OPTIMIZERS"):
        checkpoints.KnownCheckpoint(name="x", optimizer="VeLO", description="", location="", format="",
                                    container="")


def _network_specs():
    """Every NetworkSpec defined at module level anywhere in pylo.optim."""
    import pylo.optim
    from pylo.models.loading import NetworkSpec

    found = {}
    for info in pkgutil.walk_packages(pylo.optim.__path__, "pylo.optim."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, NetworkSpec):
                found[value.name] = value
    return list(found.values())


def test_network_spec_optimizers_are_spec_names_and_fit_their_module():
    specs = _network_specs()
    assert specs
    covered = set()
    for spec in specs:
        for name in spec.optimizers:
            assert name in OPTIMIZERS
            module = f"{spec.module_type.__module__}:{spec.module_type.__name__}"
            assert module == NETWORKS[OPTIMIZERS[name].network].module
        covered |= set(spec.optimizers)
    assert covered == set(optimizer_names())


@pytest.mark.parametrize("optimizers", [("velo", "VeLO"), (), "velo"])
def test_network_spec_refuses_names_outside_the_spec(optimizers):
    from pylo.models.loading import NetworkSpec

    with pytest.raises(ValueError, match="pylo.spec.OPTIMIZERS"):
        NetworkSpec(name="x", module_type=torch.nn.Module, optimizers=optimizers, build=lambda config: None)
