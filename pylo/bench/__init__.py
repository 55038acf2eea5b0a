"""``pylo-bench``: optimizer step time and memory, beside AdamW and the JAX references."""
