"""Detect the host's hardware and the device profile that fits it best (``edgekit devices detect``)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel

from edgekit.profiles import DeviceProfile, load_profiles

__all__ = ["HostInfo", "best_profile", "detect_host"]


class HostInfo(BaseModel):
    arch: str
    cpu_model: str
    cpu_features: list[str]
    cores: int
    memory_mb: int
    board: str | None = None
    gpu: str | None = None
    profile: str | None = None
    profile_reason: str = ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpu(cpuinfo: str) -> tuple[str, list[str]]:
    model, feats = platform.processor() or "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and val.strip():
            model = val.strip()
        elif key in ("flags", "features"):
            feats.update(val.split())
    return model, sorted(feats)


def _memory_mb(meminfo: str) -> int:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        return 0


def _gpu() -> str | None:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=False,
            ).stdout.strip()
            if out:
                return out.splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    tegra = _read("/etc/nv_tegra_release")
    return "NVIDIA Tegra (Jetson)" if tegra else None


def detect_host(profiles: dict[str, DeviceProfile] | None = None) -> HostInfo:
    cpu_model, feats = _cpu(_read("/proc/cpuinfo"))
    board = _read("/proc/device-tree/model").strip("\x00\n ") or None
    info = HostInfo(
        arch=platform.machine(),
        cpu_model=cpu_model,
        cpu_features=feats,
        cores=os.cpu_count() or 1,
        memory_mb=_memory_mb(_read("/proc/meminfo")),
        board=board,
        gpu=_gpu(),
    )
    match = best_profile(info, profiles if profiles is not None else load_profiles())
    if match:
        info.profile, info.profile_reason = match
    return info


def best_profile(host: HostInfo, profiles: dict[str, DeviceProfile]) -> tuple[str, str] | None:
    """The most specific profile whose requirements the host meets, with the reason.

    A profile fits when the architecture matches, every required CPU feature is present, a CUDA
    profile has a GPU, and a ``board_match`` (if any) appears in the board or GPU name. Among fits the
    one with a board match, then an accelerator, then the most required features wins.
    """
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(host.arch.lower(), host.arch)
    feats = set(host.cpu_features)
    ident = f"{host.board or ''} {host.gpu or ''}"
    scored = []
    for p in profiles.values():
        if p.arch != arch or not set(p.cpu_features) <= feats:
            continue
        if p.accelerator == "cuda" and not host.gpu:
            continue
        board_hit = any(s.lower() in ident.lower() for s in p.board_match)
        if p.board_match and not board_hit:
            continue
        scored.append(((board_hit, p.accelerator != "none", len(p.cpu_features)), p))
    if not scored:
        return None
    scored.sort(key=lambda t: t[0], reverse=True)
    best = scored[0][1]
    reason = f"arch {arch}, CPU features {', '.join(best.cpu_features) or 'none required'}"
    if best.board_match:
        reason += f", board {ident.strip()!r}"
    return best.name, reason
