"""The benchmark suite of the Performance page: ``python -m benchmarks`` (``make bench``).

Measures, side by side in one process, the Lookahead backends of this project
(the NumPy and PyTorch adapters, the core on NumPy, PyTorch and JAX under
``jax.jit``) and the peers that are installed (timm, torch-optimizer,
pytorch_optimizer, optax), on three parameter sets. See ``suite.py`` for what
is measured and how, and ``docs/performance.md`` for the results.

``gpu_bench.py`` and ``gpu_check.sh`` are the GPU check of the CuPy adapter;
the suite runs ``gpu_bench.py`` when a CUDA device is present.
"""
