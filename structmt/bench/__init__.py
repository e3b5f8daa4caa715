"""Benchmarks: attention kernels side by side (``structmt-bench attention``)."""
