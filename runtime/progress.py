"""Progress of long work on stderr: a tqdm bar on a terminal; elsewhere (a pipe, a log file, CI) one
line when the work starts and one when it ends, so that the last line of a failed command's stderr
is still its error."""

import sys
import threading
import time

from tqdm import tqdm

TICK_SECONDS = 0.5


class Progress:
    """A context manager that shows the progress of one long task.

    Parameters
    ----------
    description : str
        What is being done, e.g. ``"lowering GEMM 1024x1024x1024 for 'small'"``.
    unit : str
        Unit of the work counted with :meth:`update`.
    estimate : float, optional
        Seconds the task is expected to take, for work that cannot count its steps (a Verilator
        build): the bar then runs against the clock. Without it and without :meth:`update` calls,
        the bar shows the time elapsed.
    stream : file, optional
        Default ``sys.stderr``.

    Examples
    --------
    >>> with Progress("counting", stream=open("/dev/null", "w")) as progress:
    ...     for i in range(10):
    ...         progress.update(i + 1, 10)
    """

    def __init__(self, description, *, unit="it", estimate=None, stream=None):
        self.description, self.unit, self.estimate = description, unit, estimate
        self.stream = stream or sys.stderr
        self._bar = self._ticker = None
        self._stop = threading.Event()

    def __enter__(self):
        self._start = time.perf_counter()
        if not self.stream.isatty():
            about = f" (about {self.estimate:.0f} s)" if self.estimate else ""
            print(f"{self.description}{about} ...", file=self.stream, flush=True)
            return self
        clocked = f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| {{elapsed}} of about {self.estimate:.0f} s" \
            if self.estimate else None
        self._bar = tqdm(desc=self.description, total=self.estimate, unit=self.unit, unit_scale=True, file=self.stream,
                         leave=False, dynamic_ncols=True, bar_format=clocked or "{desc}: {elapsed}")
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()
        return self

    def _tick(self):
        while not self._stop.wait(TICK_SECONDS):
            bar = self._bar
            if self.estimate is not None:
                bar.update(min(time.perf_counter() - self._start, 0.99 * self.estimate) - bar.n)
            else:
                bar.refresh()

    def update(self, done, total):
        """``done`` of ``total`` units of work are finished (ignored by a bar against the clock)."""
        bar = self._bar
        if bar is None or self.estimate is not None:
            return
        if bar.total != total:
            bar.total, bar.bar_format = total, None
        bar.update(done - bar.n)

    @property
    def seconds(self):
        """Seconds since the task started."""
        return time.perf_counter() - self._start

    def __exit__(self, kind, value, traceback):
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()
        if kind is None:
            print(f"{self.description}: done in {self.seconds:.1f} s", file=self.stream, flush=True)
        return False
