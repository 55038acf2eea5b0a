"""pylo-bench runs end to end and reports what it promises (no timing assertions: benchmarks are not tests)."""

import json

import pytest
import torch

from pylo.bench import measure, workloads
from pylo.bench.cli import main


def test_workloads_have_the_documented_sizes():
    assert workloads.numel(workloads.mlp()) == 1_863_690
    assert 11e6 < workloads.numel(workloads.transformer()) < 12e6
    assert any("embed" in name for name, _ in workloads.transformer())
    assert workloads.parse_shapes("4x5, 3") == [("p0", (4, 5)), ("p1", (3,))]
    with pytest.raises(ValueError, match="bad shape"):
        workloads.parse_shapes("4xq")


def test_transient_memory_is_measured_from_allocations():
    x = torch.randn(500, 500)  # 1 MB

    def step():
        a = x * 2
        b = a + 1  # two 1 MB tensors alive at once
        del a, b

    assert 2_000_000 <= measure.peak_transient_bytes(step, torch.device("cpu")) < 2_100_000


def test_memory_measurement_prints_no_profiler_noise(capfd):
    x = torch.randn(100)
    measure.peak_transient_bytes(lambda: x * 2, torch.device("cpu"))
    out, err = capfd.readouterr()
    assert "profiler_start" not in out + err and "profiler_stop" not in out + err


def test_state_bytes_counts_storages_once():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(10)
    opt.step()
    assert measure.state_bytes(opt) == 2 * 10 * 4 + 4  # exp_avg, exp_avg_sq, step


def test_cli_writes_json_markdown_and_ratios(tmp_path, capsys):
    status = main(["--shapes", "40x30,7", "--optimizer", "adafaclo", "--iters", "1", "--warmup", "1",
                   "--out", str(tmp_path)])
    assert status == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["optimizer"], r["backend"]): r for r in result["rows"]}
    assert {("AdamW", "foreach"), ("AdamW", "fused"), ("adafaclo", "naive"), ("adafaclo", "fused")} <= set(rows)
    fused = rows[("adafaclo", "fused")]
    assert fused["error"] is None and fused["median_ms"] > 0 and fused["vs_naive"] > 0 and fused["vs_adamw"] > 0
    assert fused["state_bytes_per_param"] >= 16  # momentum (3) + rms (1) floats per element
    assert result["sgemm_gflops"] > 0 and "custom/adafaclo" in result["mlp_floor_ms"]
    assert "ms/step" in (tmp_path / "bench.md").read_text()
    if any(r["backend"] == "jax-jit" for r in result["rows"]):
        assert rows[("adafaclo", "jax-jit")]["median_ms"] > 0 and fused["vs_jax"] > 0


def test_threads_option_sets_torch_and_xla_alike(monkeypatch):
    from pylo.bench.cli import set_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nowhere")
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        import os

        flags = os.environ["XLA_FLAGS"]
        assert flags.startswith("--xla_dump_to=/nowhere") and "--xla_cpu_multi_thread_eigen=false" in flags
    finally:
        torch.set_num_threads(before)


def test_bad_thread_count_is_a_clear_error(tmp_path, capsys):
    assert main(["--shapes", "4", "--threads", "0", "--out", str(tmp_path)]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_celo2_floor_counts_newton_schulz_on_its_learned_matrices_only():
    from pylo.bench.cli import orthogonalize_flops
    from pylo.core.orthogonalize import newton_schulz_flops
    from pylo.parity_tests import optim_db

    shapes = [("embed.weight", (100, 8)), ("w", (16, 32)), ("b", (32,))]
    celo2, adafac = optim_db.get("celo2"), optim_db.get("adafaclo")
    assert newton_schulz_flops((16, 32), steps=5) == 5 * (4 * 16 * 16 * 32 + 2 * 16 ** 3)
    assert orthogonalize_flops(celo2, shapes) == newton_schulz_flops((16, 32))
    assert orthogonalize_flops(adafac, shapes) == 0


def test_reused_scratch_buffers_count_as_step_memory():
    from pylo.models import MetaMLP
    from pylo.optim import AdafacLO

    p = torch.nn.Parameter(torch.randn(64, 32))
    p.grad = torch.randn(64, 32)
    opt = AdafacLO([p], network=MetaMLP(39, 8, 1), backend="fused", chunk_size=256)
    assert measure.workspace_bytes(opt) == 0
    opt.step()
    # one workspace: 28 feature rows, two hidden buffers and the 2 outputs, chunk elements each
    hidden = opt.network.network[0].out_features
    assert measure.workspace_bytes(opt) == 4 * 256 * (28 + 2 * hidden + 2)
    assert measure.state_bytes(opt) > 0


def test_distributed_mode_measures_the_bytes_of_each_step(tmp_path, capsys):
    """``--distributed`` (2 gloo ranks, FSDP2): AdafacLO and VeLO step their shards and all-reduce only
    statistics (a small fraction of FSDP2's gradient reduce-scatter, no gather); CELO2 gathers each
    matrix's step once (its vector takes AdamW, which needs nothing). The gather-whole fallback is measured
    beside them."""
    import json

    status = main(["--distributed", "--shapes", "64x48,32", "--optimizer", "adafaclo", "--optimizer", "velo",
                   "--optimizer", "celo2", "--out", str(tmp_path)])
    assert status == 0
    [result] = json.loads((tmp_path / "distributed.json").read_text())
    assert result["statistics_floor_bytes"] == 4 * (64 + 48)
    rows = {r["optimizer"]: r for r in result["rows"]}
    assert set(rows) == {"adafaclo", "velo", "celo2"}
    rs = rows["adafaclo"]["fsdp"]["reduce_scatter"]
    assert rs >= 4 * (64 * 48 + 32)
    for name in ("adafaclo", "velo"):
        step = rows[name]["step"]
        assert "all_gather" not in step and 0 < step["all_reduce"] < rs / 5, (name, step)
    assert rows["celo2"]["step"]["all_gather"] == 4 * 64 * 48
    for r in rows.values():  # the gather-whole fallback, for comparison: each parameter and gradient gathered
        assert r["gathered"]["step"]["all_gather"] == 2 * rs and r["step_ms"] > 0 and r["gathered"]["step_ms"] > 0
    assert "step / RS" in capsys.readouterr().out
