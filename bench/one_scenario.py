"""Runs one in-process scenario in a fresh process and prints its result as JSON on the last line.

Each scenario gets a process of its own, so none inherits another's allocator state, thread pools or
memory peak, and the comparison stays side by side within one `make bench` run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scenarios  # noqa: E402
from llmserve.model_worker.loader import load_model  # noqa: E402


def main() -> int:
    spec = json.loads(sys.argv[1])
    kind = spec["kind"]
    # transformers' scenarios run transformers' model as it is, unless a spec asks for the worker's
    # linear layers; the engine runs the model exactly as a worker loads it.
    cpu_linear = spec.get("cpu_linear", "onednn" if kind == "engine" else "torch")
    # transformers' scenarios need transformers' model; the engine runs whatever a worker would load.
    loaded = load_model(
        Path(spec["path"]), spec["sha256"], device=spec.get("device", "cpu"), dtype=spec.get("dtype", "float32"), cpu_linear=cpu_linear,
        numerics=spec.get("numerics", "auto"), model_impl="auto" if kind == "engine" else "transformers",
    )
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts = [scenarios.chat_ids(tok, q) for q in scenarios.questions(spec["requests"])]
    n = spec["new_tokens"]
    if kind == "generate":
        result = scenarios.hf_one_at_a_time(loaded.model, prompts, n, pad)
    elif kind == "static":
        result = scenarios.hf_static_batch(loaded.model, prompts, n, pad)
        if cpu_linear == "onednn":
            result["scenario"] += ", oneDNN linears"
    else:
        result = scenarios.engine_in_process(loaded, prompts, n, spec["concurrency"], spec["max_running"])
        result["device"], result["dtype"] = str(loaded.device), str(loaded.model.dtype)
    result["cpu_linear"] = cpu_linear
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
