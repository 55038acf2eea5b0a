"""MuLO: μP learning-rate scaling around AdafacLO (the published ``MuLO_naive`` wrapper).

Upstream μLO multiplies each tensor's step by a per-tensor μP learning-rate
scale (``p - step * mup_lr_scale``). In torch that scale is the param group's
``lr``: MuLO splits the groups so that every *matrix-like* parameter (two
infinite dimensions under ``mup.set_base_shapes``) gets ``lr / width_mult``
and every vector-like one keeps ``lr``. Only the ``infshape`` attribute that
``mup.set_base_shapes`` attaches is read; nothing in site-packages is edited
(see :class:`pylo.util.mup.MuLOReadout` for μLO's readout scaling).
"""

from __future__ import annotations

from collections import defaultdict

from pylo.optim.adafac.adafaclo import AdafacLO, AdafacLO_naive
from pylo.optim.sharded import dtensor_type

DEFAULT_LR = 1.0


def _param_groups(params):
    params = list(params)
    if not params:
        raise ValueError("MuLO got an empty parameter list")
    if isinstance(params[0], dict):
        return [dict(g, params=list(g["params"])) for g in params]
    return [{"params": params}]


def _tensor(item):
    return item[1] if isinstance(item, tuple) else item


def _describe(item, index):
    if isinstance(item, tuple):
        return f"{item[0]!r} {tuple(item[1].shape)}"
    return f"#{index} {tuple(item.shape)}"


def MuLO_naive(params, impl=AdafacLO_naive, **kwargs):
    """μP wrapper of AdafacLO: per-group learning rates from ``mup`` width multipliers.

    Every parameter must have been processed by ``mup.set_base_shapes(model, base_model)``.
    ``lr`` (default 1.0) is the base scale; matrix-like parameters get ``lr / width_mult``.

    Example:
        >>> model = MyModel(width=256)                                    # doctest: +SKIP
        >>> mup.set_base_shapes(model, MyModel(width=64))                 # doctest: +SKIP
        >>> opt = MuLO_naive(model.parameters(), checkpoint_path="mulo")  # doctest: +SKIP
    """
    base_lr = kwargs.pop("lr", DEFAULT_LR)
    new_groups = []
    for group in _param_groups(params):
        items = group.pop("params")
        lr = group.pop("lr", base_lr)
        matrix_like = defaultdict(list)
        vector_like = []
        for index, item in enumerate(items):
            p = _tensor(item)
            infshape = getattr(p, "infshape", None)
            if infshape is None and isinstance(p, dtensor_type()):
                raise ValueError("MuLO needs μP base shapes, but FSDP2's fully_shard dropped the `infshape` of "
                                 f"{_describe(item, index)}: record them before sharding and put them back after "
                                 "(pylo.util.mup.record_base_shapes / restore_base_shapes), with MuLOReadout as "
                                 "the readout (mup's MuReadout needs `infshape` in forward)")
            if infshape is None:
                raise ValueError(
                    f"MuLO needs μP base shapes, but parameter {_describe(item, index)} has no `infshape`: "
                    "call mup.set_base_shapes(model, base_model) before creating the optimizer")
            ninf = infshape.ninf()
            if ninf == 2:
                matrix_like[infshape.width_mult()].append(item)
            elif ninf > 2:
                raise ValueError(f"parameter {_describe(item, index)} has {ninf} infinite dimensions; "
                                 "μP learning-rate scaling is defined for at most 2")
            else:
                vector_like.append(item)
        for width_mult, members in matrix_like.items():
            new_groups.append({**group, "params": members, "lr": lr / width_mult})
        if vector_like:
            new_groups.append({**group, "params": vector_like, "lr": lr})
    return impl(new_groups, lr=base_lr, **kwargs)


def MuLO(params, impl=AdafacLO, **kwargs):
    """:func:`MuLO_naive` on AdafacLO's fastest backend (same arguments)."""
    return MuLO_naive(params, impl=impl, **kwargs)
