"""Micro-batching: concurrent requests share one forward pass, run on worker threads off the event loop.

A forward pass on a batch of 32 costs far less than 32 passes of one (per-op overhead is paid once, the
kernels see more work), and a fixed number of worker threads keeps the cores from being oversubscribed
by many requests each starting its own intra-op threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from imgclf.inference.settings import DEFAULTS

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.batches, 2) if self.batches else 0.0}


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Collects submitted items into batches of at most `max_batch_size` and runs `run_batch` on them
    on `workers` threads (one by default: batches run one after another).

    A batch leaves as soon as it is full, or when its oldest item has waited `max_wait_ms` (measured from
    its arrival, so under load, when items queue behind a running batch, nobody waits twice). `run_batch`
    gets a list and must return one result per item in order; if it raises, every item of that batch
    gets the exception.
    """

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R]], max_batch_size: int = DEFAULTS.max_batch_size,
                 max_wait_ms: float = DEFAULTS.max_wait_ms, workers: int = 1,
                 thread_name: str = "imgclf-inference") -> None:
        if max_batch_size < 1 or workers < 1:
            raise ValueError("max_batch_size and workers must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self.run_batch, self.max_batch_size, self.max_wait = run_batch, max_batch_size, max_wait_ms / 1000.0
        self.workers = workers
        self.stats = BatchStats()
        self._thread_name = thread_name
        self._queue: asyncio.Queue[_Pending[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind to the running loop (call from it, e.g. in the app's lifespan)."""
        if self._task is not None:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self._thread_name)
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="imgclf-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: T) -> R:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Queue items together (so they tend to share a batch) and wait for all their results."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            self._queue.put_nowait(_Pending(item, future, now))
            futures.append(future)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()  # not yet run: the collector skips it
            raise

    async def _collect(self) -> None:
        assert self._queue is not None
        slots = asyncio.Semaphore(self.workers)
        while True:
            await slots.acquire()  # gather the next batch only once a worker can take it
            try:
                live = await self._next_batch()
            except BaseException:
                slots.release()
                raise
            if not live:
                slots.release()
                continue
            self.stats.record(len(live))
            task = asyncio.get_running_loop().create_task(self._dispatch(live))
            self._running.add(task)
            task.add_done_callback(lambda t: (self._running.discard(t), slots.release()))

    async def _next_batch(self) -> list[_Pending[T, R]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = batch[0].enqueued + self.max_wait
        while len(batch) < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
        return [p for p in batch if not p.future.done()]

    async def _dispatch(self, live: list[_Pending[T, R]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._run, [p.item for p in live])
        except Exception as exc:  # noqa: BLE001 - delivered to each waiting request instead
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, result in zip(live, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)

    def _run(self, items: list[T]) -> list[R]:
        results = list(self.run_batch(items))
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        return results
