"""Converting a GGUF file (such as the packaged SmolLM2-135M-Instruct) into a safetensors directory.

transformers de-quantizes GGUF on load, which takes tens of seconds; the model store keeps the
result as plain safetensors so that a worker loads it in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Writes config, float32 safetensors weights and tokenizer (with its chat template) to out_dir."""
    gguf_file = Path(gguf_file)
    directory, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # The GGUF-loaded model carries a quantization config that cannot be saved: rebuild a plain
    # model from a clean config and move the de-quantized weights into it.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise RuntimeError(f"weights do not fit the model: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
