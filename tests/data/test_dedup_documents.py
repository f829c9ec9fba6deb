"""The vectorised row checks of dedup's first step agree with their per-row definitions on every input."""

import random

import pyarrow as pa

from xgen_core.data.dedup.documents import WHITESPACE_CODEPOINTS, domain_column, row_problem, row_problems, url_host

ODD_URLS = [
    "https://WWW.Example.com/x", "http://user:pw@Host.ORG:8080/p?q#f", "http://a:b/c@d", "http://host:80@evil/x",
    "http://[::1]:80/", "http://[::1/", "http://a:[b/c", "//host/x", "example.com/x", "http:///path", "http://user@/x",
    "http://www./", "ftp://ho%41st/", "http://ho st/", " http://lead.space/", "http://tab\t.com/", "HTTP://UP.COM",
    "http://é.com/x", "mailto:a@b.com", "http://a@b@c.com/", None, "", "http://x.com?y", "http://x.com#y",
    "a+b-c.d://h.i/j", "1http://x.com/", "http://x.com:/", "http://www.x.com:99999999/", "http:/x.com", "http://x.com/[a]",
]  # fmt: skip


def test_domain_column_equals_url_host_on_odd_and_random_urls():
    generator = random.Random(0)
    alphabet = "ab:/@[]%?#.wW 1\té"
    urls = list(ODD_URLS)
    for _ in range(5000):
        urls.append("http://" + "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 12))))
        urls.append("".join(generator.choice(alphabet + "h") for _ in range(generator.randint(0, 14))))
    assert domain_column(pa.array(urls, pa.string())).to_pylist() == [url_host(url) for url in urls]


def test_domain_column_of_plain_urls_only():
    urls = [f"https://www.site{i}.example/page/{i}" for i in range(50)]
    assert domain_column(pa.chunked_array([pa.array(urls)])).to_pylist() == [f"site{i}.example" for i in range(50)]


def test_whitespace_codepoints_are_those_python_strips():
    assert WHITESPACE_CODEPOINTS == [c for c in range(0x110000) if chr(c).isspace()]


def test_row_problems_equal_row_problem_on_random_rows():
    generator = random.Random(1)
    pool = [" ", "\t", "\x0b", "\x1c", "\x85", "\u3000", "\x00", "\x07", "\x7f", "\ufffd", "a", "é", "\n", "\u200b", "x"]
    ids, texts = [], []
    for index in range(20000):
        ids.append(generator.choice([None, "", f"id{index}", f"id{index}"]))
        length = generator.randint(0, 30)
        texts.append(None if generator.random() < 0.05 else "".join(generator.choice(pool) for _ in range(length)))
    expected = [row_problem(doc_id, text, 20) for doc_id, text in zip(ids, texts)]
    assert set(expected) == {None, "missing_id", "missing_text", "empty", "too_long", "binary_looking"}
    assert row_problems(pa.array(ids, pa.string()), pa.array(texts, pa.string()), 20) == expected


def test_content_hash_column_and_nodes_equal_the_per_text_definitions():
    from xgen_core.data.dedup.documents import content_digests, content_hash, content_hash_column, content_node, content_nodes

    texts = ["", "a", "héllo wörld", None, "x" * 10000, "\x00binary", None]
    digests, present = content_digests(pa.chunked_array([pa.array(texts[:3]), pa.array(texts[3:])]))
    assert content_hash_column(digests, present).to_pylist() == [content_hash(text) for text in texts]
    expected_nodes = [-1 if text is None else content_node(content_hash(text)) for text in texts]
    assert content_nodes(digests, present).tolist() == expected_nodes
    sliced = pa.array(texts).slice(2, 3)
    assert content_hash_column(*content_digests(sliced)).to_pylist() == [content_hash(text) for text in texts[2:5]]
