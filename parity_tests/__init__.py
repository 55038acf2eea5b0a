"""The parity suite: every optimizer against its JAX reference, step by step (see ``registry``)."""
