"""A small multi-domain corpus dressed as web-crawl output, built from what every machine has.

Sub-sources: `code` (the Python standard library's sources), `prose` (Python's reference-documentation topics and
module docstrings), `math` (template word problems with worked answers) and `web` (boilerplate-heavy pages, a few in
other languages). A share of documents reappears as near-duplicates: mirrors on other domains, copies wrapped in
site boilerplate and light edits, each in another crawl snapshot. Deterministic for a seed and Python version.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import random
import sysconfig
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from pathlib import Path

from xgen_core.config import SampleCorpusConfig
from xgen_core.storage import join, store_for

MAX_CODE_CHARS = 6000
SKIPPED_STDLIB_DIRS = {"test", "idlelib", "tkinter", "lib2to3", "ensurepip", "site-packages", "turtledemo"}


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    url: str
    snapshot: str
    crawl_time: str
    source: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)


def run(ctx) -> dict:
    docs = build_corpus(ctx.cfg.sample_corpus)
    counts = write_corpus(docs, ctx.output, ctx.cfg.sample_corpus)
    ctx.log(f"wrote {counts['documents']} documents ({counts['wet_records']} in WET)")
    return {"counts": counts}


def build_corpus(cfg: SampleCorpusConfig) -> list[Doc]:
    rng = random.Random(cfg.seed)
    originals = (
        code_docs(rng, cfg.code_docs)
        + prose_docs(rng, cfg.prose_docs)
        + math_docs(rng, cfg.math_docs)
        + web_docs(rng, cfg.web_docs)
    )
    docs = [_place_in_crawl(doc, rng, cfg.snapshots) for doc in originals]
    variants = [
        _near_duplicate(doc, rng, cfg.snapshots, n)
        for n, doc in enumerate(docs)
        if rng.random() < cfg.near_duplicate_rate
    ]
    corpus = docs + variants
    if len({d.id for d in corpus}) != len(corpus):
        raise AssertionError("sample corpus: document ids are not unique")
    rng.shuffle(corpus)
    return corpus


def write_corpus(docs: list[Doc], out: str, cfg: SampleCorpusConfig) -> dict:
    """JSONL per snapshot under jsonl/, and a share of the documents as one WET file under wet/."""
    rng = random.Random(cfg.seed + 1)
    wet_docs = [d for d in docs if rng.random() < cfg.wet_fraction]
    wet_ids = {d.id for d in wet_docs}
    store = store_for(out)
    for snapshot in cfg.snapshots:
        lines = [d.to_json() for d in docs if d.snapshot == snapshot and d.id not in wet_ids]
        store.write_text(join(out, "jsonl", f"crawl-{snapshot}.jsonl"), "\n".join(lines) + "\n")
    wet_snapshot = cfg.snapshots[-1]
    store.write_bytes(join(out, "wet", f"{wet_snapshot}.warc.wet.gz"), wet_bytes(wet_docs, wet_snapshot))
    by_source = {}
    for d in docs:
        by_source[d.source] = by_source.get(d.source, 0) + 1
    return {"documents": len(docs), "wet_records": len(wet_docs), **{f"source_{k}": v for k, v in sorted(by_source.items())}}


def wet_bytes(docs: list[Doc], snapshot: str) -> bytes:
    """A gzipped WET file: a warcinfo record naming the crawl, then one conversion record per document."""
    records = [_warc_record("warcinfo", None, docs[0].crawl_time if docs else "2024-01-01T00:00:00Z",
                            f"isPartOf: {snapshot}\r\npublisher: xgen sample corpus\r\n", "application/warc-fields")]
    for doc in docs:
        records.append(_warc_record("conversion", doc.url, doc.crawl_time, doc.text, "text/plain"))
    return gzip.compress(b"".join(records), mtime=0)


def _warc_record(kind: str, url: str | None, date: str, body: str, content_type: str) -> bytes:
    payload = body.encode("utf-8")
    record_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}:{url}:{date}")
    headers = ["WARC/1.0", f"WARC-Type: {kind}"]
    if url:
        headers.append(f"WARC-Target-URI: {url}")
    headers += [
        f"WARC-Date: {date}",
        f"WARC-Record-ID: <urn:uuid:{record_id}>",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(payload)}",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload + b"\r\n\r\n"


# --- sub-sources -----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p for p in root.rglob("*.py")
        if not SKIPPED_STDLIB_DIRS.intersection(p.relative_to(root).parts) and p.stat().st_size > 800
    ]
    return tuple(sorted(files))


def code_docs(rng: random.Random, count: int) -> list[Doc]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    chosen = rng.sample(list(files), min(count, len(files)))
    docs = []
    for path in chosen:
        text = path.read_text(encoding="utf-8", errors="replace")[:MAX_CODE_CHARS]
        rel = path.relative_to(root).as_posix()
        docs.append(_doc(f"code-{rel}", text, f"https://github.com/python/cpython/blob/3.11/Lib/{rel}", "code"))
    return docs


def prose_docs(rng: random.Random, count: int) -> list[Doc]:
    paragraphs = prose_paragraphs()
    chosen = rng.sample(paragraphs, min(count, len(paragraphs)))
    return [_doc(f"prose-{url}", text, url, "prose") for url, text in chosen]


@lru_cache(maxsize=1)
def prose_paragraphs() -> list[tuple[str, str]]:
    """(url, text) of every reference-topic paragraph and long module docstring."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        chunks = [c.strip() for c in topics[name].split("\n\n") if len(c.strip()) > 200]
        paragraphs += [(f"https://docs.python.org/3.11/reference/{name}.html#p{i}", c) for i, c in enumerate(chunks)]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        docstring = _module_docstring(path)
        if docstring and len(docstring) > 300:
            module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
            paragraphs.append((f"https://docs.python.org/3.11/library/{module}.html", docstring))
    return paragraphs


