"""``pylo-convert``: upstream JAX checkpoints <-> pylo checkpoint folders.

Reading needs no JAX: flax msgpack is decoded with msgpack + numpy, pickles go
through a restricted unpickler. Each upstream theta layout has an explicit
key-mapping table (``layouts``, listed by ``mappings``) whose torch keys and shapes come from
``pylo.spec.networks``, with its transposes spelled out and a shape check on every tensor.
"""

from pylo.converters.convert import convert, inspect_source, to_jax  # noqa: F401
