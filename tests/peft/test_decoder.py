"""PEFT methods on fromzero's own decoder: the model-side hooks (inputs_embeds, prefix_kv, hidden_states)."""

import pytest
import torch

from fromzero.infer.generate import GenerationConfig, generate_ids
from fromzero.model import DecoderLM, ModelConfig
from fromzero.peft import PeftConfig, apply_peft, trainable_parameters


def tiny(arch: str) -> DecoderLM:
    torch.manual_seed(0)
    kv = {"n_kv_head": 1} if arch == "llama" else {}
    return DecoderLM(ModelConfig(arch=arch, vocab_size=97, n_layer=2, n_head=2, d_model=32, max_seq_len=48, **kv))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hidden_states_feed_the_lm_head(arch):
    m = tiny(arch).eval()
    x = torch.randint(0, 97, (2, 10))
    h = m.hidden_states(x)
    assert h.shape == (2, 10, 32)
    torch.testing.assert_close(m.lm_head(h), m(x)[0])
    torch.testing.assert_close(m.hidden_states(inputs_embeds=m.tok_emb(x)), h)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["prefix", "prompt", "lora", "ia3", "adapter"])
def test_each_method_trains_only_its_parameters(arch, method):
    m = apply_peft(tiny(arch), PeftConfig(method=method, num_virtual_tokens=4))
    trainable, total = trainable_parameters(m)
    assert 0 < trainable < total
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(0, 97, (4, 12))
    for _ in range(3):
        loss = m(x, labels=x)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in m.named_parameters() if not torch.equal(before[n], p.detach())}
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert changed and not (changed & frozen)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prefix_tuning_cached_generation_equals_uncached(arch):
    m = apply_peft(tiny(arch), PeftConfig(method="prefix", num_virtual_tokens=3))
    for block in m.blocks:  # make the prefix matter
        pk, pv = block.attn.prefix_kv
        block.attn.prefix_kv = (torch.randn_like(pk), torch.randn_like(pv))
    m.eval()
    x = torch.randint(0, 97, (2, 6))
    cached = generate_ids(m, x, GenerationConfig(max_new_tokens=8, temperature=0))
    seq = x
    with torch.no_grad():
        for _ in range(8):  # uncached greedy: re-run the whole sequence each step
            nxt = m(seq)[0][:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)
