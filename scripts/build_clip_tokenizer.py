"""Write CLIP's BPE tokenizer files (vocab.json, merges.txt) from openai/CLIP's published merge list.

SD 1.x/2.x/XL all use this tokenizer; shipping it lets single-file checkpoints and full-size
architectures load with no network. Source: clip/bpe_simple_vocab_16e6.txt.gz of
https://github.com/openai/CLIP (MIT licence). The vocabulary is built the way CLIP's
SimpleTokenizer builds it: 256 byte symbols, the same with the end-of-word mark, one entry per
merge (the first 48,894), then the two special tokens -- 49,408 ids, as in every SD text encoder.

    python scripts/build_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz assets/tokenizers/clip
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP reads merges[1 : 49152 - 256 - 2 + 1] (line 0 is a version header)


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable unicode map, in CLIP's order: the printable bytes as
    themselves first, then the other bytes mapped to 256, 257, ... (this order fixes the token ids)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bpe_file", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    lines = gzip.open(args.bpe_file).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = byte_symbols()
    vocabulary = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocabulary += ["<|startoftext|>", "<|endoftext|>"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}, ensure_ascii=False))
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"{len(vocabulary)} tokens, {len(merges)} merges -> {args.out}")


if __name__ == "__main__":
    main()
