#!/usr/bin/env python3
# make_real_models.py — on the GPU machine: random-weight checkpoints with the REAL configs of
# Qwen3-0.6B, Llama-3.2-1B and Qwen3-8B (numbers from their config.json files), saved in bf16 with
# reference outputs from Hugging Face transformers in fp32 on the same bf16 weights, in the format
# tests/test_model_e2e.c reads (ref.json + ref_logits.safetensors; see tests/fixtures/make_models.py).
#
#   python3 tests/gpu/make_real_models.py OUT_DIR [name ...]
#
# The reference runs on the GPU in fp32 with eager attention. Nothing is downloaded.
import importlib.util
import json
import os
import sys
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("mm", os.path.join(HERE, "..", "fixtures", "make_models.py"))
mm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mm)

# The third prompt is long enough that mpk splits its decode rows' attention over positions
# (from 128 on; tests/test_model_e2e.c generates from it alone).
PROMPT_LENGTHS = (20, 7, 160)
NEW_TOKENS = 32


def real_configs():
    """The real configs (numbers from each model's config.json); bench/torch_baseline.py uses them too."""
    qwen_common = dict(vocab_size=151936, head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=40960,
                       bos_token_id=151643, eos_token_id=151645, hidden_act="silu",
                       **mm.rope_kwargs(1000000.0))
    return {
        "qwen3-0.6b": Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                  num_attention_heads=16, num_key_value_heads=8,
                                  tie_word_embeddings=True, **qwen_common),
        "qwen3-1.7b": Qwen3Config(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                  num_attention_heads=16, num_key_value_heads=8,
                                  tie_word_embeddings=True, **qwen_common),
        "qwen3-8b": Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                num_attention_heads=32, num_key_value_heads=8,
                                tie_word_embeddings=False, **qwen_common),
        "llama-3.2-1b": LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                    num_hidden_layers=16, num_attention_heads=32,
                                    num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                                    max_position_embeddings=131072, tie_word_embeddings=True,
                                    bos_token_id=128000, eos_token_id=128001,
                                    **mm.rope_kwargs(500000.0, {"rope_type": "llama3", "factor": 32.0,
                                                                "low_freq_factor": 1.0,
                                                                "high_freq_factor": 4.0,
                                                                "original_max_position_embeddings": 8192})),
    }


@torch.no_grad()
def init_weights(model, gen):
    # As the tiny fixtures (see make_models.py): every path contributes, logits have O(1) spread.
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, device=p.device))
        elif "embed_tokens" in name:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, device=p.device))
        else:
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device) / (p.shape[1] ** 0.5))
        p.copy_(p.to(torch.bfloat16).to(torch.float32))


@torch.no_grad()
def references(model, prompts):
    logits, greedy, gm, tm = {}, [], [], []
    for i, prompt in enumerate(prompts):
        out = model(torch.tensor([prompt], device="cuda")).logits[0].float()
        logits[f"prompt{i}"] = out.cpu().contiguous()
        tm.append([round(mm.margin(r), 6) for r in out])
        seq, toks, margins = list(prompt), [], []
        for _ in range(NEW_TOKENS):
            last = model(torch.tensor([seq], device="cuda")).logits[0, -1].float()
            tok = int(torch.argmax(last))
            toks.append(tok)
            margins.append(round(mm.margin(last), 6))
            seq.append(tok)
        greedy.append(toks)
        gm.append(margins)
    return logits, greedy, gm, tm


def main():
    out_root = sys.argv[1]
    names = sys.argv[2:] or ["qwen3-0.6b", "llama-3.2-1b", "qwen3-8b"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for name in names:
        t0 = time.time()
        cfg = real_configs()[name]
        gen = torch.Generator(device="cuda").manual_seed(mm.SEED)
        prompts = [torch.randint(3, 5000, (n,), generator=torch.Generator().manual_seed(mm.SEED + n)).tolist()
                   for n in PROMPT_LENGTHS]
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", **{mm.DTYPE_KW: torch.float32})
        model.eval()
        init_weights(model, gen)
        logits, greedy, gm, tm = references(model, prompts)
        out_dir = os.path.join(out_root, name)
        os.makedirs(out_dir, exist_ok=True)
        model.to(torch.bfloat16).save_pretrained(out_dir)
        del model
        torch.cuda.empty_cache()
        save_file(logits, os.path.join(out_dir, "ref_logits.safetensors"))
        with open(os.path.join(out_dir, "ref.json"), "w") as f:
            json.dump({"generated_by": "tests/gpu/make_real_models.py", "torch": torch.__version__,
                       "transformers": transformers.__version__, "prompts": prompts,
                       "new_tokens": NEW_TOKENS, "greedy": greedy, "greedy_margins": gm,
                       "teacher_margins": tm, "logits_file": "ref_logits.safetensors"}, f)
        print(f"{name}: written in {time.time() - t0:.1f} s; greedy[0][:8] = {greedy[0][:8]}, "
              f"min greedy margin {min(min(m) for m in gm):.4f}", flush=True)


if __name__ == "__main__":
    main()
