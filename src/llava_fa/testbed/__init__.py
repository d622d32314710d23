"""The testbed: a small real LLaVA (DINOv2-S/14 + MLP projector + SmolLM2-135M-Instruct)."""
