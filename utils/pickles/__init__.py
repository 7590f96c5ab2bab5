"""Reading untrusted PyTorch pickles without running them: the restricted reader of the
authors' released checkpoints (mapped to our networks by utils/io/authors.py) and the bounded
scan of our own before torch.load."""
