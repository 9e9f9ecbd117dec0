"""Fused scatter kernels for the compressor: numba on the CPU, Triton on CUDA, both optional.

Each exposes `scatter_add_rows` (R gradients, each position hashed once for all; one gradient is one row), and must
equal the plain-torch reference in dmin.compressor bit for bit in the buckets chosen and within rounding in the
sums.
"""
