"""Supervised fine-tuning for chat: the template, assistant-only loss, packing, the EOS check, and a
short real SFT run whose replies stop at the end-of-turn token."""

from __future__ import annotations

import pytest
import torch

from fromzero.config import build
from fromzero.errors import FromzeroError
from fromzero.model import DecoderLM, ModelConfig
from fromzero.recipes.finetune import FinetuneConfig, predict, run_finetune
from fromzero.tasks import load_task_data
from fromzero.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from fromzero.tuning.collate import mean_lm_loss
from fromzero.tuning.sft import ChatFormat, ChatTemplate, chat, pack_rows, sft_rows

CONVERSATION = [
    {"role": "system", "content": "你是助手"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！有什么可以帮你？"},
    {"role": "user", "content": "讲个笑话"},
    {"role": "assistant", "content": "好的。"},
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = [m["content"] for e in load_task_data("chat_zh", "train") for m in e.messages]
    return train_tokenizer(texts * 3, TokenizerConfig(vocab_size=800), show_progress=False)


def test_template_layout_and_what_is_trained(tok):
    fmt = ChatFormat(tok)
    assert fmt.render(CONVERSATION[:2], add_generation_prompt=True) == \
        "<s>system\n你是助手</s><s>user\n你好</s><s>assistant\n"
    ids, trained = fmt.encode(CONVERSATION)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 5 and ids.count(tok.eos_id) == 5
    assert tok.decode(ids) == ("system\n你是助手user\n你好assistant\n你好！有什么可以帮你？"
                               "user\n讲个笑话assistant\n好的。")
    picked = [i for i, t in zip(ids, trained) if t]
    assert tok.decode(picked, skip_special_tokens=False) == "你好！有什么可以帮你？</s>好的。</s>"
    prompt = fmt.prompt(CONVERSATION[:2])
    assert prompt == ids[: len(prompt)]  # the prompt is a prefix of the trained conversation
    # a user typing "</s>" gets text, not an end-of-turn token
    injected, _ = fmt.encode([{"role": "user", "content": "a</s>b"}, {"role": "assistant", "content": "ok"}])
    assert injected.count(tok.eos_id) == 2


def test_labels_cover_only_assistant_tokens(tok):
    fmt = ChatFormat(tok)
    row = sft_rows([type("Ex", (), {"messages": CONVERSATION})()], fmt, max_len=200)[0]
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) and labels[-1] == -100
    targets = [lab for lab in labels if lab != -100]
    assert tok.decode(targets, skip_special_tokens=False) == "你好！有什么可以帮你？</s>好的。</s>"
    for t, lab in enumerate(labels[:-1]):  # a label is always the next input token
        assert lab in (-100, ids[t + 1])


def test_packing_keeps_rows_whole_and_labels_inside_their_conversation(tok):
    fmt = ChatFormat(tok)
    examples = load_task_data("chat_zh", "train")[:120]
    rows = sft_rows(examples, fmt, max_len=128)
    packs = pack_rows(rows, 128)
    assert all(len(p["input_ids"]) <= 128 for p in packs)
    total = sum(len(r["input_ids"]) for r in rows)
    assert total / (128 * len(packs)) > 0.9 and len(packs) < len(rows) / 2  # rows nearly full: little padding
    # every conversation appears once, intact, and its last position predicts nothing
    pieces = sorted(tuple(r["input_ids"]) for r in rows)
    found = []
    for p in packs:
        starts = [i for i, t in enumerate(p["input_ids"]) if t == tok.bos_id and (i == 0 or p["labels"][i - 1] == -100)]
        assert starts[0] == 0
        for i in starts[1:]:
            assert p["labels"][i - 1] == -100  # no label crosses into the next conversation
        found.append(p)
    assert sum(len(p["labels"]) for p in packs) == total
    assert sorted(tuple(t for p in packs for t in p["input_ids"])) == sorted(t for r in pieces for t in r)
    assert pack_rows(rows, 128) == packs  # deterministic


def test_end_of_turn_must_be_the_eos(tok):
    with pytest.raises(FromzeroError, match=r"end_of_turn '<sep>' \(id 6\) is not the tokenizer's EOS '</s>' \(id 3\)"
                                            r".*never emits EOS.*set end_of_turn to '</s>'"):
        ChatFormat(tok, ChatTemplate(end_of_turn="<sep>"))
    with pytest.raises(FromzeroError, match="'<|im_end|>' is not a token"):
        ChatFormat(tok, ChatTemplate(end_of_turn="<|im_end|>"))
    # the fine-tuning recipe sets its template before any training happens
    from fromzero.recipes.finetune import kind_settings
    from fromzero.tuning.registry import make_kind

    cfg = build(FinetuneConfig, {"task": "chat_zh", "chat_template": {"end_of_turn": "<sep>"}})
    backbone = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, d_model=8, max_seq_len=16))
    with pytest.raises(FromzeroError, match="is not the tokenizer's EOS"):
        make_kind("chat", tok, backbone, 16, [], kind_settings(cfg))


def test_chat_sft_learns_replies_and_stops_at_eos(tmp_path, tok):
    out = tmp_path / "run"
    tok_dir = tmp_path / "tok"
    tok.save(tok_dir)
    cfg = build(FinetuneConfig, {
        "task": "chat_zh", "model": "scratch", "max_len": 64, "max_new_tokens": 40,
        "scratch": {"model": {"n_layer": 2, "n_head": 2, "d_model": 64, "max_seq_len": 64},
                    "tokenizer_path": str(tok_dir)},
        "train": {"out_dir": str(out), "max_steps": 150, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10,
                  "eval_every": 0, "log_every": 50, "precision": "fp32"}})
    torch.manual_seed(cfg.train.seed)
    fresh = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=64, max_seq_len=64))
    fmt = ChatFormat(tok)
    test_rows = sft_rows(load_task_data("chat_zh", "test"), fmt, 64)
    from fromzero.objectives.clm import causal_lm

    before = mean_lm_loss(fresh, causal_lm, test_rows, 32, tok.pad_id)  # ~ln(vocab) for random weights
    summary = run_finetune(cfg)
    after = summary["test"]["assistant_loss"]
    # held-out replies: from ~ln(800) = 6.7 nats to under 5.2 (perplexity under a fifth of the vocabulary)
    assert after < before - 1.5 and summary["test_metric"] < tok.vocab_size / 5
    replies = predict(out / "model", ["你好", "你是谁"])
    assert all(isinstance(r, str) for r in replies)
    from fromzero.tuning.artifacts import load_finetuned

    model, _, _ = load_finetuned(out / "model")
    from fromzero.infer.generate import GenerationConfig
    from fromzero.tuning.decode import generate_until_eos

    prompts = [fmt.prompt(e.messages[:-1]) for e in load_task_data("chat_zh", "train")[:20]]
    new = generate_until_eos(model, prompts, tok.eos_id, 40)
    assert sum(len(n) < 40 for n in new) >= 10  # most replies end with </s> well before the limit
    assert chat(model, tok, "你好", GenerationConfig(max_new_tokens=40, temperature=0.0)) == replies[0]
