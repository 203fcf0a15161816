"""The generated secure broker config against a real mosquitto: mTLS identities and per-device ACLs.

mosquitto silently drops an unauthorised PUBLISH (MQTT v5 answers PUBACK reason 135), so every
"cannot" is asserted on what the *fleet identity* does or does not receive, with short bounded waits,
and each negative check is paired with a positive control sent afterwards on the same path.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from zerotrust_helpers import Identity, connect, save_identity

from fleet.security.broker_config import apply_revocation, reload_broker
from fleet.security.pki import FleetPKI

pytestmark = pytest.mark.integration

NOT_AUTHORISED = 135
ACCEPTED = {0, 16}  # v5 PUBACK: success, or success with no matching subscribers


NO_CERT = "peer did not return a certificate"
VERIFY_FAILED = "certificate verify failed"


def _refused_by_tls(broker, ident: Identity, client_id: str, reason: str) -> None:
    """Connect must fail, and the broker's log must name ``reason`` for it (not a timeout or ACL)."""
    before = broker.log_text().count(reason)
    result = connect(broker, ident, client_id)
    if not isinstance(result, str):
        result.close()
        raise AssertionError(f"{client_id} connected; expected a TLS refusal ({reason})")
    deadline = time.monotonic() + 3
    while broker.log_text().count(reason) <= before:
        assert time.monotonic() < deadline, f"broker log does not show {reason!r}: {broker.log_text()[-800:]}"
        time.sleep(0.05)


def _device(pki: FleetPKI, device_id: str, tmp_path, **kw) -> Identity:
    return save_identity(pki.issue_device(device_id, **kw), tmp_path / "ids" / device_id, pki.ca_cert_path)


def _fleet(pki: FleetPKI) -> Identity:
    return Identity(cert=pki.fleet_cert_path, key=pki.fleet_key_path, ca=pki.ca_cert_path)


@pytest.fixture
def fleet_session(secure_broker, pki):
    s = connect(secure_broker, _fleet(pki), "edgekit-fleet-ingest-1")
    assert not isinstance(s, str), s
    for kind in ("telemetry", "events", "status", "reported"):
        assert s.subscribe(f"$share/edgekit-fleet/edgekit/v1/+/{kind}")[0].value < 128
    yield s
    s.close()


def test_device_publishes_its_own_telemetry_and_the_fleet_receives_it(secure_broker, pki, fleet_session, tmp_path):
    dev = connect(secure_broker, _device(pki, "cam-1", tmp_path), "cam-1")
    assert not isinstance(dev, str), dev
    for kind in ("telemetry", "events", "status", "reported"):
        assert dev.publish(f"edgekit/v1/cam-1/{kind}", f"own-{kind}".encode()) in ACCEPTED
    expected = {("edgekit/v1/cam-1/" + k, f"own-{k}".encode()) for k in ("telemetry", "events", "status", "reported")}
    assert fleet_session.wait_for(lambda got: expected <= set(got)), fleet_session.received
    dev.close()


def test_device_cannot_publish_to_another_devices_topics(secure_broker, pki, fleet_session, tmp_path):
    dev = connect(secure_broker, _device(pki, "cam-1", tmp_path), "cam-1")
    assert not isinstance(dev, str), dev
    for kind in ("telemetry", "events", "status", "reported"):
        assert dev.publish(f"edgekit/v1/cam-2/{kind}", b"forged") == NOT_AUTHORISED
    # nor outside the namespace, nor through a wildcard-looking id
    assert dev.publish("edgekit/v1/cam-1/desired", b"self-desired") == NOT_AUTHORISED
    assert dev.publish("elsewhere/topic", b"forged") == NOT_AUTHORISED
    # positive control, sent last: once it arrived, anything forged would have arrived before it
    assert dev.publish("edgekit/v1/cam-1/telemetry", b"control") in ACCEPTED
    assert fleet_session.wait_for(lambda got: ("edgekit/v1/cam-1/telemetry", b"control") in got)
    assert b"forged" not in fleet_session.payloads()
    assert all(t.startswith("edgekit/v1/cam-1/") for t, _ in fleet_session.received)
    dev.close()


