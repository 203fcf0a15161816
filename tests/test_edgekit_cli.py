"""The ``edgekit`` command line: keys, bundles, bench, devices — exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EDGEKIT = [str(Path(sys.executable).with_name("edgekit"))]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*EDGEKIT, *args], capture_output=True, text=True, timeout=120, env=os.environ | {"COLUMNS": "200"})
    if check and p.returncode != 0:
        raise AssertionError(f"edgekit {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_keys_bundle_verify_bench(tmp_path, tiny_onnx):
    run("keys", "generate", "--out", str(tmp_path / "k"))
    assert (tmp_path / "k/signing.key").exists() and (tmp_path / "k/signing.pub").exists()
    out = tmp_path / "tiny-2.0.ekb"
    run("bundle", "create", "--onnx", str(tiny_onnx), "--name", "tiny", "--version", "2.0",
        "--key", str(tmp_path / "k/signing.key"), "--out", str(out), "--labels", "a,b,c")
    info = json.loads(run("bundle", "inspect", str(out), "--json").stdout)
    assert info["name"] == "tiny" and info["labels"] == ["a", "b", "c"] and info["schema"] == 1
    assert set(info["files"]) == {"model.onnx", "golden.npz"}
    assert "OK tiny@2.0" in run("bundle", "verify", str(out), "--key", str(tmp_path / "k/signing.pub")).stdout
    bench = json.loads(run("bench", str(out), "--json", "--iterations", "30", "--warmup", "3",
                           "--key", str(tmp_path / "k/signing.pub")).stdout)
    for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_per_s", "runtime"):
        assert key in bench
    assert bench["runtime"] == "onnxruntime" and bench["p50_ms"] > 0


def test_verify_failure_is_one_clear_line(tmp_path, tiny_bundle):
    run("keys", "generate", "--out", str(tmp_path / "other"))
    p = run("bundle", "verify", str(tiny_bundle), "--key", str(tmp_path / "other/signing.pub"), check=False)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not trusted" in lines[0] and "Traceback" not in p.stderr


def test_bad_arguments(tmp_path):
    p = run("bundle", "inspect", str(tmp_path / "missing.ekb"), check=False)
    assert p.returncode == 1 and "does not exist" in p.stderr
    p = run("bench", str(tmp_path / "missing.ekb"), "--profile", "nope", check=False)
    assert p.returncode == 1 and "unknown device profile 'nope'" in p.stderr
    p = run("bundle", "create", "--onnx", str(tmp_path / "x.onnx"), check=False)
    assert p.returncode == 2 and "Missing option" in p.stderr


def test_devices_detect_json():
    info = json.loads(run("devices", "detect", "--json").stdout)
    assert info["cores"] >= 1 and "profile" in info and "cpu_features" in info


@pytest.mark.parametrize("cmd", [["--help"], ["--version"], ["devices", "profiles"]])
def test_basic_commands(cmd):
    assert run(*cmd).returncode == 0
