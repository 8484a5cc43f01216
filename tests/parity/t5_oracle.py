#!/usr/bin/env python3
"""Oracle for the C++ T5 encoder, tokenizer and prompt encoding: transformers 5.17 / diffusers 0.42.1.

Writes under OUT/t5/:
  <model>/config.json + model.safetensors            T5EncoderModel.save_pretrained (random small configs)
  tied_model/                                        the gated model with only encoder.embed_tokens.weight
  <case>/inputs.safetensors, reference.safetensors   input_ids [+ attention_mask] -> last_hidden_state (f32)
  tokenizer/spiece.model + tokenizer_config.json     a SentencePiece unigram model trained here
  tokenizer_cases.json                               prompts, max_length, ids and masks of AutoTokenizer
  ltx/text_encoder + ltx/tokenizer                   a tiny LTX folder for encode-prompt
  prompt_cases/<case>.safetensors                    diffusers LTXPipeline / LTXConditionPipeline.encode_prompt
  cases.json                                         the encoder cases (model, dtype, bound, mask)

Only the test oracle uses Python; the C++ side never does. No tokenizer can be downloaded here, so the test
trains a small SentencePiece model on a generated corpus and builds transformers' tokenizer from it.
"""

import argparse
import json
import os
import random
import shutil
import types

import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, T5Config, T5EncoderModel

# fp32: max|C++ - transformers| <= 1e-4 * max(1, max|reference|).
FP32_BOUND = 1e-4
# bf16 (wo in float32): both sides run the same LibTorch kernels on the same bf16 weights; a difference in the
# evaluation order of one intermediate moves it by one bf16 ulp (2^-8 relative) and the residual stream
# carries it through every block. Four bf16 ulps of the output scale (1.6e-2), as for the transformer; a real
# bug (a wrong bucket, mask, norm cast or wo dtype) moves the output by O(scale).
BF16_BOUND = 1.6e-2
# fp16 (wo in float32 from block 0's FF on, fp16 clamp): the same argument with fp16's 2^-11: four ulps.
FP16_BOUND = 2e-3

VOCAB_PIECES = 300
EXTRA_IDS = 100

GATED = dict(d_model=32, d_kv=8, num_heads=4, d_ff=37, num_layers=3, relative_attention_num_buckets=32,
             relative_attention_max_distance=20, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
RELU = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, relative_attention_num_buckets=8,
            relative_attention_max_distance=24, feed_forward_proj="relu", layer_norm_epsilon=1e-5)