def test_device_cannot_read_another_devices_desired_nor_write_any_desired(secure_broker, pki, tmp_path):
    cam1 = connect(secure_broker, _device(pki, "cam-1", tmp_path), "cam-1")
    cam2 = connect(secure_broker, _device(pki, "cam-2", tmp_path), "cam-2")
    fleet = connect(secure_broker, _fleet(pki), "edgekit-fleet-rollouts")
    for s in (cam1, cam2, fleet):
        assert not isinstance(s, str), s
    # a retained desired state for cam-2 exists before cam-1 tries to read it
    assert fleet.publish("edgekit/v1/cam-2/desired", b"retained-for-cam-2", retain=True) in ACCEPTED
    # mosquitto 2.0 may grant the SUBACK, but checks read access on every delivery (retained too)
    cam1.subscribe("edgekit/v1/cam-2/desired")
    cam1.subscribe("edgekit/v1/+/desired")
    cam1.subscribe("edgekit/v1/cam-1/desired")
    cam2.subscribe("edgekit/v1/cam-2/desired")
    assert cam2.wait_for(lambda got: ("edgekit/v1/cam-2/desired", b"retained-for-cam-2") in got)
    # devices cannot write desired state, neither another's nor their own
    assert cam1.publish("edgekit/v1/cam-2/desired", b"evil-desired", retain=True) == NOT_AUTHORISED
    assert cam2.publish("edgekit/v1/cam-2/desired", b"self-desired", retain=True) == NOT_AUTHORISED
    # the fleet writes desired state; each device gets only its own (sent last: the positive control)
    assert fleet.publish("edgekit/v1/cam-2/desired", b"for-cam-2", retain=True) in ACCEPTED
    assert fleet.publish("edgekit/v1/cam-1/desired", b"for-cam-1", retain=True) in ACCEPTED
    assert cam2.wait_for(lambda got: ("edgekit/v1/cam-2/desired", b"for-cam-2") in got)
    assert cam1.wait_for(lambda got: ("edgekit/v1/cam-1/desired", b"for-cam-1") in got)
    assert set(cam1.payloads()) == {b"for-cam-1"}, cam1.received
    assert cam2.payloads() == [b"retained-for-cam-2", b"for-cam-2"], cam2.received  # no forged write arrived
    for s in (cam1, cam2, fleet):
        s.close()


def test_devices_cannot_read_other_devices_telemetry(secure_broker, pki, tmp_path):
    cam1 = connect(secure_broker, _device(pki, "cam-1", tmp_path), "cam-1")
    cam2 = connect(secure_broker, _device(pki, "cam-2", tmp_path), "cam-2")
    cam1.subscribe("edgekit/v1/#")
    cam1.subscribe("$share/g/edgekit/v1/+/telemetry")
    assert cam2.publish("edgekit/v1/cam-2/telemetry", b"private") in ACCEPTED
    assert not cam1.wait_for(lambda got: bool(got), timeout=0.5)
    cam1.close()
    cam2.close()


def test_client_without_certificate_is_refused(secure_broker, pki):
    _refused_by_tls(secure_broker, Identity(cert=None, key=None, ca=pki.ca_cert_path), "anon", NO_CERT)


def test_certificate_from_another_ca_is_refused(secure_broker, pki, tmp_path):
    rogue = FleetPKI.init(tmp_path / "rogue-pki")
    # same device id, same CN format, but signed by a CA the broker does not trust
    ident = save_identity(rogue.issue_device("cam-1"), tmp_path / "rogue", pki.ca_cert_path)
    _refused_by_tls(secure_broker, ident, "cam-1", VERIFY_FAILED)
    # and the rogue CA's *fleet* identity does not get the fleet's rights either
    rogue_fleet = Identity(cert=rogue.fleet_cert_path, key=rogue.fleet_key_path, ca=pki.ca_cert_path)
    _refused_by_tls(secure_broker, rogue_fleet, "fleet", VERIFY_FAILED)


