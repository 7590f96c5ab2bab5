"""Reading untrusted PyTorch pickles without running them: the authors' released checkpoints, and
the scan of our own before torch.load."""
