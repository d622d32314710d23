"""Evaluation of (compressed) models: perplexity, easy-VQA accuracy, fidelity, size."""

from llava_fa.evaluation.fidelity import fidelity
from llava_fa.evaluation.perplexity import load_text, perplexity
from llava_fa.evaluation.runner import evaluate, print_result, render_table
from llava_fa.evaluation.size import model_size
from llava_fa.evaluation.vqa import vqa_accuracy

__all__ = ["evaluate", "fidelity", "load_text", "model_size", "perplexity", "print_result", "render_table",
           "vqa_accuracy"]
