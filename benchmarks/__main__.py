"""``python -m benchmarks``: the benchmark suite (``make bench``); see ``suite.py``."""

import os

# One thread everywhere, set before NumPy, torch and JAX load (they read these once).
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS", ""),
    "--xla_cpu_multi_thread_eigen=false",
]))
# XLA's CPU runtime also runs compiled loops on a thread pool of its own that no flag
# above sizes (measured: a jitted sync of 400 MB used 155 ms of CPU in 79 ms of wall
# time). Pinning the process to one CPU puts every library's threads on one core.
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
# The profiler (allocation counts) prints its errors (level 4) and nothing chattier; its
# start/stop markers sit above ERROR, so memory.profiler_markers_filtered drops them.
os.environ.setdefault("KINETO_LOG_LEVEL", "4")

from .suite import main  # noqa: E402

raise SystemExit(main())
