"""The single-process floor: rensa 0.5.0 MinHash + its LSH + union-find, as a plain user script would do it.

Runs in its own environment (bench/envs/setup.sh rensa), called by bench/dedup.py --rensa as a whole command.
Shingles as the pipeline's: lower-cased whitespace words, word n-grams joined by one space (one shingle of all words
for a shorter document, none for a document without words). Writes id -> cluster label as Parquet.

    .bench/envs/rensa/bin/python bench/baselines/rensa_minhash.py INPUT.parquet LABELS.parquet
"""

from __future__ import annotations

import argparse

import pyarrow as pa
import pyarrow.parquet as pq
from rensa import RMinHash, RMinHashLSH


def word_shingles(text: str, ngram: int) -> list[str]:
    words = text.lower().split()
    if len(words) <= ngram:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--bands", type=int, default=25)
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    num_perm = args.bands * args.rows
    table = pq.read_table(args.input, columns=["id", "text"])
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    lsh = RMinHashLSH(threshold=args.threshold, num_perm=num_perm, num_bands=args.bands)
    sketches = []
    for index, text in enumerate(texts):
        sketch = RMinHash(num_perm=num_perm, seed=args.seed)
        shingles = word_shingles(text, args.ngram)
        sketch.update(shingles)
        sketches.append(sketch if shingles else None)
        if shingles:
            lsh.insert(index, sketch)
    parent = list(range(len(ids)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for index, sketch in enumerate(sketches):
        if sketch is None:
            continue
        for other in lsh.query(sketch):
            a, b = find(index), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    labels = [ids[find(index)] for index in range(len(ids))]
    pq.write_table(pa.table({"id": ids, "cluster": labels}), args.output)


if __name__ == "__main__":
    main()
