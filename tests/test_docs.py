"""The docs stay true: the CLI reference is current, links resolve, and every quickstart command runs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PY = sys.executable
BIN = Path(PY).parent


def test_cli_reference_is_generated_from_the_current_app():
    p = subprocess.run([PY, str(DOCS / "gen_cli.py"), "--check"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr + "\n(regenerate with: python docs/gen_cli.py)"


def test_cli_reference_covers_every_command_and_option():
    import typer

    from edgekit.cli import build_app

    text = (DOCS / "cli.md").read_text()

    def walk(cmd, path):
        assert f"`{' '.join(path)}`" in text, f"{' '.join(path)} missing from docs/cli.md"
        for p in cmd.params:
            if p.param_type_name == "option" and not p.hidden and p.name != "help":
                assert f"`{p.opts[0]}`" in text
        for name, sub in getattr(cmd, "commands", {}).items():
            if not sub.hidden:
                walk(sub, [*path, name])

    walk(typer.main.get_command(build_app()), ["edgekit"])


def test_recipe_reference_is_generated_from_the_current_schema():
    p = subprocess.run([PY, str(DOCS / "gen_recipes.py"), "--check"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr + "\n(regenerate with: python docs/gen_recipes.py)"


def test_recipe_reference_lists_every_registered_pass():
    from edgekit.compress.registry import pass_names

    text = (DOCS / "recipes.md").read_text()
    for name in pass_names():
        assert f"#### `{name}`" in text


def test_cli_check_reports_a_stale_file(tmp_path):
    stale = tmp_path / "cli.md"
    stale.write_text("# old\n")
    p = subprocess.run([PY, str(DOCS / "gen_cli.py"), "--check", "--out", str(stale)], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 1 and "stale" in p.stderr


def _md_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("doc", _md_files(), ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_every_guide_the_issue_asks_for_exists():
    for name in ("quickstart", "concepts", "cli", "recipes", "deploy-jetson", "deploy-raspberry-pi", "deploy-x86",
                 "scaling"):
        assert (DOCS / f"{name}.md").is_file(), name


def quickstart_script(text: str) -> str:
    """The quickstart's ``sh`` blocks, in order, as one bash script; ``# quick:`` lines swap in a quick form.

    A command followed by a comment line ``# quick: <command>`` is run in that quick form instead
    (same effect, smaller sizes), so the test stays fast while the page shows the real command.
    """
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    lines: list[str] = []
    for block in blocks:
        for line in block.splitlines():
            m = re.match(r"^\s*# quick: (.+)$", line)
            if m and lines:
                lines[-1] = m.group(1)
            else:
                lines.append(line)
    return "\n".join(lines) + "\n"


def test_quickstart_parser_swaps_in_quick_forms():
    text = "intro\n```sh\nlong --x\n# quick: long --x --tiny\necho hi\n```\n```py\nnot shell\n```\n"
    assert quickstart_script(text) == "long --x --tiny\necho hi\n"


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_every_quickstart_command_runs(tmp_path):
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("the quickstart's fleet needs the mosquitto broker (apt install mosquitto)")
    if shutil.which("curl") is None:
        pytest.skip("the quickstart creates the device's token with curl (apt install curl)")
    script = quickstart_script((DOCS / "quickstart.md").read_text())
    assert "edgekit compress" in script and "edgekit fleet up" in script and "edgekit agent run" in script
    # whatever happens, the services the page starts in the background are stopped with the script
    trap = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n"
    (tmp_path / "quickstart.sh").write_text("set -euo pipefail\n" + trap + script)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["bash", str(tmp_path / "quickstart.sh")], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=580)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    logs = "".join(f"\n--- {f.name}\n" + f.read_text()[-2000:] for f in tmp_path.glob("*.log"))
    assert proc.returncode == 0, f"quickstart failed (exit {proc.returncode}):\n{output[-4000:]}{logs}"
