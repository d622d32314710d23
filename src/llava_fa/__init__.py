"""LLaVA-FA: post-training compression of large multimodal models."""

__version__ = "0.1.0"
