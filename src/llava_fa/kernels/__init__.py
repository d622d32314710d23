"""Fused GPU kernels (Triton) for inference from the compressed form; every one has a CPU path."""
