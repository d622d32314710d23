"""The chat format of the testbed (SmolLM2's ChatML, without its default system turn)."""

from __future__ import annotations

IMAGE_TOKEN = "<image>"

# A processor-level chat template: content may be a string or a list of {"type": "image"|"text"}
# parts; images become the image token, which the processor expands to one token per patch.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def image_prompt(text: str) -> str:
    """The full prompt for one image and one user text, ready for generation."""
    return f"<|im_start|>user\n{IMAGE_TOKEN}\n{text}<|im_end|>\n<|im_start|>assistant\n"


def text_prompt(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
