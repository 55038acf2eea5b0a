"""Helpers for using pylo's optimizers with other libraries."""
