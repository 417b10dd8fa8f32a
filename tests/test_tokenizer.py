"""Tokenizer: training on real Chinese/English slices, round trips, HF compatibility, readable vocab."""

from __future__ import annotations

import itertools
import json

import pytest

from fromzero.config import build
from fromzero.data.sources import iter_texts
from fromzero.errors import FromzeroError
from fromzero.tokenizer import (
    SPECIAL,
    Tokenizer,
    TokenizerConfig,
    cjk_coverage,
    describe_vocab,
    train_tokenizer,
)

ZH = "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）。中国人民"
EN = "Hello world,  this is a test!\nNew line: don't stop 12345 now."


@pytest.fixture(scope="module")
def corpus():
    zh = list(itertools.islice(iter_texts("people_daily"), 4500))
    en = list(itertools.islice(iter_texts("tweets_en"), 2000))
    return {"zh_train": zh[:4000], "zh_held": zh[-500:], "en": en}


@pytest.fixture(scope="module")
def toks(corpus):
    """One tokenizer per kind (small slices, so the whole module stays fast)."""
    small = corpus["zh_train"][:1200] + corpus["en"][:1200]
    return {
        "bpe": train_tokenizer(
            corpus["zh_train"] + corpus["en"], TokenizerConfig(kind="bpe", vocab_size=6000), show_progress=False
        ),
        "wordpiece": train_tokenizer(small, TokenizerConfig(kind="wordpiece", vocab_size=4000), show_progress=False),
        "unigram": train_tokenizer(small, TokenizerConfig(kind="unigram", vocab_size=4000), show_progress=False),
    }


KINDS = ["bpe", "wordpiece", "unigram"]


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_have_fixed_ids(toks, kind):
    tok = toks[kind]
    assert [tok.token_to_id(t) for t in SPECIAL] == list(range(7))
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.cls_id, tok.sep_id) == tuple(range(7))
    assert tok.kind == kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", [ZH, EN, " leading and trailing  ", "人民 mixed 中文, ok?"])
def test_round_trip(toks, kind, text):
    tok = toks[kind]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, text]) == [ids, ids]


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_added_and_skipped(toks, kind):
    tok = toks[kind]
    ids = tok.encode("中国 China", add_special_tokens=True)
    assert ids[0] == tok.bos_id and ids[1:] == tok.encode("中国 China")
    assert tok.decode([tok.bos_id, *tok.encode("中国"), tok.eos_id]) == "中国"
    assert "</s>" in tok.decode([*tok.encode("中国"), tok.eos_id], skip_special_tokens=False)


def test_bpe_chinese_characters_are_whole_tokens(toks, corpus):
    tok = toks["bpe"]
    assert cjk_coverage(tok, corpus["zh_held"]) >= 0.95
    for ch in "的一是在不了有和人这中大为上个国":
        assert len(tok.encode(ch)) == 1, ch
    # and English still gets word-level tokens
    for word in (" the", " is", " this", " car", " flight"):
        assert len(tok.encode(word)) == 1, word
    assert len(tok.encode("Hello world, this is a test.")) <= 12


def test_unigram_learns_chinese_words(toks):
    tok = toks["unigram"]
    pieces = [tok.id_to_token(i) for i in tok.encode("中国人民和世界人民")]
    assert any(len(p) >= 2 for p in pieces), pieces


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_and_transformers_give_same_ids(toks, kind, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = toks[kind]
    file = tok.save(tmp_path / "tok")
    assert file.name == "tokenizer.json" and file.is_file()
    texts = [ZH, EN, "混合 mixed 文本"]
    hf = PreTrainedTokenizerFast(tokenizer_file=str(file))
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert auto.encode(text, add_special_tokens=False) == ids
        assert Tokenizer.load(tmp_path / "tok").encode(text) == ids
        assert Tokenizer.load(file).encode(text) == ids
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id, auto.mask_token_id) == (0, 2, 3, 4)
    assert len(hf) == tok.vocab_size
    single = tok.save(tmp_path / "elsewhere" / "my.json")
    assert Tokenizer.load(single).vocab_size == tok.vocab_size


def test_readable_vocab_for_byte_level(toks):
    tok = toks["bpe"]
    zhong = tok.encode("中")[0]
    assert tok.id_to_token(zhong) == "中"
    assert tok.id_to_token(tok.encode(" the")[0]) == " the"
    partial = 0
    for i in range(tok.vocab_size):
        shown = tok.id_to_token(i)
        raw = tok.decode([i], skip_special_tokens=False)
        if "\ufffd" in raw:  # only part of a UTF-8 character: shown as bytes, never as mojibake
            partial += 1
            assert "<0x" in shown
        else:
            assert shown == raw
    assert partial < 0.1 * tok.vocab_size
    lines = describe_vocab(tok, n=20, start=zhong - 5)
    assert len(lines) == 21 and "bpe" in lines[0]
    assert f"{zhong:>7}  '中'" in lines
    assert not any(c in "".join(lines) for c in "ĠäåæçèĤĳ")
    spread = describe_vocab(tok, n=50)
    assert len(spread) == 51 and "'<pad>'  (special)" in spread[1]


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FromzeroError, match="at least 263"):
        TokenizerConfig(kind="bpe", vocab_size=100)
    with pytest.raises(FromzeroError, match="at least 8"):
        build(TokenizerConfig, {"kind": "wordpiece", "vocab_size": 5})
    with pytest.raises(FromzeroError, match="kind"):
        build(TokenizerConfig, {"kind": "sentencepiece"})
    with pytest.raises(FromzeroError, match="no text"):
        train_tokenizer(["", "   ", "\n"], TokenizerConfig(vocab_size=300), show_progress=False)
    zh = list(itertools.islice(iter_texts("people_daily"), 300))
    with pytest.raises(FromzeroError, match="distinct characters"):
        train_tokenizer(zh, TokenizerConfig(kind="unigram", vocab_size=100), show_progress=False)
    with pytest.raises(FromzeroError, match="no tokenizer found"):
        Tokenizer.load(tmp_path / "nothing")
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"model": "?"}))
    with pytest.raises(FromzeroError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_tiny_byte_vocab_still_round_trips():
    tok = train_tokenizer([ZH, EN], TokenizerConfig(vocab_size=263), show_progress=False)
    assert tok.vocab_size == 263
    assert tok.decode(tok.encode(ZH + EN)) == ZH + EN


def test_max_texts_samples_deterministically():
    texts = [f"text number {i}" for i in range(500)]
    cfg = TokenizerConfig(vocab_size=300, max_texts=50, seed=1)
    a = train_tokenizer(texts, cfg, show_progress=False)
    b = train_tokenizer(iter(texts), cfg, show_progress=False)
    assert a.to_str() == b.to_str()