def test_expired_certificate_is_refused(secure_broker, pki, tmp_path):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    ident = _device(pki, "old-cam", tmp_path, valid_from=past, valid_for=dt.timedelta(days=1))
    _refused_by_tls(secure_broker, ident, "old-cam", VERIFY_FAILED)


def test_not_yet_valid_certificate_is_refused(secure_broker, pki, tmp_path):
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    ident = _device(pki, "early-cam", tmp_path, valid_from=future, valid_for=dt.timedelta(days=30))
    _refused_by_tls(secure_broker, ident, "early-cam", VERIFY_FAILED)


def test_revoked_device_is_cut_off_without_restarting_the_broker(secure_broker, pki, fleet_session, tmp_path):
    bad = _device(pki, "cam-bad", tmp_path)
    good = _device(pki, "cam-good", tmp_path)
    live_bad = connect(secure_broker, bad, "cam-bad")
    live_good = connect(secure_broker, good, "cam-good")
    assert not isinstance(live_bad, str) and not isinstance(live_good, str)
    assert live_bad.publish("edgekit/v1/cam-bad/telemetry", b"before") in ACCEPTED
    live_bad.subscribe("edgekit/v1/cam-bad/desired")  # a subscription made while still trusted
    live_good.subscribe("edgekit/v1/cam-good/desired")
    assert fleet_session.wait_for(lambda got: ("edgekit/v1/cam-bad/telemetry", b"before") in got)
    pid = secure_broker.pid

    assert pki.revoke("cam-bad")
    # mosquitto 2.0 reads the CRL file only at start and on SIGHUP: until the reload, it still connects
    early = connect(secure_broker, bad, "cam-bad-early")
    assert not isinstance(early, str), "CRL picked up without a reload: revisit broker_config's docstring"
    early.close()
    assert apply_revocation(pki, secure_broker.files) is True  # pid read from the broker's pid file
    assert secure_broker.running and secure_broker.pid == pid  # same process: no restart

    # new connections with the revoked certificate fail the TLS handshake (CRL re-read on SIGHUP)
    def refused() -> bool:
        r = connect(secure_broker, bad, "cam-bad-2")
        if isinstance(r, str):
            return True
        r.close()
        return False

    deadline = time.monotonic() + 3  # the broker handles SIGHUP in its main loop: poll briefly
    while not refused():
        assert time.monotonic() < deadline, "revoked certificate still connects after reload"
        time.sleep(0.1)
    assert VERIFY_FAILED in secure_broker.log_text()
    # the session that was already open is cut off from every topic by the reloaded ACL
    assert live_bad.publish("edgekit/v1/cam-bad/telemetry", b"after") == NOT_AUTHORISED
    assert fleet_session.publish("edgekit/v1/cam-bad/desired", b"to-revoked", retain=True) in ACCEPTED
    assert fleet_session.publish("edgekit/v1/cam-good/desired", b"to-good", retain=True) in ACCEPTED
    assert live_good.wait_for(lambda got: ("edgekit/v1/cam-good/desired", b"to-good") in got)
    assert b"to-revoked" not in live_bad.payloads()  # its earlier subscription no longer delivers
    # other devices were not disconnected by the reload and keep working
    assert not live_good.disconnected.is_set()
    assert live_good.publish("edgekit/v1/cam-good/telemetry", b"still-here") in ACCEPTED
    assert fleet_session.wait_for(lambda got: ("edgekit/v1/cam-good/telemetry", b"still-here") in got)
    assert b"after" not in fleet_session.payloads()
    # the fleet session itself survived the reload
    assert not fleet_session.disconnected.is_set()
    live_bad.close()
    live_good.close()


