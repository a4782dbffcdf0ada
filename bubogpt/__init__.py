"""BuboGPT model library: every network defined once in PyTorch."""
