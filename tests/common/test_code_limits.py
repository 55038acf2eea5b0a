"""The house rules a reader relies on: no source file over 400 lines, no function over 60 lines
(Triton kernels, ``@triton.jit`` functions, excepted)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("pylo", "converters", "reference_jax", "parity_tests", "checkpoints")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def sources():
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


def _is_kernel(node) -> bool:
    return any("jit" in ast.unparse(d) for d in node.decorator_list)


def test_no_source_file_over_400_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in sources()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, long


def test_no_function_over_60_lines():
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_kernel(node):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n}")
    assert not long, long
