"""``python -m bench``: throughput, latency and memory of inferno-jobs, each as a ratio against a baseline
measured in the same run on the same machine (bare Celery on the same Redis, raw ONNX Runtime).

Benchmarks never assert: they print a table. See docs/performance.md for what each number means.
"""
