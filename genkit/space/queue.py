"""What a request costs (measured per model call, re-measured as the server runs) and the lanes it waits in.

A request is admitted when its predicted wait in its lane plus its own predicted time fit the limits; it then waits for its
turn (its position and the predicted wait are reported as progress), and is refused only when the wait would pass the deadline.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .limits import Settings, refuse


class RunningMedian:
    """The median of the last `window` measurements: one slow or fast sample (a start-up hiccup) moves it little."""

    def __init__(self, window: int = 15):
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        """One more measurement (non-finite or negative ones are dropped)."""
        if value >= 0 and value == value and value != float("inf"):
            with self._lock:
                self._values.append(float(value))

    @property
    def value(self) -> float | None:
        """The current median, None before any measurement."""
        with self._lock:
            return statistics.median(self._values) if self._values else None

    @property
    def low(self) -> float | None:
        """The smallest recent measurement: for timings, the one least slowed by whatever else ran at the time."""
        with self._lock:
            return min(self._values) if self._values else None

    def __len__(self) -> int:
        return len(self._values)


class CallCost:
    """Seconds of one model call on a batch of b images, t(b) = overhead + b * per_image, from the fastest recent timings at two
    batch sizes (taken at load and again while the server is idle: a start-up hiccup only slows a timing down), corrected by a
    running median of actual / predicted times of the requests served (which the machine's load does slow down)."""

    def __init__(self, sizes: tuple[int, int] = (1, 8)):
        self.sizes, self.small, self.large = sizes, RunningMedian(), RunningMedian()
        self.correction = RunningMedian()

    @classmethod
    def fit(cls, small: tuple[int, float], large: tuple[int, float]) -> "CallCost":
        """From the time of a batch of b1 and of b2 images."""
        cost = cls((small[0], large[0]))
        cost.add(small[1], large[1])
        return cost

    @classmethod
    def linear(cls, overhead: float, per_image: float) -> "CallCost":
        """A cost known in advance: `overhead` + b * `per_image` seconds."""
        return cls.fit((1, overhead + per_image), (9, overhead + 9 * per_image))

    def add(self, small: float, large: float) -> None:
        """One more pair of timings at the two batch sizes."""
        self.small.add(small)
        self.large.add(large)

    @property
    def per_image(self) -> float:
        """Seconds per image of one call (the slope)."""
        (b1, b2), t1, t2 = self.sizes, self.small.low or 0.0, self.large.low or 0.0
        return max((t2 - t1) / max(b2 - b1, 1), t2 / b2 / 4, 1e-7)  # noise can make the slope tiny: never below a quarter of the average

    @property
    def overhead(self) -> float:
        """Seconds of one call whatever its batch."""
        return max(0.0, (self.small.low or 0.0) - self.sizes[0] * self.per_image)

    def batch(self, images: int) -> float:
        """Predicted seconds of one call on `images` images."""
        return (self.overhead + images * self.per_image) * (self.correction.value or 1.0)

    def chunk(self, images: int, call_seconds: float | None, max_batch: int | None = None) -> int:
        """How many images one call may take so that it stays within `call_seconds` (and `max_batch`, which bounds its memory)."""
        size = images if max_batch is None else min(images, max_batch)
        if call_seconds is None:
            return max(1, size)
        fits = (call_seconds / (self.correction.value or 1.0) - self.overhead) / self.per_image
        return max(1, min(size, int(fits)))

    def calls(self, images: int, calls_per_image: float, call_seconds: float | None, max_batch: int | None = None) -> float:
        """Predicted seconds of `calls_per_image` calls over `images` images, in chunks bounded by `call_seconds` and `max_batch`."""
        size = self.chunk(images, call_seconds, max_batch)
        full, rest = divmod(images, size)
        return calls_per_image * (full * self.batch(size) + (self.batch(rest) if rest else 0.0))

    def observe(self, predicted: float, actual: float) -> None:
        """Feed back one request's actual time against what the uncorrected model predicted."""
        if predicted > 0:
            base = predicted / (self.correction.value or 1.0)
            self.correction.add(min(max(actual / base, 0.05), 20.0))


class Lane:
    """Requests run `workers` at a time, in order; at most `max_waiting` wait, and only while their predicted wait fits."""

    def __init__(self, name: str, workers: int, max_waiting: int, max_wait_seconds: float | None, clock: Callable[[], float] = time.monotonic):
        self.name, self.workers, self.max_waiting, self.max_wait, self.clock = name, workers, max_waiting, max_wait_seconds, clock
        self._cond = threading.Condition()
        self._waiting: deque[list] = deque()  # [predicted seconds]
        self._running: dict[int, tuple[float, float]] = {}  # id -> (predicted seconds, start time)

    def predicted_wait(self, before: int | None = None) -> float:
        """Seconds until a worker is free for the request at position `before` in the waiting line (None: a new request)."""
        with self._cond:
            now = self.clock()
            busy = [max(0.0, p - (now - start)) for p, start in self._running.values()]
            ahead = list(self._waiting)[: len(self._waiting) if before is None else before]
            return (sum(busy) + sum(t[0] for t in ahead)) / self.workers

    @contextmanager
    def hold(self, predicted: float, report: Callable[[int, float], None] | None = None) -> Iterator[None]:
        """Wait for a turn (reporting position and predicted wait), run, then free the worker; refuse when the wait cannot fit."""
        ticket = [predicted]
        with self._cond:
            wait = self.predicted_wait()
            if len(self._waiting) >= self.max_waiting and len(self._running) >= self.workers:
                raise refuse(f"This Space's {self.name} queue is full ({len(self._waiting)} waiting): try again in a minute.")
            if self.max_wait is not None and wait > self.max_wait:
                raise refuse(f"This Space is busy: the wait would be about {wait:.0f} s, over its limit of {self.max_wait:.0f} s. "
                             "Try again in a minute, or ask for fewer images or steps.")
            self._waiting.append(ticket)
        try:
            with self._cond:
                while not (self._waiting[0] is ticket and len(self._running) < self.workers):
                    if report is not None:
                        position = next(i for i, t in enumerate(self._waiting) if t is ticket)
                        report(position + 1, self.predicted_wait(position))
                    self._cond.wait(timeout=1.0)
                self._waiting.popleft()
                self._running[id(ticket)] = (predicted, self.clock())
                self._cond.notify_all()
        except BaseException:  # a visitor who left while waiting: out of the line
            with self._cond:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                self._cond.notify_all()
            raise
        try:
            yield
        finally:
            with self._cond:
                self._running.pop(id(ticket), None)
                self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        with self._cond:
            return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests running now."""
        with self._cond:
            return len(self._running)


def release_memory() -> None:
    """Hand the memory a request freed back to the system (glibc keeps freed blocks in its arenas otherwise): a large request
    then leaves the server's resident size where it was."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
        except OSError:  # not glibc: nothing to trim
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc = None


class Budget:
    """The quick and slow lanes and the per-request limits of `settings` (no limits in local mode)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        s = settings
        self.quick = Lane("quick", s.workers, s.max_queue, s.max_wait_seconds)
        self.slow = Lane("slow", s.workers, s.max_queue, s.max_wait_seconds)
        self.latent = Lane("latent", 2, s.max_queue, s.max_wait_seconds)

    def check_steps(self, images: int, steps: int) -> None:
        """Refuse a diffusion request over the step or images-x-steps budget."""
        if not 1 <= steps <= self.settings.max_steps:
            raise refuse(f"Steps must be between 1 and {self.settings.max_steps}.")
        if self.settings.max_image_steps and images * steps > self.settings.max_image_steps:
            raise refuse(f"{images} images x {steps} steps is over this Space's budget of {self.settings.max_image_steps}: use fewer images or steps.")

    def fits(self, predicted: float | None) -> bool:
        """Whether a request predicted to take `predicted` seconds is within the per-request limit."""
        return self.settings.request_seconds is None or predicted is None or predicted <= self.settings.request_seconds

    @contextmanager
    def run(self, predicted: float | None, lane: Lane | None = None, report: Callable[[int, float], None] | None = None) -> Iterator[float | None]:
        """Refuse a request predicted to overrun, else wait in its lane (quick or slow by its prediction) and run; yields its deadline."""
        limit = self.settings.request_seconds
        if predicted is not None and limit is not None and predicted > limit:
            raise refuse(f"This request would take about {predicted:.0f} s here, over this Space's limit of {limit:.0f} s per request: "
                         "use fewer images or steps.")
        lane = lane or (self.quick if predicted is not None and predicted <= self.settings.quick_seconds else self.slow)
        with lane.hold(predicted or 0.0, report):
            try:
                yield None if limit is None else time.monotonic() + limit
            finally:
                release_memory()

    def stop_at(self, deadline: float | None) -> None:
        """Stop a request past its deadline."""
        if deadline is not None and time.monotonic() > deadline:
            raise refuse(f"Stopped after {self.settings.request_seconds:.0f} s, this Space's limit per request: use fewer images or steps.")
