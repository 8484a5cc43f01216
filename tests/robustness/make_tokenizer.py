#!/usr/bin/env python3
"""Fixture of the robustness suite: a small SentencePiece unigram model under OUT/robustness/tokenizer/.

The suite builds its tiny model folders in C++; only the tokenizer model needs the SentencePiece trainer, which
the Python package ships (no tokenizer can be downloaded here). Vocabulary: 300 pieces, pad/eos/unk = 0/1/2, plus
T5's 100 extra ids in tokenizer_config.json, so ids stay below the test encoder's vocabulary of 400.
"""

import argparse
import json
import os
import random

import sentencepiece as spm


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    folder = os.path.join(args.out, "robustness", "tokenizer")
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(0)
    words = ["video", "cat", "dog", "walks", "the", "a", "red", "blue", "sunset", "over", "ocean", "camera", "pans"]
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "an", "en", "or"]
    lines = [" ".join(rng.choice(words) if rng.random() < 0.5 else
                      "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
                      for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(folder, "spiece"), vocab_size=300, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    os.remove(corpus)
    os.remove(os.path.join(folder, "spiece.vocab"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 64, "tokenizer_class": "T5Tokenizer", "extra_ids": 100,
                   "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, f)


if __name__ == "__main__":
    main()
