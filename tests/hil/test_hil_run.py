"""``edgekit hil run``: local and SSH targets give the same verdict; bad input is one clear error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import GoldenSet
from edgekit.cli import main as cli_main
from edgekit.errors import ConfigError
from hil.run import parse_probe_output, run_hil
from hil.targets import LocalTarget, SshTarget, TargetError, parse_target
from runtimes.packaging import bundle_from_onnx


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        cli_main(argv)
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


def _json_run(argv: list[str], capsys) -> tuple[int, dict]:
    code, out, err = _cli(["hil", "run", "--json", "--iterations", "30", "--warmup", "3", *argv], capsys)
    assert code in (0, 3), err
    return code, json.loads(out)


@pytest.fixture(scope="module")
def budget_bundles(tmp_path_factory, tiny_onnx, signing_keys):
    """The tiny model twice: once with budgets it meets on x86-avx2, once with an accuracy it cannot reach."""
    key, _, _ = signing_keys
    d = tmp_path_factory.mktemp("hilb")
    x = np.random.default_rng(3).standard_normal((16, 1, 8, 8)).astype(np.float32)
    golden_in = d / "in.npz"
    golden_in.write_bytes(GoldenSet(inputs={"image": x}, outputs={}).to_npz_bytes())
    out = {}
    for name, metrics in {
        "meets": {"max_p99_ms": 500.0, "p50_ms": 50.0, "throughput_per_s": 10.0, "size_mb": 0.01,
                  "macs": 1000.0},
        "misses": {"accuracy": 1.0, "max_p99_ms": 500.0},
    }.items():
        path = d / f"tiny-{name}.ekb"
        labels = np.zeros(16, dtype=np.int64)  # class 0 everywhere: accuracy well below 1.0
        g = d / f"{name}.npz"
        g.write_bytes(GoldenSet(inputs={"image": x}, outputs={}, labels=labels).to_npz_bytes())
        bundle_from_onnx(tiny_onnx, name="tiny", version=f"1.0.0-{name}", key=key, out=path, golden_npz=g,
                         labels=["a", "b", "c"], extra={"metrics": {"x86-avx2": metrics}})
        out[name] = path
    return out


def test_local_run_passes_and_reports_every_figure(tiny_bundle, signing_keys, capsys):
    _, _, keydir = signing_keys
    code, rep = _json_run(["--bundle", str(tiny_bundle), "--profile", "x86-avx2", "--key", str(keydir / "signing.pub")], capsys)
    assert code == 0 and rep["verdict"] == "pass"
    m = rep["measured"]
    assert m["runtime"] == "onnxruntime" and m["signature_checked"] is True and m["bundle"] == "tiny@1.0.0"
    lat = m["latency"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert m["throughput_per_s"] > 0 and m["peak_rss_mb"] > 10
    assert m["golden"]["passed"] is True and m["golden"]["max_abs_error"] <= 1e-3
    names = [c["name"] for c in rep["checks"]]
    assert "golden outputs" in names and "peak memory (MB)" in names


def test_budgets_decide_the_verdict(budget_bundles, signing_keys, capsys):
    _, _, keydir = signing_keys
    key = ["--key", str(keydir / "signing.pub"), "--profile", "x86-avx2"]
    code, ok = _json_run(["--bundle", str(budget_bundles["meets"]), *key], capsys)
    assert code == 0 and ok["verdict"] == "pass"
    checks = {c["name"]: c for c in ok["checks"]}
    assert checks["max_p99_ms"]["passed"] is True and checks["macs"]["op"] == "info"
    assert checks["size_mb"]["passed"] is True and 0 < checks["size_mb"]["measured"] < 0.01
    code, bad = _json_run(["--bundle", str(budget_bundles["misses"]), *key], capsys)
    assert code == 3 and bad["verdict"] == "fail"
    acc = {c["name"]: c for c in bad["checks"]}["accuracy"]
    assert acc["passed"] is False and acc["measured"] < acc["limit"]


def test_judge_reads_budgets_and_allows_for_few_golden_samples(tiny_bundle):
    from edgekit.bundle import read_manifest
    from edgekit.profiles import load_profile
    from hil.verdict import judge

    manifest = read_manifest(tiny_bundle).model_copy(update={"metrics": {"x86-avx2": {
        "accuracy": 0.9, "min_throughput_per_s": 100.0, "max_p95_ms": 1.0, "peak_rss_mb": 100.0}}})
    base = {"bundle": "tiny@1.0.0", "runtime": "onnxruntime", "golden": {"passed": True, "max_abs_error": 0.0},
            "latency": {"p50_ms": 0.5, "p95_ms": 0.9, "p99_ms": 2.0}, "throughput_per_s": 150.0, "peak_rss_mb": 140.0}
    prof = load_profile("x86-avx2")
    few = judge(base | {"accuracy": 0.8, "accuracy_source": "golden (8 samples)", "accuracy_samples": 8},
                manifest, prof, target="t")
    assert few.verdict == "pass"  # 0.8 >= 0.9 - 2/8
    many = judge(base | {"accuracy": 0.8, "accuracy_source": "data (500 samples)", "accuracy_samples": 500},
                 manifest, prof, target="t")
    assert many.verdict == "fail" and [c.name for c in many.checks if c.passed is False] == ["accuracy"]
    slow = judge(base | {"accuracy": 0.95, "latency": {"p95_ms": 1.2}, "throughput_per_s": 50.0, "peak_rss_mb": 160.0},
                 manifest, prof, target="t")
    assert {c.name for c in slow.checks if c.passed is False} == {"max_p95_ms", "min_throughput_per_s", "peak_rss_mb"}
    broken = judge(base | {"accuracy": 0.95, "golden": {"passed": False, "max_abs_error": 0.5}}, manifest, prof, target="t")
    assert broken.verdict == "fail"


def test_a_profile_this_host_cannot_honour_is_flagged(tiny_bundle, capsys):
    code, rep = _json_run(["--bundle", str(tiny_bundle), "--profile", "jetson-orin-nano"], capsys)
    notes = {c["name"]: c for c in rep["checks"]}
    assert rep["measured"]["runtime"] == "onnxruntime" and "tensorrt" in rep["measured"]["runtimes_unavailable"]
    assert notes["runtime"]["passed"] is None and "prefers tensorrt" in notes["runtime"]["note"]
    if rep["measured"]["host"]["arch"] != "aarch64":
        assert "a stand-in" in notes["host"]["note"]


def test_given_data_replaces_golden_accuracy(budget_bundles, tmp_path, capsys):
    x = np.random.default_rng(5).standard_normal((40, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, y=np.zeros(40, dtype=np.int64))
    code, rep = _json_run(["--bundle", str(budget_bundles["misses"]), "--profile", "x86-avx2",
                           "--data", str(tmp_path / "eval.npz")], capsys)
    assert rep["measured"]["accuracy_source"] == "data (40 samples)"
    assert 0.0 <= rep["measured"]["accuracy"] < 1.0 and code == 3


@pytest.mark.integration
def test_ssh_target_gives_the_same_verdict_as_local(sshd, budget_bundles, tiny_bundle, signing_keys, capsys):
    _, _, keydir = signing_keys
    ssh = ["--target", sshd.url, "--identity", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
           "--remote-python", sys.executable]
    for bundle in (tiny_bundle, budget_bundles["meets"], budget_bundles["misses"]):
        common = ["--bundle", str(bundle), "--profile", "x86-avx2", "--key", str(keydir / "signing.pub")]
        local_code, local = _json_run(common, capsys)
        ssh_code, remote = _json_run([*common, *ssh], capsys)
        assert remote["target"] == sshd.url and local["target"] == "local"
        assert (ssh_code, remote["verdict"]) == (local_code, local["verdict"]), bundle.name
        assert [(c["name"], c["passed"]) for c in remote["checks"]] == [(c["name"], c["passed"]) for c in local["checks"]]
        assert remote["measured"]["golden"] == local["measured"]["golden"]


@pytest.mark.integration
def test_ssh_scratch_folder_is_removed_and_bad_key_is_refused(sshd, tiny_bundle, tmp_path):
    target = SshTarget("127.0.0.1", user="root", port=sshd.port, identity=sshd.client_key,
                       python=sys.executable, known_hosts=sshd.known_hosts)
    with target:
        workdir = target.workdir
        assert target.run(["test", "-d", workdir], timeout=30).returncode == 0
    probe = LocalTarget()
    with probe:
        assert probe.run(["test", "-e", workdir], timeout=30).returncode != 0  # same host: gone
    stranger = tmp_path / "stranger"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    bad = SshTarget("127.0.0.1", user="root", port=sshd.port, identity=stranger, python=sys.executable,
                    known_hosts=sshd.known_hosts)
    with pytest.raises(TargetError, match="ssh to ssh://root@127.0.0.1"):
        run_hil(bad, tiny_bundle, profile="x86-avx2")


@pytest.mark.integration
def test_remote_without_edgekit_is_a_clear_error(sshd, tiny_bundle):
    target = SshTarget("127.0.0.1", user="root", port=sshd.port, identity=sshd.client_key,
                       python="/usr/bin/python3", known_hosts=sshd.known_hosts)
    with pytest.raises(TargetError, match="on ssh://root@127.0.0.1:[0-9]+: edgekit is not importable on the target"):
        run_hil(target, tiny_bundle, profile="x86-avx2", iterations=5, warmup=0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("foo", "use 'local'"), ("ssh://", "expected ssh://"), ("ssh://h:99999", "invalid port"),
     ("ssh://h/path", "nothing after the port"), ("http://h", "use 'local'")],
)
def test_bad_target_specs_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_target(spec)


def test_ssh_spec_is_parsed(tmp_path):
    ident = tmp_path / "id"
    ident.write_text("x")
    t = parse_target("ssh://pi@10.0.0.7:2222", identity=ident, remote_python="/opt/ek/bin/python")
    assert isinstance(t, SshTarget)
    assert (t.user, t.host, t.port, t.python, t.name) == ("pi", "10.0.0.7", 2222, "/opt/ek/bin/python", "ssh://pi@10.0.0.7:2222")
    with pytest.raises(ConfigError, match="--identity"):
        parse_target("ssh://pi@h", identity=tmp_path / "missing")


def test_cli_bad_inputs_exit_1_with_one_line(tiny_bundle, tmp_path, capsys):
    cases = [
        (["--bundle", str(tmp_path / "none.ekb")], "is not a file"),
        (["--bundle", str(tiny_bundle), "--profile", "nope"], "unknown device profile"),
        (["--bundle", str(tiny_bundle), "--target", "ftp://x"], "use 'local'"),
        (["--bundle", str(tiny_bundle), "--data", str(tmp_path / "none.npz")], "--data"),
        (["--bundle", str(tiny_bundle), "--key", str(tmp_path / "none.pub")], "--key"),
        (["--bundle", str(tiny_bundle), "--strict-host-key-checking", "maybe"], "strict-host-key-checking"),
    ]
    junk = tmp_path / "junk.ekb"
    junk.write_bytes(b"not a tar")
    cases.append((["--bundle", str(junk)], "not a bundle"))
    for argv, message in cases:
        code, _, err = _cli(["hil", "run", *argv], capsys)
        assert code == 1, argv
        assert message in err and "Traceback" not in err, (argv, err)


def test_bad_data_file_is_reported_from_the_target(tiny_bundle, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros(3))
    with pytest.raises(TargetError, match="needs 'input:NAME'"):
        run_hil(LocalTarget(), tiny_bundle, profile="x86-avx2", data=bad, iterations=5, warmup=0)


@pytest.mark.parametrize(
    ("stdout", "message"),
    [("", "produced no result"), ("EDGEKIT-HIL-RESULT\n{oops", "unreadable"),
     ('EDGEKIT-HIL-RESULT\n{"ok": false, "error": "BundleError: x"}', "BundleError: x"),
     ("EDGEKIT-HIL-RESULT\n[1]", "not a JSON object")],
)
def test_probe_output_parsing(stdout, message):
    with pytest.raises(TargetError, match=message):
        parse_probe_output(stdout, "", "t")


def test_probe_result_survives_a_login_banner():
    data = parse_probe_output('Welcome!\nEDGEKIT-HIL-RESULT\n{"ok": true, "x": 1}\n', "", "t")
    assert data["x"] == 1


def test_probe_script_imports_only_core_and_runtimes():
    import ast

    tree = ast.parse((Path(__file__).parents[2] / "hil" / "probe.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "argparse", "json", "platform", "sys", "tempfile", "time", "pathlib", "typing",
                     "numpy", "edgekit", "runtimes"}, roots


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory, signing_keys):
    """A real digits classifier (scikit-learn logistic regression on ``load_digits``, exported with the onnx
    helper API, no torch), bundled with 64 held-out golden samples, its measured accuracy as the budget for
    x86-avx2, and the rest of the held-out set as evaluation data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    key, _, _ = signing_keys
    d = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    clf = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    acc = float(clf.score(xte, yte))
    w = numpy_helper.from_array(clf.coef_.T.astype(np.float32), "w")
    b = numpy_helper.from_array(clf.intercept_.astype(np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[w, b, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, d / "digits.onnx")
    images = xte.reshape(-1, 1, 8, 8)
    golden = d / "golden-in.npz"
    golden.write_bytes(GoldenSet(inputs={"image": images[:64]}, outputs={}, labels=yte[:64]).to_npz_bytes())
    eval_npz = d / "eval.npz"
    np.savez(eval_npz, x=images, y=yte)
    out = d / "digits-1.0.0.ekb"
    bundle_from_onnx(d / "digits.onnx", name="digits", version="1.0.0", key=key, out=out, golden_npz=golden,
                     labels=[str(i) for i in range(10)],
                     extra={"metrics": {"x86-avx2": {"accuracy": acc, "max_p99_ms": 1000.0, "max_peak_rss_mb": 900.0}},
                            "tolerance": {"atol": 1e-4, "rtol": 1e-4, "min_golden_accuracy": 0.9}})
    return out, eval_npz, acc


@pytest.mark.integration
def test_digits_bundle_same_verdict_local_and_over_ssh(sshd, digits_bundle, signing_keys, capsys):
    bundle, eval_npz, acc = digits_bundle
    _, _, keydir = signing_keys
    common = ["--bundle", str(bundle), "--profile", "x86-avx2", "--key", str(keydir / "signing.pub"),
              "--data", str(eval_npz)]
    ssh = ["--target", sshd.url, "--identity", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
           "--remote-python", sys.executable]
    local_code, local = _json_run(common, capsys)
    ssh_code, remote = _json_run([*common, *ssh], capsys)
    assert (local_code, local["verdict"]) == (ssh_code, remote["verdict"]) == (0, "pass")
    assert local["measured"]["accuracy"] == pytest.approx(acc) == remote["measured"]["accuracy"]
    assert local["measured"]["golden"]["accuracy"] >= 0.9
    assert {c["name"] for c in remote["checks"]} >= {"accuracy", "golden accuracy", "max_p99_ms", "max_peak_rss_mb"}
