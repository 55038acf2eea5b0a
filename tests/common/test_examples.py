"""The examples run offline, train, and write their picture and tables (issue 12 item 5): a short run of
each, with AdamW and with Celo's real weights (converted from ``../shared/checkpoints/celo``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import convert_cli

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def celo_folder(shared_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights") / "celo"
    assert convert_cli(shared_checkpoints / "celo" / "theta.state", folder, "celo") == 0
    return folder


def _run(script, out, *args):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(out / "hf_cache")}  # no weights a real cache might hold
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=EXAMPLES.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), done.stdout


def _falls(losses, k=10) -> bool:
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


@pytest.mark.parametrize("script,metric", [("digits.py", "final_test_accuracy"), ("char_lm.py", "final_val_loss")])
def test_a_short_run_trains_and_writes_its_picture(script, metric, celo_folder, tmp_path):
    results, _ = _run(script, tmp_path, "--steps", "40", "--eval-every", "10", "--optimizers", "adamw,celo",
                      "--checkpoint", f"celo={celo_folder}")  # 5 evaluations: they cost more than the steps
    runs = results["optimizers"]
    for name in ("adamw", "celo"):
        assert runs[name]["status"] == "ok", runs[name]
        assert _falls(runs[name]["curves"]["batch_loss"]), name
        assert metric in runs[name]
    png = tmp_path / f"{script[:-3]}.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    assert "| celo |" in (tmp_path / "results.md").read_text()


def test_a_learned_optimizer_without_weights_is_skipped_not_a_crash(tmp_path):
    results, out = _run("digits.py", tmp_path, "--steps", "3", "--optimizers", "adamw,velo")
    assert results["optimizers"]["velo"]["status"] == "skipped"
    assert "no weights" in results["optimizers"]["velo"]["reason"] and "velo: skipped" in out
    assert results["optimizers"]["adamw"]["status"] == "ok"


def test_bad_arguments_are_clear_errors(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "digits.py"), "--optimizers", "sgd", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown optimizer" in done.stderr
