"""The agent imports and serves with torch made unimportable (as on a Raspberry Pi without torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, sys, json

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "torch_pruning"):
            raise ImportError(f"{name} is blocked in this test (the agent must not need torch)")
        return None

sys.meta_path.insert(0, BlockTorch())
try:
    import torch  # noqa
    raise SystemExit("torch import was not blocked")
except ImportError:
    pass

import httpx
from devices.agent.agent import Agent
from devices.agent.config import load_config

cfg = load_config(None, state_dir=sys.argv[1], bundle=sys.argv[2], profile="x86-avx2", runtime_threads=1,
                  server={"port": 0}, ota={"trusted_keys": [sys.argv[3]], "soak_s": 0})
agent = Agent(cfg).start()
try:
    r = httpx.post(f"http://127.0.0.1:{agent.port}/v2/models/tiny/infer",
                   json={"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]})
    print(json.dumps({"status": r.status_code, "body": r.json(),
                      "torch_loaded": any(m.split(".")[0] == "torch" for m in sys.modules)}))
finally:
    agent.stop()

from typer.testing import CliRunner
from devices.cli import agent_app
res = CliRunner().invoke(agent_app, ["run", "--help"])
assert res.exit_code == 0 and "--bundle" in res.output, res.output
"""


def test_agent_serves_without_torch(tmp_path, bundles):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "state"), str(bundles["v1"]), str(bundles["pub"])],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == 200 and out["body"]["model_version"] == "1.0.0"
    assert out["torch_loaded"] is False
