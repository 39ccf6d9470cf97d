#!/usr/bin/env python3
# torch_baseline.py — the baseline mpk is measured against: Hugging Face transformers with a static
# KV cache and torch.compile(mode="reduce-overhead") (CUDA graphs), batch 1, bf16, random weights
# with the real configs. Decode time per token = (time of generate(N2) - time of generate(N1)) /
# (N2 - N1), so prefill and per-call overhead cancel. Prints one JSON object per model.
# With --prefill N it measures prefill instead: one forward pass over an N-token prompt (eager
# bf16 with the default attention: prefill is one large product per matrix, not launch-bound).
#
#   python3 bench/torch_baseline.py [qwen3-0.6b qwen3-1.7b qwen3-8b llama-3.2-1b] [--tokens 128]
#   python3 bench/torch_baseline.py qwen3-8b --prefill 512
import argparse
import importlib.util
import json
import os
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

# The configs, and the dtype keyword of this transformers version, come from the GPU test script
# that writes the end-to-end reference models, so both measure the same models.
_spec = importlib.util.spec_from_file_location(
    "make_real_models", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "gpu", "make_real_models.py"))
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
DTYPE_KW = _real.mm.DTYPE_KW


def config(name):
    configs = _real.real_configs()
    if name not in configs:
        raise SystemExit(f"unknown model {name} (known: {', '.join(configs)})")
    return configs[name]


def random_model(name):
    """The model of a real config with random bf16 weights, on the GPU, in eval mode."""
    cfg = config(name)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, **{DTYPE_KW: torch.bfloat16})
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


@torch.no_grad()
def measure(name, tokens, reps):
    model = random_model(name)
    # generate() compiles the decode step itself when the cache is static; its CompileConfig is
    # torch.compile(mode="reduce-overhead", fullgraph=True), i.e. CUDA graphs. Wrapping forward in
    # torch.compile by hand as well breaks the graphs' static cache buffers.
    model.generation_config.cache_implementation = "static"
    model.generation_config.pad_token_id = 0
    if hasattr(transformers, "CompileConfig"):
        model.generation_config.compile_config = transformers.CompileConfig(mode="reduce-overhead", fullgraph=True)
    ids = torch.randint(3, 1000, (1, 8), device="cuda")

    def gen(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    short, long_ = 16, 16 + tokens
    for _ in range(3):  # compile and capture graphs for every shape first
        gen(short)
        gen(long_)
    per_token = []
    for _ in range(reps):
        per_token.append((gen(long_) - gen(short)) / tokens)
    ms = 1e3 * statistics.median(per_token)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return {"model": name, "framework": "torch.compile reduce-overhead, static cache", "ms_per_token": round(ms, 4),
            "tokens_per_s": round(1e3 / ms, 2), "spread_ms": round(1e3 * (max(per_token) - min(per_token)), 4),
            "params": n_params, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "transformers": transformers.__version__}


@torch.no_grad()
def measure_prefill(name, n, reps):
    model = random_model(name)
    ids = torch.randint(3, 1000, (1, n), device="cuda")
    times = []
    for i in range(3 + reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(ids, use_cache=False, logits_to_keep=1)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    ms = 1e3 * statistics.median(times)
    del model
    torch.cuda.empty_cache()
    return {"model": name, "framework": "transformers eager bf16", "test": f"pp{n}", "ms": round(ms, 3),
            "tokens_per_s": round(n * 1e3 / ms, 1), "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=0, help="measure an N-token prefill instead of decode")
    a = ap.parse_args()
    for m in a.models:
        if a.prefill > 0:
            print(json.dumps(measure_prefill(m, a.prefill, a.reps)), flush=True)
            continue
        print(json.dumps(measure(m, a.tokens, a.reps)), flush=True)


if __name__ == "__main__":
    main()
