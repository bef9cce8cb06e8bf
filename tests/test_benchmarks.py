"""The benchmark scripts run end to end (CPU, tiny sizes), so a broken script is
found here and not on the GPU machine, where device time is scarce."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def run(script, *args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_align_benchmark(tmp_path):
    run("align.py", "--backend", "cpu", "--tokens", "1", "--out", str(tmp_path))
    rows = json.load(open(tmp_path / "align_cpu.json"))["rows"]
    assert len(rows) == 4 and all(r["ours_us"] > 0 and r["best_jax_us"] > 0 for r in rows)
    assert (tmp_path / "align_cpu.png").exists()


def test_dispatch_benchmark(tmp_path):
    text = run("dispatch.py", "--backend", "cpu", "--tokens", "16", "--hidden", "256",
               "--experts", "16", "--topk", "4", "--inter", "128", "--out", str(tmp_path))
    for op in ("permute", "unpermute", "silu_and_mul fp8", "copy"):
        assert f"| {op} |" in text
    assert (tmp_path / "dispatch_cpu.json").exists()


def test_ep_benchmark():
    text = run("ep.py", "--tokens", "8", "--hidden", "256")
    for kernel in ("layout", "pack fp8", "unpack", "combine (over ranks)"):
        assert kernel in text


def test_ep_multi_benchmark(tmp_path):
    text = run("ep_multi.py", "--cpu-devices", "4", "--tokens", "8", "--hidden", "256",
               "--experts", "8", "--topk", "2", "--out", str(tmp_path))
    for op in ("| dispatch | ours |", "| combine | ours |", "| dispatch | baseline |",
               "| combine | baseline |"):
        assert op in text


def test_align_benchmark_ours_only(tmp_path):
    # The A/B mode (stage onepassab): our op only, no baselines, no plot.
    text = run("align.py", "--backend", "cpu", "--tokens", "1", "--ours-only", "--out",
               str(tmp_path))
    rows = json.load(open(tmp_path / "align_cpu.json"))["rows"]
    assert len(rows) == 4 and all(r["ours_us"] > 0 and r["argsort_us"] is None for r in rows)
    assert not (tmp_path / "align_cpu.png").exists() and "wrote" in text
