"""Reference NNI trials: the PyTorch digits pruning trial and a torch-free analytic trial."""