def _module_docstring(path: Path) -> str | None:
    try:
        return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8", errors="replace")))
    except (SyntaxError, ValueError):
        return None


MATH_TEMPLATES = (
    ("{name} buys {a} boxes of pencils. Each box holds {b} pencils. {name} gives away {c} pencils. "
     "How many pencils are left?",
     "Total pencils: {a} x {b} = {ab}. After giving away {c}: {ab} - {c} = {ans}. The answer is {ans}.",
     lambda a, b, c: (a * b, a * b - c)),
    ("A train travels at {a} km per hour for {b} hours, then {c} km more. How far does it travel in total?",
     "Distance at speed: {a} x {b} = {ab} km. Adding {c} km gives {ab} + {c} = {ans} km. The answer is {ans}.",
     lambda a, b, c: (a * b, a * b + c)),
    ("{name} saves {a} dollars a week for {b} weeks and spends {c} dollars on a gift. How much money is left?",
     "Savings: {a} x {b} = {ab} dollars. After the gift: {ab} - {c} = {ans} dollars. The answer is {ans}.",
     lambda a, b, c: (a * b, a * b - c)),
    ("A rectangle is {a} cm long and {b} cm wide. A square of side {c} cm is cut from it. What area remains?",
     "Rectangle area: {a} x {b} = {ab} square cm. The square has {c} x {c} = {cc} square cm. "
     "Remaining: {ab} - {cc} = {ans} square cm. The answer is {ans}.",
     lambda a, b, c: (a * b, a * b - c * c)),
    ("A class has {a} rows of {b} desks. {c} desks are empty. How many students are seated?",
     "Desks: {a} x {b} = {ab}. Seated students: {ab} - {c} = {ans}. The answer is {ans}.",
     lambda a, b, c: (a * b, a * b - c)),
    ("Solve for x: {a}x + {b} = {ab}.",
     "Subtract {b} from both sides: {a}x = {ab} - {b} = {c_times_a}. Divide by {a}: x = {c}. The answer is {c}.",
     lambda a, b, c: (a * c + b, c)),
)
NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Radia", "Ken")


def math_docs(rng: random.Random, count: int) -> list[Doc]:
    docs = []
    for n in range(count):
        question, answer, solve = MATH_TEMPLATES[n % len(MATH_TEMPLATES)]
        a, b = rng.randint(3, 40), rng.randint(2, 30)
        c = rng.randint(1, min(a, b))
        ab, ans = solve(a, b, c)
        fields = dict(name=rng.choice(NAMES), a=a, b=b, c=c, ab=ab, ans=ans, cc=c * c, c_times_a=c * a)
        text = f"Problem {n + 1}. {question.format(**fields)}\n\nSolution. {answer.format(**fields)}"
        docs.append(_doc(f"math-{n}", text, f"https://mathpractice.example.edu/problems/{n + 1}", "math"))
    return docs


