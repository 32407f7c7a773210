"""lookahead_numpy: in-place Lookahead on NumPy arrays."""
