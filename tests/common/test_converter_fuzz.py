"""Damaged upstream files never give a traceback or a partial output (issue 11, defect 7): every
truncation, byte flip and random file either converts or fails with one line naming the file."""

import random

import pytest

from helpers import adafac_theta, convert_cli, write_theta

pytest.importorskip("flax")


def _variants(data: bytes, rng: random.Random):
    for _ in range(30):
        yield "truncated", data[: rng.randrange(1, len(data))]
    for _ in range(60):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        yield "flipped", bytes(flipped)
    for n in (1, 7, 64, 1000):
        yield "random", bytes(rng.randrange(256) for _ in range(n))


def test_damaged_files_convert_or_fail_in_one_line(tmp_path, capsys):
    good = write_theta(tmp_path, adafac_theta(hidden=4)).read_bytes()
    rng = random.Random(0)
    outcomes = {"converted": 0, "refused": 0}
    for i, (kind, data) in enumerate(_variants(good, rng)):
        src, out = tmp_path / f"case{i}.state", tmp_path / f"out{i}"
        src.write_bytes(data)
        status = convert_cli(src, out)
        err = capsys.readouterr().err.strip()
        if status == 0:
            outcomes["converted"] += 1
            assert (out / "model.safetensors").exists(), kind
        else:
            outcomes["refused"] += 1
            assert status == 1 and not out.exists(), (kind, i)
            assert len(err.splitlines()) == 1 and err.startswith("pylo-convert: error: ") and src.name in err, err
    assert outcomes["refused"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


@pytest.mark.parametrize("tree,match", [
    ({"a": {"__msgpack_chunked_array__": True}}, "malformed|not a valid"),
    ({"name": "x", "fields": {"0": "a"}, "values": {}}, "malformed"),
    ({"params": {}, "gen_id": "g", "step": "abc"}, "malformed"),
])
def test_crafted_trees_are_one_line_errors(tree, match, tmp_path, capsys):
    import msgpack

    src = tmp_path / "theta.state"
    src.write_bytes(msgpack.packb(tree))
    assert convert_cli(src, tmp_path / "out") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "theta.state" in err
    import re
    assert re.search(match, err), err
