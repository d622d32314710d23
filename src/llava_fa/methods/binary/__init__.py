"""The binarization family (BiLLM, ARB-LLM's arb / arb-x / arb-rc, PB-LLM) as one package.

- variants.py: the table of variants (name -> block binarizer, options, summary) the methods
  register from, and the Method they share;
- config.py: the options; driver.py: blocks with GPTQ error feedback on the shared loop
  (quantizers/feedback.py); blocks.py: one block per variant; fitters.py: the closed-form group
  fits; selection.py: salient columns and the magnitude split.
SAB-LVLM (methods/sab) builds on the same pieces with its significance weights.
"""

from llava_fa.methods.binary.blocks import BlockGroups, block_groups, family_block, pb_block
from llava_fa.methods.binary.config import ARBConfig, BiLLMConfig, BinaryConfig, PBLLMConfig
from llava_fa.methods.binary.driver import BlockFitter, BinaryBlocks, blocked_binarize, concat_parts
from llava_fa.methods.binary.fitters import (fit_arb, fit_mean_scale, rc_update_cols, rc_update_rows, refine_x,
                                             simple_err)
from llava_fa.methods.binary.selection import select_salient_columns, split_groups
from llava_fa.methods.binary.variants import VARIANT_METHODS, VARIANTS, BinaryMethod, Variant, hessian_or_none

__all__ = ["ARBConfig", "BiLLMConfig", "BinaryConfig", "BinaryMethod", "BlockFitter", "BlockGroups", "BinaryBlocks",
           "PBLLMConfig", "VARIANTS", "VARIANT_METHODS", "Variant", "block_groups", "blocked_binarize", "concat_parts",
           "family_block", "fit_arb", "fit_mean_scale", "hessian_or_none", "pb_block", "rc_update_cols",
           "rc_update_rows", "refine_x", "select_salient_columns", "simple_err", "split_groups"]
