"""One generation path for encoder-decoders too: fromzero.infer on a T5 model equals transformers'
generate token for token, shares the decoders' sampler, and `fromzero generate` runs on a T5 folder."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from fromzero.infer import GenerationConfig, generate, generate_ids
from fromzero.model.encoder_decoder import EncoderDecoderLM, T5Config
from fromzero.model.hf.t5 import save_hf_t5

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

V, EOS = 120, 1


def tiny_t5(tie: bool, seed: int = 0) -> EncoderDecoderLM:
    """A random fromzero T5 whose larger matrices make greedy decoding visit many tokens (T5's own
    init repeats one token, which would make the parity below vacuous)."""
    torch.manual_seed(seed)
    ff = "relu" if tie else "gated-gelu"
    model = EncoderDecoderLM(T5Config(vocab_size=V, d_model=64, d_kv=16, d_ff=96, n_layer=2, n_head=4,
                                      feed_forward=ff, tie_embeddings=tie, eos_id=EOS)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # not all ones, so a misplaced norm weight would show
                p.add_(torch.randn_like(p) * 0.1)
            elif name != "shared.weight":
                p.mul_(4.0 if tie else 2.0)
    return model


def padded_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(2, V, (3, 15), generator=g)
    mask = torch.ones_like(x)
    mask[1, 10:] = 0
    mask[2, 6:] = 0
    x[:, -1] = EOS
    x[1, 9], x[2, 5] = EOS, EOS
    return x.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("tie", [True, False], ids=["v1.0", "v1.1"])
@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_equals_transformers_generate_on_the_export(tmp_path, tie, penalty):
    ours = tiny_t5(tie)
    save_hf_t5(ours, tmp_path)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    x, mask = padded_inputs()
    want = hf.generate(input_ids=x, attention_mask=mask, max_new_tokens=12, do_sample=False, num_beams=1,
                       repetition_penalty=penalty, eos_token_id=EOS, pad_token_id=0)[:, 1:]
    got = generate_ids(ours, x, GenerationConfig(max_new_tokens=12, temperature=0, repetition_penalty=penalty),
                       eos_id=EOS, pad_id=0, attention_mask=mask)
    assert torch.equal(got, want[:, : got.shape[1]]) and got.shape[1] == want.shape[1]
    assert len(set(got.flatten().tolist())) > 4  # many distinct tokens: the check is not vacuous


def test_sampling_uses_the_one_sampler_and_the_encoder_runs_once(monkeypatch):
    model = tiny_t5(tie=True)
    x, mask = padded_inputs()
    gen = GenerationConfig(max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    a = generate_ids(model, x, gen, eos_id=EOS, pad_id=0, attention_mask=mask)
    assert len(calls) == 1
    # the model's own batch loop draws from the same sampler with the same generator: same tokens
    b = model.generate_ids(x, mask, max_new_tokens=10, temperature=1.0, top_k=20, top_p=0.9, eos_id=EOS, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, generate_ids(model, x, GenerationConfig(max_new_tokens=10, seed=4), eos_id=EOS,
                                           attention_mask=mask))


class CharTok:
    """Characters as tokens (ids from 4), with T5-style specials: pad 0, eos 1."""

    eos_id, bos_id = EOS, None

    def encode(self, text: str) -> list[int]:
        return [4 + (ord(c) % (V - 4)) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(0x4E00 + i) for i in ids if i >= 4)


def test_generate_text_is_the_decoded_answer_to_prompt_eos():
    model, tok = tiny_t5(tie=False), CharTok()
    text = generate(model, tok, "今天天气", GenerationConfig(max_new_tokens=8, temperature=0))
    ids = model.generate_ids(torch.tensor([[*tok.encode("今天天气"), EOS]]), max_new_tokens=8, eos_id=EOS)[0]
    assert text == tok.decode([i for i in ids.tolist() if i != EOS]) and len(text) > 0


def test_cli_generate_on_a_t5_folder(tmp_path):
    from fromzero.data.sources import iter_texts
    from fromzero.tokenizer import TokenizerConfig, train_tokenizer

    texts = [t for t, _ in zip(iter_texts("people_daily"), range(300))]
    tok = train_tokenizer(texts, TokenizerConfig(kind="bpe", vocab_size=600), show_progress=False)
    torch.manual_seed(0)
    model = EncoderDecoderLM(T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, n_layer=1, n_head=2,
                                      pad_id=tok.pad_id, decoder_start_id=tok.pad_id, eos_id=tok.eos_id))
    save_hf_t5(model, tmp_path)  # as `fromzero pretrain --config pretrain/t5-span-zh` exports it
    tok.save(tmp_path)
    r = subprocess.run([sys.executable, "-m", "fromzero", "generate", "--model", str(tmp_path), "--temperature",
                        "0", "--max-new-tokens", "6", "--dtype", "float32"], input="中国经济\n人民日报\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    gen = GenerationConfig(max_new_tokens=6, temperature=0)
    want = [generate(model.eval(), tok, p, gen) for p in ("中国经济", "人民日报")]
    assert lines == [f"中国经济\t{want[0]}", f"人民日报\t{want[1]}"]
