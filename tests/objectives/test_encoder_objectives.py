"""Encoder objectives on real text: sentence batches, MLM masking, NSP/SOP pairs, ELECTRA, SimCSE,
mixtures, the embedding API and the recipe runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fromzero.data.pairs import PairBatches, build_pair_corpus, iter_pairs
from fromzero.data.sentences import SentenceBatches, build_sentence_corpus
from fromzero.errors import FromzeroError
from fromzero.model.encoder import EncoderConfig, EncoderModel, load_encoder
from fromzero.objectives.contrastive import (
    SimCSE,
    alignment,
    contrastive_metrics,
    embed,
    embed_from_dir,
    info_nce,
    knn_accuracy,
    uniformity,
)
from fromzero.objectives.mixture import Mixture, MixtureBatches
from fromzero.objectives.mlm import MaskedLM, MLMConfig, MLMMasker
from fromzero.objectives.rtd import ElectraModel, corrupt, evaluate_rtd, replaced_token_detection, roc_auc
from fromzero.tokenizer import TokenizerConfig, train_tokenizer


@pytest.fixture(scope="module")
def tok():
    from fromzero.data.sources import iter_texts

    texts = [t for src in ("people_daily", "reviews_zh") for t, _ in zip(iter_texts(src), range(1500))]
    return train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=2000), show_progress=False)


@pytest.fixture(scope="module")
def corpus(tok):
    return build_sentence_corpus(["people_daily", "reviews_zh"], tok, max_docs=600)


def small_encoder(tok, **kw) -> EncoderModel:
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=64, max_seq_len=64, dropout=0.0)
    return EncoderModel(EncoderConfig(**{**cfg, **kw}))


# ------------------------------------------------------------------------------ sentence batches


def test_corpus_keeps_sentences_documents_and_people_daily_words(tok, corpus):
    assert corpus.n_docs == 1200 and corpus.n_sentences > corpus.n_docs
    first, ws = corpus.sentence(0)
    assert tok.decode(first).startswith("迈向充满希望的新世纪")
    # People's Daily words: 迈向 / 充满 / 希望 -> two characters, one word each
    assert ws[:6].tolist() == [True, False, True, False, True, False]
    train, val = corpus.split(0.1, seed=0)
    assert train.n_docs + val.n_docs == corpus.n_docs and len(train.tokens) + len(val.tokens) == len(corpus.tokens)


def test_batches_are_deterministic_and_resume_exactly(tok, corpus):
    make = lambda: SentenceBatches(corpus, tok, 4, 48, "packed", MLMMasker.for_tokenizer(tok), seed=3)  # noqa: E731
    a = make()
    it = iter(a)
    for _ in range(3):
        next(it)
    state = a.state_dict()
    expected = next(it)
    b = make()
    b.load_state_dict(state)
    got = next(iter(b))
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    batch = a.batch(0)
    assert batch["input_ids"].shape == (4, 48) and bool(batch["attention_mask"].all())  # packed rows are full
    assert (batch["input_ids"][:, 0] == tok.cls_id).all()
    # ranks split the global batch without overlap
    r0 = SentenceBatches(corpus, tok, 2, 48, seed=3, rank=0, world_size=2).batch(5)["input_ids"]
    r1 = SentenceBatches(corpus, tok, 2, 48, seed=3, rank=1, world_size=2).batch(5)["input_ids"]
    full = SentenceBatches(corpus, tok, 4, 48, seed=3).batch(5)["input_ids"]
    assert torch.equal(torch.cat([r0, r1]), full)


# ------------------------------------------------------------------------------ masked LM


def test_mlm_masking_rate_replacements_specials_and_whole_words(tok, corpus):
    masker = MLMMasker.for_tokenizer(tok, MLMConfig(whole_word=True))
    plain = SentenceBatches(corpus, tok, 64, 64, "packed", seed=1)
    masked = SentenceBatches(corpus, tok, 64, 64, "packed", masker, seed=1)
    n_maskable = n_labels = n_mask = n_keep = n_random = 0
    multi_token_words = 0
    for step in range(8):
        orig, b = plain.batch(step), masked.batch(step)
        ids, labels, words = orig["input_ids"], b["labels"], orig["word_ids"]
        assert torch.equal(words, b["word_ids"])
        is_label = labels != -100
        special = words < 0
        assert not (is_label & special).any(), "a special token or padding was selected"
        assert torch.equal(labels[is_label], ids[is_label]) and torch.equal(b["input_ids"][~is_label], ids[~is_label])
        n_maskable += int((~special).sum())
        n_labels += int(is_label.sum())
        new = b["input_ids"][is_label]
        n_mask += int((new == tok.mask_id).sum())
        n_keep += int((new == ids[is_label]).sum())
        n_random += int(((new != tok.mask_id) & (new != ids[is_label])).sum())
        for r in range(len(ids)):  # whole words: all tokens of a word share its fate
            for w in torch.unique(words[r][is_label[r]]):
                in_word = words[r] == w
                assert is_label[r][in_word].all()
                multi_token_words += int(in_word.sum() > 1)
    assert abs(n_labels / n_maskable - 0.15) < 0.01
    assert abs(n_mask / n_labels - 0.8) < 0.03
    assert abs(n_keep / n_labels - 0.1) < 0.03  # (a random draw equal to the original counts as kept)
    assert abs(n_random / n_labels - 0.1) < 0.03
    assert multi_token_words > 100  # People's Daily words really are masked whole


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_pairs_are_balanced_and_correct(tok, corpus, task):
    batches = SentenceBatches(corpus, tok, 50, 96, task, seed=2)
    flat = corpus.tokens.tobytes()
    labels = []
    for step in range(8):
        b = batches.batch(step)
        for ids, types, mask, label in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["pair_labels"]):
            ids, types = ids[mask.bool()], types[mask.bool()]
            seps = (ids == tok.sep_id).nonzero().squeeze(1).tolist()
            assert ids[0] == tok.cls_id and len(seps) == 2 and seps[1] == len(ids) - 1
            assert types[: seps[0] + 1].eq(0).all() and types[seps[0] + 1 :].eq(1).all()
            a, bb = ids[1 : seps[0]], ids[seps[0] + 1 : -1]
            ab = np.concatenate([a, bb]).astype(np.int32).tobytes()
            ba = np.concatenate([bb, a]).astype(np.int32).tobytes()
            if label == 0:  # in order: A directly followed by B somewhere in the corpus
                assert ab in flat
            elif task == "sop":  # swapped: B A is the original order
                assert ba in flat
            labels.append(int(label))
    assert 0.4 < np.mean(labels) < 0.6


def train_steps(model, objective, batches, steps: int = 40, lr: float = 2e-3) -> list[dict[str, float]]:
    """`steps` AdamW steps of `objective` on the first batches; every step's metrics as floats."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    history = []
    for _, batch in zip(range(steps), batches):
        out = objective(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    return history


def early_late(history: list[dict[str, float]], key: str) -> tuple[float, float]:
    return float(np.mean([h[key] for h in history[:5]])), float(np.mean([h[key] for h in history[-5:]]))


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_masked_lm_loss_decreases_on_real_text(tok, corpus, task):
    model = small_encoder(tok, pair_head=True)
    history = train_steps(model, MaskedLM(pair_task=task),
                          SentenceBatches(corpus, tok, 16, 64, task, MLMMasker.for_tokenizer(tok), seed=0))
    assert {"mlm_acc", f"{task}_loss", f"{task}_acc"} <= set(history[-1])
    early, late = early_late(history, "mlm_loss")
    assert late < early - 1.0


# ------------------------------------------------------------------------------ ELECTRA


def test_rtd_labels_mark_only_changed_tokens():
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[0, 3], labels[1, 0] = 6, 8, 9
    masked = ids.clone()
    masked[labels != -100] = 4  # [MASK]
    sampled = torch.tensor([6, 3, 12])  # same as original, different, different
    corrupted, replaced = corrupt(masked, labels, sampled)
    assert corrupted.tolist() == [[5, 6, 7, 3], [12, 10, 11, 0]]
    assert replaced.tolist() == [[0, 0, 0, 1], [1, 0, 0, 0]]


def test_electra_shares_embeddings_and_learns(tok, corpus):
    torch.manual_seed(0)
    model = ElectraModel(EncoderConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=64,
                                       dropout=0.0))
    gen, disc = model.generator, model.discriminator
    assert gen.emb.tok is disc.emb.tok and gen.head.decoder.weight is disc.emb.tok.weight
    assert gen.config.d_model == 16 and disc.head is None
    batches = SentenceBatches(corpus, tok, 16, 64, "packed", MLMMasker.for_tokenizer(tok), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        out = replaced_token_detection(model, batches.batch(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        assert 0.05 < out["replaced_frac"] < 0.2
    assert {"gen_loss", "gen_acc", "rtd_loss", "rtd_acc"} <= set(out)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0


def test_discriminator_learns_to_spot_random_replacements(tok, corpus, monkeypatch):
    """With uniformly random replacements (easy to spot: mostly rare tokens) the discriminator must
    rank replaced tokens above original ones after a few dozen steps: its labels line up with its inputs."""
    import fromzero.objectives.rtd as rtd

    monkeypatch.setattr(rtd, "sample_tokens", lambda logits, t=1.0: torch.randint(7, logits.shape[1], logits.shape[:1]))
    torch.manual_seed(0)
    model = ElectraModel(EncoderConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=64, max_seq_len=64,
                                       dropout=0.0, pre_ln=True))
    batches = SentenceBatches(corpus, tok, 16, 64, "packed", MLMMasker.for_tokenizer(tok), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(40):
        out = replaced_token_detection(model, batches.batch(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    held_out = SentenceBatches(corpus, tok, 32, 64, "packed", MLMMasker.for_tokenizer(tok), seed=99).fixed(2)
    assert evaluate_rtd(model, held_out)["rtd_auc"] > 0.75  # 0.5 = chance; ~0.89 here


def test_roc_auc_counts_pairs_and_ties():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.8, 0.3, 0.4])
    targets = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    pairs = [(p, n) for p in scores[targets == 1] for n in scores[targets == 0]]
    brute = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(scores, targets) == pytest.approx(brute)


# ------------------------------------------------------------------------------ contrastive


def test_info_nce_alignment_uniformity():
    z = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    loss, acc = info_nce(z, z, temperature=0.05)
    assert loss < 1e-3 and acc == 1.0
    assert alignment(z, z) < 1e-6 and alignment(z, -z) == pytest.approx(4.0)
    assert uniformity(z) < uniformity(z + 10.0)  # spread-out vectors are more uniform than a clump


def test_simcse_identical_views_without_dropout(tok, corpus):
    model = small_encoder(tok, dropout=0.1)
    batch = SentenceBatches(corpus, tok, 8, 48, "sentence", seed=0).batch(0)
    objective = SimCSE(temperature=0.05, pooling="mean")
    model.eval()
    out = objective(model, batch)
    assert out["align"] < 1e-6 and out["nce_acc"] == 1.0
    model.train()
    assert objective(model, batch)["align"] > 1e-4  # dropout makes the two views differ
    # supervised pairs: a sentence and its prefix as the positive
    sup = dict(batch, input_ids_b=batch["input_ids"][:, :10], attention_mask_b=batch["attention_mask"][:, :10])
    assert torch.isfinite(objective(model, sup)["loss"])


def test_embed_api_and_metrics(tok, corpus):
    model = small_encoder(tok)
    texts = ["今天天气很好", "我喜欢这本书，内容很好。", "中国", "这本书太差了"]
    for pooling in ("cls", "mean", "pooler"):
        e = embed(model, tok, texts, pooling=pooling, batch_size=3)
        assert e.shape == (4, 64) and torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
        torch.testing.assert_close(embed(model, tok, texts[2], pooling=pooling)[0], e[2], atol=1e-5, rtol=0)
    with pytest.raises(FromzeroError):
        embed(model, tok, [])
    m = contrastive_metrics(model, SentenceBatches(corpus, tok, 8, 48, "sentence").fixed(2), "mean")
    assert set(m) == {"alignment", "uniformity", "retrieval_accuracy", "val_loss"}


def test_knn_accuracy_and_embedding_folders(tmp_path, tok):
    from fromzero.model.encoder import save_encoder
    from fromzero.recipes.convert import convert

    noise = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    clusters = noise + 20 * torch.eye(8)[[0] * 10 + [1] * 10]
    assert knn_accuracy(clusters, torch.tensor([0] * 10 + [1] * 10), k=3) == 1.0
    model = small_encoder(tok)
    save_encoder(model, tmp_path / "enc")
    tok.save(tmp_path / "enc")
    (tmp_path / "enc" / "embedding.json").write_text('{"pooling": "mean"}')
    convert(tmp_path / "enc", tmp_path / "hf")
    assert (tmp_path / "hf" / "embedding.json").is_file()  # the recorded pooling travels along
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "bert"
    convert(tmp_path / "hf", tmp_path / "back")
    texts = ["这本书很好", "今天下雨了"]
    ours = embed_from_dir(str(tmp_path / "enc"), texts, pooling="mean")
    for d in ("hf", "back"):
        torch.testing.assert_close(embed_from_dir(str(tmp_path / d), texts, pooling="mean"), ours, atol=1e-5, rtol=0)


def test_mixture_prefixes_metrics_and_weights_losses(tok, corpus):
    model = small_encoder(tok, dropout=0.1)
    source = MixtureBatches({"mlm": SentenceBatches(corpus, tok, 4, 48, "packed", MLMMasker.for_tokenizer(tok)),
                             "simcse": SentenceBatches(corpus, tok, 4, 48, "sentence")})
    batch = next(iter(source))
    assert {"mlm.labels", "simcse.input_ids"} <= set(batch)
    torch.manual_seed(0)
    out = Mixture({"mlm": (MaskedLM(), 1.0), "simcse": (SimCSE(pooling="mean"), 0.5)})(model, batch)
    assert {"mlm.mlm_acc", "simcse.nce_acc", "simcse.loss"} <= set(out)
    torch.testing.assert_close(out["loss"].detach(), out["mlm.loss"] + 0.5 * out["simcse.loss"])
    assert source.state_dict() == {"mlm": source.sources["mlm"].state_dict(),
                                   "simcse": source.sources["simcse"].state_dict()}


def test_mixture_learns_both_objectives_on_real_text(tok, corpus):
    model = small_encoder(tok, dropout=0.1)
    source = MixtureBatches({"mlm": SentenceBatches(corpus, tok, 16, 64, "packed", MLMMasker.for_tokenizer(tok)),
                             "simcse": SentenceBatches(corpus, tok, 16, 48, "sentence")})
    history = train_steps(model, Mixture({"mlm": (MaskedLM(), 1.0), "simcse": (SimCSE(pooling="mean"), 1.0)}),
                          source, steps=60)
    for key, drop in (("mlm.loss", 1.0), ("simcse.loss", 0.3)):
        early, late = early_late(history, key)
        assert late < early - drop, (key, early, late)


# ------------------------------------------------------------------------------ supervised pairs


def test_pair_sources_and_their_errors(tmp_path):
    chat = list(iter_pairs("chat_zh"))
    assert len(chat) > 400 and all(a.strip() and b.strip() and neg is None for a, b, neg in chat)
    assert ("什么是ai", "人工智能是工程和科学的分支,致力于构建具有思维的机器。", None) in chat
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"text": "a", "positive": "b", "negative": "c"}\n\n{"text": "d", "positive": "e"}\n',
                     encoding="utf-8")
    assert list(iter_pairs(jsonl)) == [("a", "b", "c"), ("d", "e", None)]
    table = tmp_path / "pairs.csv"
    table.write_text("text,positive\nx,y\n", encoding="utf-8")
    assert list(iter_pairs(table)) == [("x", "y", None)]
    for name, body, message in [("half.jsonl", '{"text": "a"}\n', "line 1 has no text in positive"),
                                ("broken.jsonl", "{oops\n", "line 1 is not valid JSON"),
                                ("empty.csv", "text,positive\nx,\n", "line 2 has no text in positive"),
                                ("number.jsonl", '{"text": "a", "positive": "b", "negative": 3}\n', "must be a string")]:
        (tmp_path / name).write_text(body, encoding="utf-8")
        with pytest.raises(FromzeroError, match=message):
            list(iter_pairs(tmp_path / name))
    with pytest.raises(FromzeroError, match="not found"):
        iter_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(FromzeroError, match="chat_zh"):
        iter_pairs("people_daily")
    with pytest.raises(FromzeroError, match="1 of 2 text pairs have a \"negative\""):
        build_pair_corpus([str(jsonl)], train_tokenizer(["abcde"], TokenizerConfig(kind="wordpiece", vocab_size=50),
                                                        show_progress=False))


def test_pair_batches_rows_are_given_pairs_split_across_ranks(tok):
    corpus = build_pair_corpus(["chat_zh"], tok)
    assert corpus.negatives is None and len(corpus) > 400
    train, val = corpus.split(0.1, seed=0)
    assert len(train) + len(val) == len(corpus) and 0.1 <= len(val) / len(corpus) < 0.12
    assert not set(train.groups.tolist()) & set(val.groups.tolist())  # a dialog's turns stay on one side
    known = {(tuple(a[:22].tolist()), tuple(p[:22].tolist())) for a, p in zip(corpus.anchors, corpus.positives)}
    batch = PairBatches(corpus, tok, 16, 24, seed=3).batch(5)
    assert set(batch) == {"input_ids", "attention_mask", "input_ids_b", "attention_mask_b"}

    def rows(ids, mask):  # the text of each [CLS] text [SEP] row
        assert (ids[:, 0] == tok.cls_id).all() and (ids[mask == 0] == tok.pad_id).all()
        assert (ids[torch.arange(len(ids)), mask.sum(1) - 1] == tok.sep_id).all()
        return [tuple(r[1 : int(m.sum()) - 1].tolist()) for r, m in zip(ids, mask)]

    anchors, positives = rows(batch["input_ids"], batch["attention_mask"]), rows(batch["input_ids_b"],
                                                                                  batch["attention_mask_b"])
    assert all(pair in known for pair in zip(anchors, positives))  # row i of both halves is one given pair
    # no repeated text on either side, although chat_zh has 47 replies to one message ("玩笑")
    assert len(set(anchors)) == len(set(positives)) == 16 and corpus.max_batch < len(corpus)
    torch.testing.assert_close(PairBatches(corpus, tok, 16, 24, seed=3).batch(5), batch)
    halves = [PairBatches(corpus, tok, 8, 24, seed=3, rank=r, world_size=2).batch(5) for r in (0, 1)]
    assert torch.cat([h["input_ids_b"][:, :4] for h in halves]).tolist() == batch["input_ids_b"][:, :4].tolist()
    with pytest.raises(FromzeroError, match="3 text pairs .* cannot fill a batch of 4"):
        PairBatches(corpus.subset(np.arange(3)), tok, 4, 24)


def test_supervised_simcse_learns_held_out_reply_retrieval(tmp_path):
    from fromzero.config import build
    from fromzero.recipes.pretrain_encoder import EncoderPretrainConfig, run_encoder_pretrain

    cfg = build(EncoderPretrainConfig, {
        "objective": "simcse_sup", "tokenizer": {"kind": "wordpiece", "vocab_size": 1000},
        "data": {"sources": ["chat_zh"], "val_fraction": 0.1, "sentence_max_len": 32},
        "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "max_seq_len": 32, "dropout": 0.1},
        "contrastive": {"pooling": "mean"}, "metric_batches": 8,
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 80, "batch_size": 32, "eval_every": 0,
                  "eval_batches": 1, "precision": "fp32", "warmup_steps": 10, "lr": 1e-3},
    })
    summary = run_encoder_pretrain(cfg)
    before, after = summary["metrics_before_training"], summary["metrics"]
    # replies of dialogs held out of training: is its own message the nearest of the 32? (chance 1/32)
    assert after["retrieval_accuracy"] > before["retrieval_accuracy"] + 0.05, (before, after)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    assert json.loads((tmp_path / "run" / "encoder" / "embedding.json").read_text()) == {"pooling": "mean"}


