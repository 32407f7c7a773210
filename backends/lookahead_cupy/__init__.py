"""lookahead_cupy: in-place Lookahead on CuPy arrays (in progress)."""
