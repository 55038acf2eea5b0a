"""The Triton VeLO / Celo backend (placeholder while it is written)."""


def supports(net) -> bool:
    return False