# ------------------------------------------------------------------------------ the recipe runner


@pytest.mark.parametrize("objective", ["rtd", "mlm+simcse"])
def test_run_encoder_pretrain_end_to_end(tmp_path, tok, objective):
    from fromzero.config import build
    from fromzero.recipes.pretrain_encoder import EncoderPretrainConfig, run_encoder_pretrain

    tok.save(tmp_path / "tok")
    cfg = build(EncoderPretrainConfig, {
        "objective": objective, "tokenizer_path": str(tmp_path / "tok"), "metric_batches": 2,
        "data": {"sources": ["people_daily"], "max_docs": 300, "cache_dir": str(tmp_path / "cache"),
                 "val_fraction": 0.1},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 32},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 4, "eval_every": 0,
                  "eval_batches": 2, "precision": "fp32", "warmup_steps": 1},
    })
    summary = run_encoder_pretrain(cfg)
    key = "rtd_accuracy" if objective == "rtd" else "masked_token_accuracy"
    assert summary["steps"] == 3 and 0.0 <= summary["metrics"][key] <= 1.0
    if objective == "mlm+simcse":
        assert "uniformity" in summary["metrics"]
    enc = load_encoder(tmp_path / "run" / "encoder")
    assert enc.config.d_model == 32 and (enc.head is None) == (objective == "rtd")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["objective"] == objective
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").glob("sentences-*.npz"))