def test_revoked_device_stays_refused_after_a_broker_restart(secure_broker, pki, tmp_path):
    bad = _device(pki, "cam-bad", tmp_path)
    pki.revoke("cam-bad")
    apply_revocation(pki, secure_broker.files, pid=None)
    secure_broker.stop()
    secure_broker.start()
    _refused_by_tls(secure_broker, bad, "cam-bad", VERIFY_FAILED)
    other = connect(secure_broker, _device(pki, "cam-ok", tmp_path), "cam-ok")
    assert not isinstance(other, str), other
    other.close()


def test_renewed_certificate_works_while_the_old_one_is_still_valid(secure_broker, pki, fleet_session, tmp_path):
    old = _device(pki, "cam-r", tmp_path)
    new = save_identity(pki.issue_device("cam-r", renew=True), tmp_path / "ids" / "cam-r-new", pki.ca_cert_path)
    assert new.cert != old.cert
    # overlap: both certificates are accepted, as the same identity with the same rights
    for n, ident in enumerate((old, new)):
        s = connect(secure_broker, ident, f"cam-r-{n}")
        assert not isinstance(s, str), s
        assert s.publish("edgekit/v1/cam-r/telemetry", f"via-{n}".encode()) in ACCEPTED
        assert s.publish("edgekit/v1/cam-x/telemetry", b"forged") == NOT_AUTHORISED
        s.close()
    assert fleet_session.wait_for(
        lambda got: {("edgekit/v1/cam-r/telemetry", b"via-0"), ("edgekit/v1/cam-r/telemetry", b"via-1")} <= set(got)
    )
    assert len(pki.active("cam-r")) == 2


def test_renewed_server_certificate_is_served_after_reload(secure_broker, pki, tmp_path):
    from cryptography import x509

    before = pki.server_cert_path.read_bytes()
    pki.issue_server(["broker.example.internal"])
    renewed = x509.load_pem_x509_certificate(pki.server_cert_path.read_bytes())
    assert renewed.serial_number != x509.load_pem_x509_certificate(before).serial_number
    ident = _device(pki, "cam-s", tmp_path)

    def served_serial() -> int:
        s = connect(secure_broker, ident, "cam-s")
        assert not isinstance(s, str), s
        der = s.client.socket().getpeercert(binary_form=True)
        s.close()
        return x509.load_der_x509_certificate(der).serial_number

    assert served_serial() != renewed.serial_number  # not picked up before the reload
    reload_broker(secure_broker.pid)
    # the broker handles the signal in its main loop: poll briefly
    deadline = time.monotonic() + 3
    while served_serial() != renewed.serial_number:
        assert time.monotonic() < deadline, "renewed server certificate not served after SIGHUP"
        time.sleep(0.1)


def test_fleet_clients_connect_with_apply_fleet_tls(secure_broker, pki, tmp_path):
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from fleet.security.client_tls import apply_fleet_tls

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="edgekit-fleet-ingest-x")
    apply_fleet_tls(client, pki)
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("$share/edgekit-fleet/edgekit/v1/+/events", qos=1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    client.on_message = lambda c, u, m: (got.append(m.payload), received.set())
    client.connect("localhost", secure_broker.port)  # host name checked against the broker certificate
    client.loop_start()
    try:
        assert subscribed.wait(3)
        dev = connect(secure_broker, _device(pki, "cam-f", tmp_path), "cam-f")
        assert dev.publish("edgekit/v1/cam-f/events", b"evt") in ACCEPTED
        assert received.wait(3) and got == [b"evt"]
        dev.close()
    finally:
        client.disconnect()
        client.loop_stop()


def test_apply_fleet_tls_without_identity_files_is_a_config_error(pki):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgekit.errors import ConfigError
    from fleet.security.client_tls import apply_fleet_tls

    pki.fleet_key_path.unlink()
    with pytest.raises(ConfigError, match="fleet ca init"):
        apply_fleet_tls(mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2), pki)