WEB_FRAGMENTS = (
    "Home | About | Contact | Login", "Accept all cookies", "Click here to subscribe to our newsletter!",
    "Best deals of the season", "Free shipping on orders over $50", "Read more", "Share on social media",
    "Copyright 2024 All rights reserved", "Top 10 products you need right now", "Limited time offer",
    "Sign up today and save 20%", "Related posts", "Previous page", "Next page", "Search this site",
)
FOREIGN_SENTENCES = (
    "Die Stadt liegt am Ufer des Flusses und hat viele alte Häuser aus dem Mittelalter.",
    "Le marché ouvre tous les samedis matin et propose des fruits et des légumes de la région.",
    "La biblioteca municipal ofrece talleres gratuitos de lectura para niños y adultos.",
    "Il museo della città espone opere di artisti locali del diciannovesimo secolo.",
)


def web_docs(rng: random.Random, count: int) -> list[Doc]:
    docs = []
    for n in range(count):
        if n % 10 == 9:
            text = " ".join(rng.choice(FOREIGN_SENTENCES) for _ in range(rng.randint(4, 9)))
        else:
            text = "\n".join(rng.choice(WEB_FRAGMENTS) for _ in range(rng.randint(6, 20)))
        domain = f"shop{rng.randint(1, 60)}.example.com"
        docs.append(_doc(f"web-{n}", text, f"https://{domain}/page/{n}", "web"))
    return docs


# --- crawl placement and near-duplicates -----------------------------------------------------------------------

MIRROR_HOSTS = ("mirror.pydocs.example.org", "copies.example.net", "archive.example.io", "www.reposts.example.com")


def _doc(key: str, text: str, url: str, source: str) -> Doc:
    doc_id = uuid.uuid5(uuid.NAMESPACE_URL, key).hex[:16]
    return Doc(doc_id, text, url, "", "", source)


def _place_in_crawl(doc: Doc, rng: random.Random, snapshots: list[str]) -> Doc:
    snapshot = rng.choice(snapshots)
    return replace(doc, snapshot=snapshot, crawl_time=_crawl_time(snapshot, rng))


def _crawl_time(snapshot: str, rng: random.Random) -> str:
    """CC-MAIN-YYYY-WW: a moment in that ISO week."""
    year, week = (int(part) for part in snapshot.split("-")[-2:])
    start = datetime.fromisocalendar(year, week, 1).replace(tzinfo=timezone.utc)
    moment = start + timedelta(seconds=rng.randrange(7 * 24 * 3600))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _near_duplicate(doc: Doc, rng: random.Random, snapshots: list[str], n: int) -> Doc:
    kind = ("mirror", "wrapped", "edited")[n % 3]
    if kind == "mirror":
        text = doc.text
    elif kind == "wrapped":
        header = " | ".join(rng.sample(WEB_FRAGMENTS, 3))
        footer = rng.choice(WEB_FRAGMENTS)
        text = f"{header}\n\n{doc.text}\n\n{footer}"
    else:
        text = _light_edit(doc.text, rng)
    host = rng.choice(MIRROR_HOSTS)
    path = doc.url.split("://", 1)[-1].split("/", 1)[-1]
    variant = replace(doc, id=uuid.uuid5(uuid.NAMESPACE_URL, f"{doc.id}-{kind}").hex[:16], text=text,
                      url=f"https://{host}/{path}")
    return _place_in_crawl(variant, rng, snapshots)


def _light_edit(text: str, rng: random.Random) -> str:
    """Drop or duplicate about 2% of the words: the kind of drift mirrors and re-posts show."""
    words = text.split(" ")
    edited = []
    for word in words:
        roll = rng.random()
        if roll < 0.01:
            continue
        edited.append(word)
        if roll > 0.99:
            edited.append(word)
    return " ".join(edited)


def read_sample_jsonl(out: str) -> list[dict]:
    """All JSONL documents of a written sample corpus (the WET share excluded), for tests and benchmarks."""
    store = store_for(out)
    docs = []
    for info in store.list_files(join(out, "jsonl")):
        docs += [json.loads(line) for line in io.StringIO(store.read_text(info.uri)) if line.strip()]
    return docs
