"""``edgekit hil run``: copy a bundle and the probe to a target, run it there, judge the result.

Flow: verify the bundle here (so the budgets we judge against come from a manifest whose hashes, and
with ``--key`` whose signature, hold) → copy the bundle, the probe script, the optional data and keys
to the target → run ``PYTHON probe.py …`` there → parse its JSON → :func:`hil.verdict.judge`. The probe
re-verifies on the target and picks the runtime the profile names (TensorRT on a Jetson, building its
engine there; ONNX Runtime elsewhere).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edgekit.bundle import verify_bundle
from edgekit.errors import ConfigError
from edgekit.profiles import load_profile
from edgekit.signing import load_public_keys
from hil import probe as probe_module
from hil.targets import Target, TargetError
from hil.verdict import HilReport, Slack, judge

__all__ = ["PROBE_SCRIPT", "parse_probe_output", "run_hil"]

PROBE_SCRIPT = Path(probe_module.__file__)


def parse_probe_output(stdout: str, stderr: str, target: str) -> dict[str, Any]:
    """The JSON after the probe's marker line; a missing or bad one is a :class:`TargetError` with context."""
    lines = stdout.splitlines()
    try:
        idx = len(lines) - 1 - lines[::-1].index(probe_module.MARKER)
    except ValueError:
        tail = (stderr.strip() or stdout.strip())[-800:]
        raise TargetError(f"the probe on {target} produced no result: {tail or 'no output'}") from None
    try:
        data = json.loads(lines[idx + 1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise TargetError(f"the probe on {target} printed an unreadable result: {exc}") from exc
    if not isinstance(data, dict):
        raise TargetError(f"the probe on {target} printed a result that is not a JSON object")
    if not data.get("ok"):
        raise TargetError(f"on {target}: {data.get('error', 'the probe failed without saying why')}")
    return data


def _key_files(keys: list[Path]) -> list[Path]:
    """Each ``--key`` is a ``.pub`` file or a folder of them (like :func:`load_public_keys`)."""
    out: list[Path] = []
    for k in map(Path, keys):
        if k.is_dir():
            found = sorted(k.glob("*.pub"))
            if not found:
                raise ConfigError(f"--key {k} is a folder without any *.pub key")
            out.extend(found)
        elif k.is_file():
            out.append(k)
        else:
            raise ConfigError(f"--key {k} does not exist")
    return out


def run_hil(
    target: Target,
    bundle: Path,
    *,
    profile: str | None = None,
    data: Path | None = None,
    keys: list[Path] | None = None,
    iterations: int = 200,
    warmup: int = 20,
    slack: Slack = Slack(),
    timeout: float = 900.0,
) -> HilReport:
    """Run ``bundle`` on ``target`` and return the judged report (pass or fail; errors raise)."""
    bundle = Path(bundle)
    if data is not None and not Path(data).is_file():
        raise ConfigError(f"--data {data} is not a file")
    if profile is not None:
        load_profile(profile)  # fail fast here on an unknown profile, before copying anything
    key_files = _key_files(keys or [])
    trusted = load_public_keys(key_files) if key_files else None
    with tempfile.TemporaryDirectory(prefix="edgekit-hil-verify-") as tmp:
        manifest = verify_bundle(bundle, trusted, Path(tmp) / "b", require_signature=bool(key_files)).manifest
    with target:
        argv = [target.python, target.put(PROBE_SCRIPT, "probe.py"), "--bundle", target.put(bundle, "bundle.ekb"),
                "--iterations", str(iterations), "--warmup", str(warmup)]
        if profile:
            argv += ["--profile", profile]
        if data is not None:
            argv += ["--data", target.put(Path(data), "data.npz")]
        for i, k in enumerate(key_files):
            argv += ["--key", target.put(Path(k), f"trusted-{i}.pub")]
        proc = target.run(argv, timeout=timeout)
    result = parse_probe_output(proc.stdout, proc.stderr, target.name)
    if result.get("bundle") != manifest.ref:
        raise TargetError(f"the probe on {target.name} ran {result.get('bundle')!r}, not {manifest.ref!r}")
    return judge(result, manifest, load_profile(result["profile"]), target=target.name, slack=slack)
