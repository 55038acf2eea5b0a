"""JAX references of the learned optimizers, faithful to upstream (needs ``pip install pylo-lopt[jax]``).

Meta-parameter trees are named exactly as upstream checkpoints name them, so
upstream theta and ours are interchangeable.
"""

try:
    import jax  # noqa: F401
    import flax  # noqa: F401
    import optax  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("pylo.reference_jax needs JAX, flax and optax: pip install 'pylo-lopt[jax]'") from e
