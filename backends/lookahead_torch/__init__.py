"""lookahead_torch: Lookahead as a torch.optim.Optimizer (in progress)."""
