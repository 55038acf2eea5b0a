"""``--overwrite`` never loses data: it replaces only a pylo checkpoint folder, atomically, and cleans
what interrupted writes left (issue 11, defect 1)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pylo import checkpoint_io
from pylo.checkpoint_io import read_checkpoint, write_checkpoint
from pylo.errors import CheckpointError

from helpers import adafac_theta, convert_cli as _convert, write_theta as _write

CONFIG = {"hidden_size": 2, "pylo": {"optimizer": "adafaclo"}}


def _folder(path: Path, value: float) -> Path:
    return write_checkpoint(path, CONFIG, {"w": torch.full((3,), value)}, overwrite=True)


def test_overwrite_refuses_a_folder_that_holds_other_files(tmp_path, capsys):
    src = _write(tmp_path, adafac_theta())
    dst = tmp_path / "project"
    dst.mkdir()
    (dst / "train.py").write_text("mine")
    (dst / "README").write_text("mine too")
    assert _convert(src, dst, "adafaclo", "--overwrite") == 1
    err = capsys.readouterr().err.strip()
    assert "not a pylo checkpoint" in err and "train.py" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in dst.iterdir()) == ["README", "train.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", src.name]


def test_overwrite_refuses_a_folder_that_is_not_a_pylo_checkpoint(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="not a pylo checkpoint folder"):
        _folder(dst, 1.0)
    assert (dst / "config.json").read_text() == '{"model_type": "bert"}'


def test_overwrite_refuses_to_replace_the_folder_holding_the_source(tmp_path, capsys):
    # the reproducer: converting celo/theta.state into celo/ itself
    upstream = tmp_path / "celo"
    upstream.mkdir()
    src = _write(upstream, adafac_theta())
    assert _convert(src, upstream, "adafaclo", "--overwrite") == 1
    assert src.exists() and "not replacing" in capsys.readouterr().err
    # a pylo folder converted onto itself
    dst = tmp_path / "ckpt"
    assert _convert(src, dst) == 0
    before = (dst / "model.safetensors").read_bytes()
    assert _convert(dst / "model.safetensors", dst, "adafaclo", "--overwrite") == 1
    assert "contains the source" in capsys.readouterr().err
    assert (dst / "model.safetensors").read_bytes() == before


def test_overwrite_replaces_a_pylo_checkpoint_and_leaves_nothing_else(tmp_path):
    src = _write(tmp_path, adafac_theta())
    dst = tmp_path / "out"
    assert _convert(src, dst) == 0
    first = read_checkpoint(dst).tensors
    assert _convert(src, dst, "adafaclo", "--overwrite") == 0
    second = read_checkpoint(dst).tensors
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", src.name]


def test_leftovers_are_never_read_and_the_next_write_removes_them(tmp_path):
    dst = _folder(tmp_path / "out", 1.0)
    for kind in ("tmp", "old"):
        leftover = tmp_path / f".out.{kind}-0123abcd"
        _folder(leftover, 9.0)
        with pytest.raises(CheckpointError, match="leftover of an interrupted"):
            read_checkpoint(leftover)
    mine = tmp_path / ".out.notes"  # not ours: kept
    mine.write_text("mine")
    _folder(dst, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.notes", "out"]
    assert torch.equal(read_checkpoint(dst).tensors["w"], torch.full((3,), 2.0))


def test_a_failure_during_the_swap_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    dst = _folder(tmp_path / "out", 1.0)

    def crash(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io, "_exchange", crash)
    with pytest.raises(KeyboardInterrupt):
        _folder(dst, 2.0)
    assert torch.equal(read_checkpoint(dst).tensors["w"], torch.full((3,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


WRITER = """
import sys, torch
from pylo.checkpoint_io import write_checkpoint
i = 0
while True:
    i += 1
    write_checkpoint(sys.argv[1], {"pylo": {"optimizer": "adafaclo"}}, {"w": torch.full((256, 256), float(i))},
                     overwrite=True)
    print(i, flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL timing test for Linux")
def test_sigkill_at_any_point_leaves_the_old_or_the_new_checkpoint(tmp_path):
    dst = _folder(tmp_path / "out", 0.0)
    for delay in (0.9, 1.3, 1.7, 2.1):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dst)], stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        values = read_checkpoint(dst).tensors["w"].unique()
        assert values.numel() == 1  # one whole checkpoint, old or new
    _folder(dst, -1.0)  # the next write cleans what the kills left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_integer_tensors_in_a_checkpoint_are_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "ints", CONFIG, {"w": torch.arange(3)})  # (issue 11, defect 5)
    with pytest.raises(CheckpointError, match=r"non-floating tensors.*w \(torch.int64\)"):
        read_checkpoint(folder)


def test_conversion_refuses_non_finite_weights(tmp_path, capsys):
    import numpy as np

    import jax

    theta = adafac_theta()
    first = jax.tree_util.tree_leaves(theta["nn"])[0]
    first.reshape(-1)[0] = np.nan  # a weight of the meta-network
    assert _convert(_write(tmp_path, theta), tmp_path / "out") == 1
    assert "non-finite weights" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_damaged_weights_file_that_still_parses_is_refused(tmp_path):
    """config.json records model.safetensors's SHA-256 (issue 11): a flipped byte in the tensor data
    (the header still parses) is an error, not other weights."""
    folder = write_checkpoint(tmp_path / "ckpt", CONFIG, {"w": torch.arange(64, dtype=torch.float32)})
    assert len(read_checkpoint(folder).config["pylo"]["weights_sha256"]) == 64
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-9] ^= 0x40  # inside the last float
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the SHA-256"):
        read_checkpoint(folder)
    (folder / "config.json").write_text('{"hidden_size": 2}')  # a folder without the record still loads
    assert read_checkpoint(folder).tensors["w"].shape == (64,)
