"""Find runtime backends by name through the ``edgekit.runtimes`` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from edgekit.errors import BackendUnavailableError, RuntimeBackendError
from edgekit.profiles import DeviceProfile
from runtimes.base import Runtime

__all__ = ["available_runtimes", "get_runtime", "runtime_for_profile", "runtime_names"]

GROUP = "edgekit.runtimes"


def runtime_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


@cache
def get_runtime(name: str) -> Runtime:
    """The backend registered as ``name`` (imports only that backend's module)."""
    eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name not in eps:
        raise RuntimeBackendError(f"unknown runtime {name!r}; registered: {', '.join(sorted(eps)) or 'none'}")
    try:
        cls = eps[name].load()
    except ImportError as exc:
        raise BackendUnavailableError(f"runtime {name!r} cannot be imported: {exc}") from exc
    return cls()


def available_runtimes() -> dict[str, str]:
    """Every registered backend → ``""`` when usable here, else why not."""
    out = {}
    for name in runtime_names():
        try:
            ok, why = get_runtime(name).available()
        except BackendUnavailableError as exc:
            ok, why = False, str(exc)
        out[name] = "" if ok else why
    return out


def runtime_for_profile(profile: DeviceProfile) -> Runtime:
    """The first runtime of the profile's preference list that can run on this host."""
    reasons = []
    for name in profile.runtime_preference:
        try:
            rt = get_runtime(name)
            ok, why = rt.available()
        except BackendUnavailableError as exc:
            ok, why = False, str(exc)
        if ok:
            return rt
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError(f"no runtime of profile {profile.name} is usable here ({'; '.join(reasons)})")
