"""clawd-edge converter: Hugging Face safetensors checkpoints to (quantized) GGUF, without torch."""
from __future__ import annotations

QUANT_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0")