def build(config, vocab, seed):
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(vocab_size=vocab, **config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:  # ones at init: perturb so the test sees them applied
                p.add_(0.2 * torch.randn_like(p))
    return model


def train_tokenizer(folder, model_max_length):
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(0)
    words = ["video", "cat", "dog", "walks", "the", "a", "red", "blue", "sunset", "over", "ocean", "camera", "pans",
             "slowly", "läuft", "café", "naïve", "東京", "猫", "Привет", "mañana", "über", "a", "woman", "smiles"]
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "ph", "th", "an", "en", "or"]
    lines = []
    for _ in range(3000):
        ws = [rng.choice(words) if rng.random() < 0.5 else
              "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(3, 15))]
        s = " ".join(ws)
        if rng.random() < 0.3:
            s += rng.choice([".", ",", "!", "?", " 123", " 4.5"])
        lines.append(s)
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(folder, "spiece"), vocab_size=VOCAB_PIECES, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    os.remove(corpus)
    os.remove(os.path.join(folder, "spiece.vocab"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": model_max_length, "tokenizer_class": "T5Tokenizer", "extra_ids": EXTRA_IDS,
                   "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, f)


def tokenizer_prompts():
    fixed = [
        "", " ", "   ", "\t\n", "a cat walks", "A red cat walks over the ocean at sunset.",
        "  leading and trailing spaces  ", "multiple   spaces\tand\ttabs\nand\nnewlines",
        "Hello, World!!", "punctuation: ;:,.!?()[]{}'\"-_/\\@#$%^&*+=~`|<>",
        "café naïve mañana über läuft", "decomposed: cafe\u0301 nai\u0308ve", "東京の猫", "Привет мир",
        "emoji 🙂🎥 and symbols ©®™", "fullwidth ＡＢＣ ｶﾀｶﾅ １２３", "ligatures ﬁ ﬂ ß ①②", "nbsp\u00a0between",
        "ideographic\u3000space", "nel\u0085split", "zero\u200bwidth", "bom\ufeffinside", "control\x07bell\x00nul",
        "line\u2028separator", "x<extra_id_0>y", "a <extra_id_3> b", "<extra_id_99>", "<extra_id_100> is not special",
        "<extra_id_05> not canonical", "a </s> b", "<pad><pad>", "hello<unk>", "<<extra_id_1>>", "</s",
        "numbers 123 4.5 -7 1e10", "UPPER lower MiXeD", "kalomine rusato vizequ phthan enor",
        "the camera pans slowly over the blue ocean while a woman smiles",
        " ".join(["video"] * 40),
        "a very long prompt " * 30,
        "ü" * 50,
        "🙂" * 20,
    ]
    rng = random.Random(1)
    pool = list("abcdefghijklmnopqrstuvwxyz  .,!?'\"-") + [
        "ka", "lo", "video", "cat", " ", "  ", "\t", "\n", "\u3000", "\u00a0", "é", "e\u0301", "ﬁ", "①", "Ａ", "ｶ",
        "東京", "🙂", "\u200b", "\ufeff", "<extra_id_1>", "</s>", "<pad>", "<unk>", "<", "s>", "İ", "ß", "Å"]
    randomized = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 25))) for _ in range(60)]
    return fixed + randomized


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "t5")
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    torch.set_grad_enabled(False)

    # ---- tokenizer
    tok_dir = os.path.join(root, "tokenizer")
    train_tokenizer(tok_dir, model_max_length=16)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    vocab = len(tok)
    prompts = tokenizer_prompts()
    tok_cases = {"class": type(tok).__name__, "vocab_size": vocab, "model_max_length": tok.model_max_length,
                 "cases": []}
    for max_length in (16, 48):
        enc = tok(prompts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True)
        tok_cases["cases"].append({"max_length": max_length, "prompts": prompts, "input_ids": enc["input_ids"],
                                   "attention_mask": enc["attention_mask"]})
    # model_max_length from tokenizer_config.json
    enc = tok(prompts, padding="max_length", truncation=True, add_special_tokens=True)
    tok_cases["cases"].append({"max_length": None, "prompts": prompts, "input_ids": enc["input_ids"],
                               "attention_mask": enc["attention_mask"]})
    with open(os.path.join(root, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(tok_cases, f, ensure_ascii=False)

    # ---- encoder cases
    cases = []
    models = {}
    for name, config, seed in (("gated", GATED, 0), ("relu", RELU, 1)):
        model = build(config, vocab, seed)
        model_dir = os.path.join(root, name + "_model")
        model.save_pretrained(model_dir)
        models[name] = model_dir

    # The gated model with the tied embedding stored only under its encoder name.
    tied_dir = os.path.join(root, "tied_model")
    shutil.copytree(models["gated"], tied_dir)
    sd = load_file(os.path.join(tied_dir, "model.safetensors"))
    assert "shared.weight" in sd and "encoder.embed_tokens.weight" not in sd, sorted(sd)[:3]
    sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    save_file(sd, os.path.join(tied_dir, "model.safetensors"), metadata={"format": "pt"})

    gen = torch.Generator().manual_seed(123)
    lengths = {"gated": 48, "relu": 40}  # longer than max distance (20, 24): the log buckets saturate
    for name, model_dir in models.items():
        L = lengths[name]
        ids = torch.randint(0, vocab, (3, L), generator=gen)
        mask = torch.ones(3, L, dtype=torch.long)
        mask[1, 30:] = 0
        mask[2, 5:] = 0
        ids = ids * mask  # pad id 0 where masked, as the tokenizer gives
        # Note: transformers 5.17 applies `_keep_in_fp32_modules` (["wo"]) only when loading in float16
        # (modeling_utils.py: "`_keep_in_fp32_modules` will upcast to fp32 only if the requested dtype is fp16");
        # bf16 keeps every weight bf16. "bf16_wo_fp32" upcasts wo by hand (what older transformers did for bf16)
        # to test the C++ keep-in-fp32 path with bf16 too.
        for dtype_name, dtype, bound in (("fp32", torch.float32, FP32_BOUND), ("bf16", torch.bfloat16, BF16_BOUND),
                                         ("fp16", torch.float16, FP16_BOUND),
                                         ("bf16_wo_fp32", torch.bfloat16, BF16_BOUND)):
            model = T5EncoderModel.from_pretrained(model_dir, dtype=dtype).eval()
            assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
            keep_wo = dtype_name in ("fp16", "bf16_wo_fp32")
            if dtype_name == "bf16_wo_fp32":  # float32 wo with the file's values (not bf16-rounded ones)
                full = T5EncoderModel.from_pretrained(model_dir, dtype=torch.float32)
                for block, src in zip(model.encoder.block, full.encoder.block):
                    block.layer[1].DenseReluDense.wo = src.layer[1].DenseReluDense.wo
            for pname, p in model.named_parameters():
                want = torch.float32 if (dtype_name == "fp32" or (keep_wo and ".wo." in pname)) else dtype
                assert p.dtype == want, (pname, p.dtype)
            for with_mask in (False, True):
                case = f"{name}_{dtype_name}_{'mask' if with_mask else 'nomask'}"
                case_dir = os.path.join(root, case)
                os.makedirs(case_dir)
                inputs = {"input_ids": ids.contiguous()}
                if with_mask:
                    inputs["attention_mask"] = mask.contiguous()
                out = model(**inputs).last_hidden_state
                assert out.dtype == dtype, out.dtype
                save_file(inputs, os.path.join(case_dir, "inputs.safetensors"))
                save_file({"last_hidden_state": out.float().contiguous()}, os.path.join(case_dir, "reference.safetensors"))
                cases.append({"name": case, "model": os.path.basename(model_dir), "dtype": dtype_name, "bound": bound,
                              "keep_wo_fp32": keep_wo, "mask": with_mask, "inputs": f"{case}/inputs.safetensors",
                              "reference": f"{case}/reference.safetensors"})
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)

    # ---- encode_prompt on a tiny LTX folder
    from diffusers import LTXConditionPipeline, LTXPipeline

    ltx = os.path.join(root, "ltx")
    shutil.copytree(models["gated"], os.path.join(ltx, "text_encoder"))
    shutil.copytree(tok_dir, os.path.join(ltx, "tokenizer"))
    prompt_dir = os.path.join(root, "prompt_cases")
    os.makedirs(prompt_dir)
    prompt_cases = []
    for case, pipeline_cls, dtype_name, dtype, prompt, negative, max_len in (
            ("ltx_fp32", LTXPipeline, "fp32", torch.float32, ["A red cat walks over the ocean at sunset."], None, 24),
            ("ltx_bf16", LTXPipeline, "bf16", torch.bfloat16, ["a cat walks", "the camera pans slowly " * 6],
             ["blurry"], 20),
            ("condition_fp32", LTXConditionPipeline, "fp32", torch.float32, ["a woman smiles", "東京の猫"],
             ["low quality", ""], 32)):
        te = T5EncoderModel.from_pretrained(os.path.join(ltx, "text_encoder"), dtype=dtype).eval()
        tk = AutoTokenizer.from_pretrained(os.path.join(ltx, "tokenizer"))
        pipe = types.SimpleNamespace(tokenizer=tk, text_encoder=te, _execution_device=torch.device("cpu"))
        pipe._get_t5_prompt_embeds = types.MethodType(pipeline_cls._get_t5_prompt_embeds, pipe)
        neg = None if negative is None else (negative if len(negative) == len(prompt) else negative * len(prompt))
        pe, pm, ne, nm = pipeline_cls.encode_prompt(pipe, prompt=prompt, negative_prompt=neg,
                                                    do_classifier_free_guidance=True, max_sequence_length=max_len)
        save_file({"prompt_embeds": pe.contiguous(), "prompt_attention_mask": pm.contiguous(),
                   "negative_prompt_embeds": ne.contiguous(), "negative_prompt_attention_mask": nm.contiguous()},
                  os.path.join(prompt_dir, case + ".safetensors"))
        prompt_cases.append({"name": case, "pipeline": pipeline_cls.__name__, "dtype": dtype_name, "prompts": prompt,
                             "negative_prompts": negative or [], "max_sequence_length": max_len,
                             "encoder_attention_mask": pipeline_cls is LTXConditionPipeline,
                             "embeds_dtype": str(pe.dtype), "mask_dtype": str(pm.dtype),
                             "bound": FP32_BOUND if dtype_name == "fp32" else BF16_BOUND})
    with open(os.path.join(root, "prompt_cases.json"), "w", encoding="utf-8") as f:
        json.dump(prompt_cases, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