def test_pinned_client_ids_stop_a_device_from_kicking_another_offline(pinned_broker, pki, tmp_path):
    from types import SimpleNamespace

    victim = connect(pinned_broker, _device(pki, "cam-v", tmp_path), "cam-v")
    assert not isinstance(victim, str), victim
    # a device with a valid certificate of its own claims the victim's client id
    attacker = connect(pinned_broker, _device(pki, "cam-evil", tmp_path), "cam-v")
    assert not isinstance(attacker, str), attacker
    assert not victim.disconnected.wait(0.5), "the victim was disconnected by a client-id takeover"
    assert victim.publish("edgekit/v1/cam-v/telemetry", b"alive") in ACCEPTED
    # the fleet's clients share one identity: on their own listener their distinct ids coexist
    fleet_ep = SimpleNamespace(host="127.0.0.1", port=pinned_broker.fleet_port)
    f1 = connect(fleet_ep, _fleet(pki), "edgekit-fleet-ingest")
    f2 = connect(fleet_ep, _fleet(pki), "edgekit-fleet-desired")
    assert not isinstance(f1, str) and not isinstance(f2, str)
    f1.subscribe("edgekit/v1/+/telemetry")
    assert victim.publish("edgekit/v1/cam-v/telemetry", b"seen") in ACCEPTED
    assert f1.wait_for(lambda got: ("edgekit/v1/cam-v/telemetry", b"seen") in got)
    assert not f1.disconnected.is_set() and not f2.disconnected.is_set()
    for s in (victim, attacker, f1, f2):
        s.close()


def test_without_pinning_a_client_id_takeover_disconnects_the_victim(secure_broker, pki, tmp_path):
    """Why the fleet listener exists: on a single shared listener, ids are not tied to identities."""
    victim = connect(secure_broker, _device(pki, "cam-v", tmp_path), "cam-v")
    attacker = connect(secure_broker, _device(pki, "cam-evil", tmp_path), "cam-v")
    assert not isinstance(victim, str) and not isinstance(attacker, str)
    assert victim.disconnected.wait(2)
    attacker.close()
    victim.client.loop_stop()


def test_fleet_listener_needs_its_own_port(pki, tmp_path):
    from edgekit.errors import ConfigError
    from fleet.security.broker_config import write_secure_broker

    with pytest.raises(ConfigError, match="port of its own"):
        write_secure_broker(pki, tmp_path / "b", port=8883, fleet_port=8883)


