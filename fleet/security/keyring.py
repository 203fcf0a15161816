"""Bundle-signing key rotation: a folder of trusted public keys and a folder of retired ones.

Layout (by default ``{fleet data_dir}/keys``)::

    keys/trusted/<key id>.pub    every key whose bundles are accepted (several at once during a rotation)
    keys/retired/<key id>.pub    keys taken out of service; kept for the record, never trusted again

Rotation: ``add`` the new key (bundles signed by the old *and* the new key verify), re-sign or let old
bundles age out, then ``retire`` the old key: from then on a bundle signed by it is refused like any
untrusted one (:class:`~edgekit.errors.UntrustedKeyError`). ``trusted/`` is a plain folder of ``*.pub``,
so it is exactly what :func:`edgekit.signing.load_public_keys`, ``FleetSettings.trusted_keys`` and the
agent's ``ota.trusted_keys`` already accept. A key id found in ``retired/`` is refused by :meth:`add`
and filtered out of :meth:`trusted` even if a copy is put back into ``trusted/`` by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import ConfigError
from edgekit.signing import PublicKey, load_public_key, load_public_keys
from fleet.security.files import write_public

__all__ = ["BundleKeyring"]


class BundleKeyring:
    """Trusted and retired bundle-signing public keys under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def trusted_dir(self) -> Path:
        return self.root / "trusted"

    @property
    def retired_dir(self) -> Path:
        return self.root / "retired"

    def retired_ids(self) -> set[str]:
        """Ids of every retired key."""
        if not self.retired_dir.is_dir():
            return set()
        return {k.id for k in load_public_keys([self.retired_dir])}

    def trusted(self) -> list[PublicKey]:
        """The keys bundles may be signed with now (retired ones excluded), for ``verify_bundle``."""
        if not self.trusted_dir.is_dir():
            return []
        retired = self.retired_ids()
        return [k for k in load_public_keys([self.trusted_dir]) if k.id not in retired]

    def add(self, public_key_file: Path) -> PublicKey:
        """Trust another public key (PEM ed25519); it is stored as ``trusted/<id>.pub``."""
        key = load_public_key(Path(public_key_file))
        if key.id in self.retired_ids():
            raise ConfigError(f"key {key.id} was retired; a retired key is never trusted again")
        write_public(self.trusted_dir / f"{key.id}.pub", key.pem())
        return key

    def retire(self, key_id: str) -> PublicKey:
        """Move the trusted key ``key_id`` to ``retired/``; bundles it signed are refused from now on."""
        matches = [(path, load_public_key(path)) for path in sorted(self.trusted_dir.glob("*.pub"))]
        found = [(p, k) for p, k in matches if k.id == key_id]
        if not found:
            known = ", ".join(k.id for _, k in matches) or "none"
            raise ConfigError(f"no trusted key with id {key_id!r} (trusted: {known})")
        if len(matches) == len(found):
            raise ConfigError(f"refusing to retire {key_id}: it is the last trusted key (add its successor first)")
        path, key = found[0]
        write_public(self.retired_dir / f"{key.id}.pub", key.pem())
        for p, _ in found:
            os.unlink(p)
        return key
