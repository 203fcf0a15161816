"""Many paho-mqtt clients on one asyncio loop (paho's external-loop API), no thread per client.

``paho``'s ``loop_start`` costs a thread per client, which does not scale to a thousand simulated
devices on two cores. Instead each client's socket is registered with the asyncio loop: readable →
``loop_read``, writable while paho has bytes queued → ``loop_write`` (paho asks through its
``on_socket_register_write`` / ``on_socket_unregister_write`` callbacks), and one periodic task calls
``loop_misc`` (keep-alive pings) for every client. Every paho callback therefore runs on the loop
thread, so the simulator's state needs no locks.

Reconnecting is done by :class:`LoopedClients` itself, never by paho: one supervisor task first checks
that the broker accepts TCP connections (asynchronously, so a dead broker never blocks the loop), then
reconnects the disconnected clients in small batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import paho.mqtt.client as paho

__all__ = ["LoopedClients"]

log = logging.getLogger("edgekit.hil.mqttio")


class LoopedClients:
    """Drives a set of paho clients from the running asyncio loop."""

    def __init__(self, host: str, port: int, *, keepalive: int = 30, reconnect_batch: int = 100,
                 reconnect_min_s: float = 0.25, reconnect_max_s: float = 5.0):
        self.host, self.port, self.keepalive = host, port, keepalive
        self.reconnect_batch = reconnect_batch
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: list[paho.Client] = []
        self._down: dict[int, paho.Client] = {}  # id(client) → client waiting to (re)connect
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.connect_attempts = 0
        self.broker_unreachable_rounds = 0

    # -- registration ------------------------------------------------------------------------------
    def add(self, client: paho.Client) -> None:
        """Adopt ``client`` (not yet connected); it is connected by the supervisor."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._clients.append(client)
        self.mark_down(client)

    def mark_down(self, client: paho.Client) -> None:
        """Call from ``on_disconnect``: the supervisor will reconnect it."""
        self._down[id(client)] = client
        self._kick.set()

    def _on_socket_open(self, client, userdata, sock) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, self._read, client)

    def _on_socket_close(self, client, userdata, sock) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)

    def _on_register_write(self, client, userdata, sock) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self._write, client)

    def _on_unregister_write(self, client, userdata, sock) -> None:
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)

    @staticmethod
    def _read(client: paho.Client) -> None:
        try:
            client.loop_read()
        except Exception:  # noqa: BLE001 - a callback's error must not stop the shared loop
            log.exception("loop_read failed")

    @staticmethod
    def _write(client: paho.Client) -> None:
        try:
            client.loop_write()
        except Exception:  # noqa: BLE001
            log.exception("loop_write failed")

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._misc(), name="mqtt-misc"),
                       asyncio.create_task(self._supervise(), name="mqtt-reconnect")]

    async def stop(self, on_each: Callable[[paho.Client], None] | None = None) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for c in self._clients:
            if on_each is not None:
                on_each(c)
            with contextlib.suppress(Exception):
                c.disconnect()
                c.loop_write()
        await asyncio.sleep(0)
        for c in self._clients:
            sock = c.socket()
            if sock is not None:
                self._on_socket_close(c, None, sock)

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for c in self._clients:
                if c.socket() is not None:
                    try:
                        c.loop_misc()
                    except Exception:  # noqa: BLE001
                        log.exception("loop_misc failed")

    async def _broker_reachable(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout=2.0)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _supervise(self) -> None:
        delay = self.reconnect_min_s
        while True:
            if not self._down:
                self._kick.clear()
                await self._kick.wait()
                continue
            if not await self._broker_reachable():
                self.broker_unreachable_rounds += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            delay = self.reconnect_min_s
            batch = list(self._down.items())[: self.reconnect_batch]
            for key, c in batch:
                self._down.pop(key, None)
                self.connect_attempts += 1
                try:
                    if c._host:  # noqa: SLF001 - connected before: paho keeps host/port
                        c.reconnect()
                    else:
                        c.connect(self.host, self.port, keepalive=self.keepalive)
                except (OSError, ValueError) as exc:
                    log.debug("connect failed: %s", exc)
                    self._down[key] = c
            await asyncio.sleep(0.05)