def _die_with_will(broker, ident: Identity, client_id: str, will_topic: str, will: bytes) -> None:
    """Connect with a last will, then drop the TCP link without DISCONNECT so the broker fires the will."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(ident.ca), certfile=str(ident.cert), keyfile=str(ident.key))
    c.will_set(will_topic, will, qos=1, retain=False)
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: connected.set()
    try:
        c.connect(broker.host, broker.port)
        c.loop_start()
        connected.wait(3)
    except OSError:
        pass  # refused outright would be fine too
    finally:
        c.loop_stop()
        sock = c.socket()
        if sock:
            sock.close()


def test_a_device_cannot_plant_its_last_will_on_another_devices_topic(secure_broker, pki, fleet_session, tmp_path):
    _die_with_will(secure_broker, _device(pki, "cam-w", tmp_path), "cam-w", "edgekit/v1/cam-victim/status",
                   b"forged-will")
    # positive control: the same kind of death on its own topic does deliver the will
    _die_with_will(secure_broker, _device(pki, "cam-w2", tmp_path), "cam-w2", "edgekit/v1/cam-w2/status",
                   b"own-will")
    assert fleet_session.wait_for(lambda got: ("edgekit/v1/cam-w2/status", b"own-will") in got, timeout=3)
    assert b"forged-will" not in fleet_session.payloads()


def test_devices_get_nothing_from_sys_topics(secure_broker, pki, tmp_path):
    dev = connect(secure_broker, _device(pki, "cam-sys", tmp_path), "cam-sys")
    dev.subscribe("$SYS/#")
    assert not dev.wait_for(lambda got: bool(got), timeout=0.5)
    dev.close()


def test_production_style_config_with_persistence_starts_and_keeps_retained_desired(pki, tmp_path):
    """The broker ``fleet up`` would run (persistence + fleet listener) keeps retained state over a restart."""
    from zerotrust_helpers import MOSQUITTO, SecureMosquitto

    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    from types import SimpleNamespace

    broker = SecureMosquitto(pki, tmp_path / "broker", fleet_listener=True, persistence=True).start()
    try:
        host, port = broker.fleet_address
        fleet_ep = SimpleNamespace(host=host, port=port)
        fleet = connect(fleet_ep, _fleet(pki), "edgekit-fleet-desired")
        assert fleet.publish("edgekit/v1/cam-p/desired", b"v2", retain=True) in ACCEPTED
        fleet.close()
        broker.stop()  # SIGTERM: mosquitto saves its persistence file
        broker.start()
        dev = connect(broker, _device(pki, "cam-p", tmp_path), "cam-p")
        assert not isinstance(dev, str), dev
        dev.subscribe("edgekit/v1/cam-p/desired")
        assert dev.wait_for(lambda got: ("edgekit/v1/cam-p/desired", b"v2") in got)
        dev.close()
    finally:
        broker.stop()


def test_plain_trial_config_is_loudly_labelled():
    from fleet.security.broker_config import INSECURE_BANNER, render_plain_config

    text = render_plain_config(1883)
    assert text.startswith("# !!! INSECURE BROKER")
    assert "allow_anonymous true" in text and "trials only" in INSECURE_BANNER
    assert "listener 1883 127.0.0.1" in text  # loopback unless asked otherwise


def test_secure_broker_revoke_cuts_off_a_device_on_the_pinned_listener(pinned_broker, pki, tmp_path):
    ident = _device(pki, "cam-z", tmp_path)
    s = connect(pinned_broker, ident, "cam-z")
    assert not isinstance(s, str), s
    s.close()
    assert pinned_broker.revoke("cam-z")
    _refused_by_tls(pinned_broker, ident, "cam-z", VERIFY_FAILED)
    assert pinned_broker.running


def test_secure_broker_start_failure_is_a_fleet_error(pki, tmp_path):
    import socket

    from zerotrust_helpers import MOSQUITTO, SecureMosquitto

    from edgekit.errors import FleetError

    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto)")
    broker = SecureMosquitto(pki, tmp_path / "broker")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", broker.port))
        squatter.listen()
        # our squatter would answer TCP on the port: start() must refuse instead of reporting success
        with pytest.raises(FleetError, match="already in use"):
            broker.start(timeout=5)
    assert not broker.running


def test_reinstated_device_gets_in_with_a_new_certificate_only(secure_broker, pki, fleet_session, tmp_path):
    """CRL and deny-list are separate layers: reinstating lifts the ACL deny, never the old serials."""
    old = _device(pki, "cam-back", tmp_path)
    secure_broker.revoke("cam-back")
    pki.reinstate("cam-back")
    new = save_identity(pki.issue_device("cam-back"), tmp_path / "ids" / "cam-back-new", pki.ca_cert_path)
    from fleet.security.broker_config import write_acl

    write_acl(pki, secure_broker.files)  # what `edgekit fleet reinstate` does, then the reload
    secure_broker.reload()
    _refused_by_tls(secure_broker, old, "cam-back", VERIFY_FAILED)
    s = connect(secure_broker, new, "cam-back")
    assert not isinstance(s, str), s
    assert s.publish("edgekit/v1/cam-back/telemetry", b"back") in ACCEPTED
    assert fleet_session.wait_for(lambda got: ("edgekit/v1/cam-back/telemetry", b"back") in got)
    s.close()
