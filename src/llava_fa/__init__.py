"""LLaVA-FA: post-training compression of large multimodal models."""

__version__ = "0.1.0"

# After `import llava_fa`, transformers' from_pretrained loads llava-fa checkpoints (registered
# lazily: importing llava_fa does not import transformers).
from llava_fa.io import hf_hook

hf_hook.install()
