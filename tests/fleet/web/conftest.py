"""Fixtures of the fleet web tests: a real SQLite database (migrated by alembic), a real bundle registry
and rollout manager wired into a ``FleetContext``, tokens, and a TestClient over ``create_app``."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from fleet.db import Database


def _create_schema(db: Database) -> None:
    """The fleet's real alembic migrations (the same path ``fleet up`` takes)."""
    from fleet.db.migrate import upgrade

    upgrade(db)


@pytest.fixture(autouse=True)
def _no_background_analytics(monkeypatch):
    """Apps built by these tests run no Iceberg loop unless a test passes ``analytics=`` itself."""
    monkeypatch.setenv("EDGEKIT_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    """One SQLite file migrated by alembic; each test gets a copy (migrating per test is the slow part)."""
    path = tmp_path_factory.mktemp("schema") / "fleet.db"
    db = Database(f"sqlite:///{path}")
    _create_schema(db)
    db.dispose()
    return path


@pytest.fixture(scope="session")
def _pg_template(postgres_server) -> str:
    """A PostgreSQL database migrated by alembic once; tests clone it with ``CREATE DATABASE … TEMPLATE``."""
    url = postgres_server.create_database("edgekit_web_template")
    db = Database(url)
    _create_schema(db)
    db.dispose()  # a template must have no open connections
    return "edgekit_web_template"


def _open(request, kind: str, tmp_path: Path):
    if kind == "sqlite":
        target = tmp_path / "fleet.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), target)
        return Database(f"sqlite:///{target}"), None
    template = request.getfixturevalue("_pg_template")
    server = request.getfixturevalue("postgres_server")
    name = f"t_web_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return Database(server.url(name)), (admin, name)


def _close(db: Database, pg) -> None:
    db.dispose()
    if pg is not None:  # keep the shared cluster small: drop each test's database
        admin, name = pg
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_db(request, tmp_path):
    """A file-backed SQLite database with every fleet table created (by the real migrations)."""
    db, pg = _open(request, "sqlite", tmp_path)
    yield db
    _close(db, pg)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def web_db(request, tmp_path):
    """The database the auth, audit and analytics tests run on: SQLite, and a real PostgreSQL server
    (``postgres_server`` from ``tests/fleet/conftest.py``; skipped, naming what is missing, without one)."""
    db, pg = _open(request, request.param, tmp_path)
    yield db
    _close(db, pg)


class RecordingPublisher:
    """Unit-test stand-in for the MQTT desired-state publisher: remembers what it was asked to send."""

    def __init__(self):
        self.sent: list[tuple[str, object]] = []

    def publish(self, device_id, desired) -> None:
        self.sent.append((device_id, desired))


class Clock:
    """A settable clock for the rollout manager (soak windows pass instantly)."""

    def __init__(self):
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Stats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    by_kind: dict = field(default_factory=dict)


@pytest.fixture
def fleet_db(request, tmp_path):
    """The fleet context's database: SQLite unless a test asks for ``postgresql`` (indirect param)."""
    db, pg = _open(request, getattr(request, "param", "sqlite"), tmp_path)
    yield db
    _close(db, pg)


@pytest.fixture
def fleet_ctx(tmp_path, fleet_db, signing_keys):
    """A FleetContext over real SQLite, a real registry (trusting the test key) and a real rollout manager."""
    from fleet.context import FleetContext
    from fleet.registry import BundleRegistry
    from fleet.rollouts import RolloutManager
    from fleet.settings import FleetSettings

    _, _, key_dir = signing_keys
    settings = FleetSettings(data_dir=tmp_path / "fleet-data", database_url=fleet_db.url,
                             trusted_keys=[key_dir / "signing.pub"], port=8080)
    from edgekit.signing import load_public_keys

    trusted = load_public_keys(settings.trusted_keys)
    registry = BundleRegistry(fleet_db, settings.artifacts, trusted, settings.public_url)
    publisher = RecordingPublisher()
    clock = Clock()
    rollouts = RolloutManager(fleet_db, registry, publisher, clock=clock)
    ctx = FleetContext(settings=settings, database=fleet_db, registry=registry, rollouts=rollouts,
                       publisher=publisher, ingest_stats=Stats(), trusted_keys=trusted)
    ctx.test_clock = clock  # type: ignore[attr-defined]
    return ctx


@pytest.fixture
def tokens(fleet_ctx):
    """``{"admin": secret, "read": secret}`` created in the fleet's database."""
    from fleet.auth import create_token

    with fleet_ctx.database.session() as s:
        admin, _ = create_token(s, "test-admin", "admin")
        read, _ = create_token(s, "test-reader", "read")
    return {"admin": admin, "read": read}


@pytest.fixture
def client(fleet_ctx):
    from fastapi.testclient import TestClient

    from fleet.api import create_app

    with TestClient(create_app(fleet_ctx), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def admin_h(tokens):
    return {"Authorization": f"Bearer {tokens['admin']}"}


@pytest.fixture
def read_h(tokens):
    return {"Authorization": f"Bearer {tokens['read']}"}


@pytest.fixture
def feed(fleet_ctx):
    """Store wire payloads through the fleet's real ingest write path (``fleet.store.store_batch``)."""
    from fleet.store import Message, store_batch

    kinds = {"Status": "status", "Telemetry": "telemetry", "Event": "events", "Reported": "reported"}

    def _feed(*payloads):
        now = fleet_ctx.test_clock()
        msgs = [Message(kinds[type(p).__name__], p.device_id, p, now) for p in payloads]
        with fleet_ctx.database.session() as s:
            return store_batch(s, msgs)

    return _feed


@pytest.fixture(scope="session")
def bundle_v2(tmp_path_factory, tiny_onnx, signing_keys):
    """``tiny@2.0.0``, signed by the trusted test key."""
    from runtimes.packaging import bundle_from_onnx

    key, _, _ = signing_keys
    out = tmp_path_factory.mktemp("bundle-v2") / "tiny-2.0.0.ekb"
    bundle_from_onnx(tiny_onnx, name="tiny", version="2.0.0", key=key, out=out, labels=["a", "b", "c"])
    return out


def pytest_collection_modifyitems(items):
    # Starlette's TestClient warns that it wants httpx2; the tests use the pinned httpx on purpose.
    for item in items:
        if "fleet/web" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"))
