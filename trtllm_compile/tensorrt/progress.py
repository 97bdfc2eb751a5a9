"""Build progress: TensorRT's IProgressMonitor as one tqdm bar per engine (its top-level phase), the current
nested phase shown beside it."""

from __future__ import annotations

import threading

from tqdm.auto import tqdm

from trtllm_compile.tensorrt.trt import require_trt


def progress_monitor(description: str):
    """An IProgressMonitor drawing `description` as a bar, or None where the flavour has none."""
    trt = require_trt()
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _TqdmMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._bar: tqdm | None = None
            self._top: str | None = None
            self._lock = threading.Lock()  # TensorRT may report from several threads

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                if self._bar is None:
                    self._top = phase_name
                    self._bar = tqdm(total=num_steps, desc=description, dynamic_ncols=True)
                else:
                    self._bar.set_postfix_str(phase_name, refresh=True)

        def step_complete(self, phase_name, step):
            with self._lock:
                if self._bar is not None and phase_name == self._top:
                    self._bar.update(step + 1 - self._bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                if self._bar is not None and phase_name == self._top:
                    self._bar.update(self._bar.total - self._bar.n)
                    self._bar.set_postfix_str("done", refresh=False)
                    self._bar.close()
                    self._bar = None

    return _TqdmMonitor()
