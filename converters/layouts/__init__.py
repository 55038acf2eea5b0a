"""Theta layouts: how each meta-network's upstream JAX theta tree maps onto pylo's torch state dict.

* :mod:`.rules`: the rule machinery (one tensor, joined blocks, config values; :class:`ThetaLayout`);
* :mod:`.meta_mlp`: AdafacMLPLOpt / MuLO and ELO (``nn/~`` MLP) <-> ``MetaMLP``;
* :mod:`.celo2_mlp`: CELO2 and ELO-CELO2 (``ff_mod_stack/~``) <-> ``CELO2MLP``;
* :mod:`.hyper_network`: VeLO (HyperV2) and Celo (``rnn_params`` LSTM + MLP bank) <-> ``HyperNetwork``.

The torch keys and shapes come from :mod:`pylo.spec.networks`; the upstream paths are written here.
:mod:`pylo.converters.mappings` lists the layouts and converts with them.
"""
