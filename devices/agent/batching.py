"""Dynamic batching: requests from concurrent clients merged along the batch axis, run once, split back.

A worker thread takes the first waiting request, then keeps collecting for up to ``max_delay_ms`` or
until ``max_batch`` rows are gathered. Requests whose non-batch dimensions and dtypes agree are
concatenated and run together; the outputs are sliced back per request. If a merged run fails, each
request of it is retried alone so one bad request never fails its neighbours.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import AgentError

__all__ = ["DynamicBatcher", "RunFn"]

log = logging.getLogger(__name__)

#: runs the model on merged feeds; returns (an opaque tag for the model that answered, outputs)
RunFn = Callable[[Mapping[str, np.ndarray]], tuple[object, dict[str, np.ndarray]]]


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple
    future: Future = field(default_factory=Future)


def _key(feeds: Mapping[str, np.ndarray]) -> tuple:
    return tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items()))


class DynamicBatcher:
    """Thread-based batcher in front of a :data:`RunFn`; ``submit`` returns a ``Future``."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self._on_batch = on_batch
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.batches = 0

    @property
    def depth(self) -> int:
        return self._q.qsize()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> DynamicBatcher:
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name="edgekit-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Fail whatever is still waiting rather than leaving callers hanging.
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not None and not item.future.done():
                item.future.set_exception(AgentError("the agent is shutting down"))

    def submit(self, feeds: Mapping[str, np.ndarray]) -> Future:
        if self._stopped.is_set():
            raise AgentError("the batcher is stopped")
        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        rows = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        item = _Item(arrays, rows.pop() if len(rows) == 1 else -1, _key(arrays))
        if item.rows < 1:  # scalar or inconsistent leading dims: cannot be merged; run alone
            item.key = ("alone", id(item))
        self._q.put(item)
        return item.future

    def _loop(self) -> None:
        while not self._stopped.is_set():
            first = self._q.get()
            if first is None:
                return
            pending = [first]
            rows = max(first.rows, 1)
            deadline = time.monotonic() + self.max_delay_s
            while rows < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    item = self._q.get(timeout=wait) if wait > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stopped.set()
                    break
                pending.append(item)
                rows += max(item.rows, 1)
            # Claim each future before running it: one cancelled by its caller in the meantime is
            # dropped here, and a claimed one can no longer be cancelled under our feet.
            live = [it for it in pending if it.future.set_running_or_notify_cancel()]
            for group in self._groups(live):
                try:
                    self._execute(group)
                except Exception as exc:  # noqa: BLE001 - the batcher thread must outlive any one batch
                    log.exception("batch of %d request(s) failed unexpectedly; the batcher keeps running", len(group))
                    for it in group:
                        if not it.future.done():
                            it.future.set_exception(AgentError(f"batch failed: {exc}"))

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        groups: dict[tuple, list[list[_Item]]] = {}
        for it in items:
            chunks = groups.setdefault(it.key, [[]])
            if chunks[-1] and sum(i.rows for i in chunks[-1]) + it.rows > self.max_batch:
                chunks.append([])
            chunks[-1].append(it)
        return [c for chunks in groups.values() for c in chunks]

    def _execute(self, group: list[_Item]) -> None:
        self.batches += 1
        if len(group) == 1:
            self._run_one(group[0])
            return
        names = list(group[0].feeds)
        merged = {n: np.concatenate([it.feeds[n] for it in group], axis=0) for n in names}
        total = sum(it.rows for it in group)
        try:
            tag, outputs = self._run(merged)
            if any(o.ndim == 0 or o.shape[0] != total for o in outputs.values()):
                raise AgentError("model outputs have no batch axis matching the inputs")
        except Exception:  # noqa: BLE001 - fall back to one run per request; each reports its own error
            for it in group:
                self._run_one(it)
            return
        if self._on_batch:
            self._on_batch(total)
        start = 0
        for it in group:
            end = start + it.rows
            it.future.set_result((tag, {k: v[start:end] for k, v in outputs.items()}))
            start = end

    def _run_one(self, it: _Item) -> None:
        try:
            result = self._run(it.feeds)
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller through the future
            it.future.set_exception(exc)
            return
        if self._on_batch:
            self._on_batch(max(it.rows, 1))
        it.future.set_result(result)
