"""Calibration data (text, image+text) and the hooks that turn it into per-layer statistics."""
