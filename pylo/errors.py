"""Exceptions with messages meant to be read by users."""


class PyloError(Exception):
    """Base class of pylo's own errors."""


class CheckpointError(PyloError, ValueError):
    """A checkpoint is missing, corrupt, of the wrong optimizer, or has wrong tensors."""


class HubUnavailableError(PyloError, OSError):
    """The Hugging Face Hub could not be reached and nothing usable is cached."""
