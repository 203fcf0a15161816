"""The runtime registry, the ONNX Runtime and fake backends, input validation and benchmarking."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import BackendUnavailableError, InputError, RuntimeBackendError
from edgekit.manifest import TensorSpec
from edgekit.profiles import load_profile
from runtimes import Runtime, Session, available_runtimes, check_inputs, get_runtime, runtime_for_profile
from runtimes.bench import benchmark, synthetic_feeds
from runtimes.fake import FakeSession


def test_registry_finds_backends_by_entry_point():
    names = set(available_runtimes())
    assert {"onnxruntime", "tensorrt", "torch", "fake"} <= names
    assert isinstance(get_runtime("onnxruntime"), Runtime)
    with pytest.raises(RuntimeBackendError, match="unknown runtime 'nope'"):
        get_runtime("nope")


def test_tensorrt_unavailable_here_says_why():
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        ok, why = get_runtime("tensorrt").available()
        assert not ok and "tensorrt" in why
        with pytest.raises(BackendUnavailableError):
            get_runtime("tensorrt").load("model.onnx")
    else:  # pragma: no cover - only on a TensorRT host
        pytest.skip("tensorrt imports here; its engine build is exercised by hil/ on a GPU")


def test_profile_picks_first_usable_runtime():
    assert runtime_for_profile(load_profile("x86-avx2")).name == "onnxruntime"
    # A Jetson profile prefers TensorRT; without it here, ONNX Runtime is the fallback.
    assert runtime_for_profile(load_profile("jetson-orin-nano")).name in {"tensorrt", "onnxruntime"}


def test_ort_session_matches_onnx_and_validates(tiny_onnx):
    import onnxruntime as ort

    sess = get_runtime("onnxruntime").load(tiny_onnx, load_profile("x86-avx2"))
    assert isinstance(sess, Session)
    assert [s.name for s in sess.inputs] == ["image"] and sess.inputs[0].shape == ["batch", 1, 8, 8]
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(tiny_onnx)).run(None, {"image": x})[0]
    with sess:
        np.testing.assert_allclose(sess.run({"image": x})["logits"], ref, rtol=1e-5, atol=1e-6)
        with pytest.raises(InputError, match="dtype float64"):
            sess.run({"image": x.astype(np.float64)})
        with pytest.raises(InputError, match="shape"):
            sess.run({"image": x[:, :, :4]})
        with pytest.raises(InputError, match="unknown input"):
            sess.run({"image": x, "extra": x})


def test_ort_load_error_is_translated(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(RuntimeBackendError, match="cannot load"):
        get_runtime("onnxruntime").load(bad)


def test_check_inputs_missing():
    specs = [TensorSpec(name="a", dtype="int64", shape=["batch", 4])]
    with pytest.raises(InputError, match="missing input 'a'"):
        check_inputs(specs, {})


def test_fake_runtime_scripts_latency_and_failures():
    s = FakeSession(fail_every=3)
    x = np.ones((2, 4), np.float32)
    assert s.run({"input": x})["output"].shape == (2, 3)
    s.run({"input": x})
    with pytest.raises(RuntimeBackendError, match="scripted failure"):
        s.run({"input": x})


def test_benchmark_reports_percentiles(tiny_onnx):
    with get_runtime("onnxruntime").load(tiny_onnx, threads=1) as sess:
        feeds = synthetic_feeds(sess.inputs, batch=2)
        r = benchmark(sess, feeds, runtime="onnxruntime", warmup=2, iterations=20)
    assert r.batch == 2 and r.iterations == 20
    assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
    assert r.throughput_per_s > 0 and r.peak_rss_mb > 0


def test_peak_memory_is_the_process_own_not_its_parents():
    """ru_maxrss survives fork+exec on Linux: a probe started by a big process must not report its parent's peak."""
    import subprocess
    import sys

    ballast = np.ones(400 * (1 << 20) // 8)  # 400 MB touched in this (parent) process
    code = "from runtimes.bench import _peak_rss_mb; print(_peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert ballast.sum() > 0
    assert child < 300, f"the child reported {child:.0f} MB: its parent's peak, not its own"
