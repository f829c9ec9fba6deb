"""datatrove 0.10.1's MinHash deduplication (its four stages), on the pipeline's shingles, as a user would run it.

Runs in its own environment (bench/envs/setup.sh datatrove), called by bench/dedup.py --datatrove as a whole command.
Same shingles as the pipeline: lower-cased whitespace words (a whitespace word tokenizer instead of datatrove's
default spaCy one, and text normalisation reduced to lower-casing and whitespace), word 5-grams, 25 buckets x 5
hashes (xxhash 64-bit shingle hashes, datatrove's default). Stages, `tasks` ranks each where datatrove allows:
signatures (one rank per input file), buckets (one task per bucket), clusters (one task), filter (writes the kept and
the removed documents, each with its minhash_cluster_id, as Parquet).

    .bench/envs/datatrove/bin/python bench/baselines/datatrove_minhash.py INPUT_DIR WORKDIR --tasks 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import ParquetReader
from datatrove.pipeline.writers import ParquetWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer


class WhitespaceTokenizer(WordTokenizer):
    """Words as str.split gives them: the pipeline's shingle words (datatrove lower-cases before tokenizing)."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, position = [], 0
        for word in text.split():
            start = text.index(word, position)
            spans.append((start, start + len(word)))
            position = start + len(word)
        return spans


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input_dir", help="folder of Parquet files (id, text); one signature rank per file")
    parser.add_argument("workdir")
    parser.add_argument("--tasks", type=int, default=2, help="parallel workers (cores)")
    parser.add_argument("--buckets", type=int, default=25)
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    work = Path(args.workdir)
    config = MinhashConfig(
        n_grams=args.ngram, num_buckets=args.buckets, hashes_per_bucket=args.rows, seed=args.seed,
        norm_config=TextNormConfig(
            lowercase=True, norm_whitespace=True, remove_punctuation=False, norm_unicode_diacritics=False,
            norm_numbers=False, norm_weekdays=False, norm_monthnames=False,
        ),
        hash_config=HashConfig(precision=64, hash_fc="xxhash"),
    )  # fmt: skip
    files = len(list(Path(args.input_dir).glob("*.parquet")))

    def reader():
        return ParquetReader(args.input_dir, glob_pattern="*.parquet", text_key="text", id_key="id")

    def run(name: str, pipeline: list, tasks: int) -> None:
        executor = LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=min(tasks, args.tasks), logging_dir=str(work / "logs" / name)
        )
        executor.run()

    tokenizer = WhitespaceTokenizer()
    run("signatures", [reader(), MinhashDedupSignature(str(work / "signatures"), config=config, language=tokenizer)], files)
    run("buckets", [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)], args.buckets)
    run("clusters", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config, save_cluster_id=True)], 1)
    filter_step = MinhashDedupFilter(
        str(work / "remove_ids"), exclusion_writer=ParquetWriter(str(work / "removed")), load_cluster_ids=True
    )
    run("filter", [reader(), filter_step, ParquetWriter(str(work / "kept"))], files)


if __name__ == "__main__":
    main()
