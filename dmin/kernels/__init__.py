"""Fused scatter kernels for the compressor: numba on the CPU, Triton on CUDA, both optional.

Each exposes `scatter_add(acc, chunk, offset, keys, shift) -> float` (sum of squares of the chunk) and must equal
the plain-torch reference in dmin.compress bit for bit in the buckets chosen and within rounding in the sums.
"""
