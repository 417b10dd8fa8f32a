"""EncoderModel (BERT-style) and Hugging Face BERT import/export parity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import fromzero
from fromzero.errors import FromzeroError
from fromzero.model.encoder import EncoderConfig, EncoderModel, load_encoder, save_encoder
from fromzero.model.hf.bert import load_hf_bert, save_hf_bert

transformers = pytest.importorskip("transformers")
ATOL = 1e-4


def tiny(**kw) -> EncoderModel:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, n_layer=2, n_head=4, d_model=64, max_seq_len=32, dropout=0.0)
    return EncoderModel(EncoderConfig(**{**cfg, **kw})).eval()


def inputs(B: int = 3, T: int = 12, V: int = 97):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, 6:] = 1
    return ids, mask, types


# ------------------------------------------------------------------------------ the model


def test_shapes_and_mlm_loss_on_labelled_positions_only():
    m = tiny()
    ids, mask, types = inputs()
    h = m.hidden_states(ids, mask, types)
    assert h.shape == (3, 12, 64)
    assert m.pooled(ids, mask, types).shape == (3, 64)
    out = m(ids, mask, types)
    assert out.logits.shape == (3, 12, 97) and out.loss is None
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4] = ids[0, 2], ids[1, 4]
    out2 = m(ids, mask, types, labels=labels)
    assert out2.logits.shape == (2, 97)
    ref = torch.nn.functional.cross_entropy(out.logits[[0, 1], [2, 4]], ids[[0, 1], [2, 4]])
    torch.testing.assert_close(out2.loss, ref)
    torch.testing.assert_close(out2.logits, out.logits[[0, 1], [2, 4]])


def test_padding_does_not_change_real_positions():
    m = tiny()
    ids, _, types = inputs()
    ids, types = ids[:1, :8], types[:1, :8]
    short = m.hidden_states(ids, None, types)
    padded_ids = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 5)], 1).long()
    long = m.hidden_states(padded_ids, mask, torch.cat([types, torch.zeros(1, 5, dtype=torch.long)], 1))
    torch.testing.assert_close(long[:, :8], short, atol=1e-5, rtol=1e-5)


def test_inputs_embeds_equal_token_lookup():
    # prompt tuning feeds vectors instead of ids: looked-up vectors must give the same states
    m = tiny()
    ids, mask, types = inputs()
    torch.testing.assert_close(m.hidden_states(None, mask, types, inputs_embeds=m.emb.tok(ids)),
                               m.hidden_states(ids, mask, types))


def test_pre_ln_variant_tied_head_and_accounting():
    m = tiny(pre_ln=True)
    assert m.final_norm is not None
    assert m.head.decoder.weight is m.emb.tok.weight
    assert m.num_params() == sum(p.numel() for p in set(m.parameters()))
    assert torch.isfinite(m(*inputs()).logits).all()
    assert m.flops_per_token(head_fraction=0.15) < m.flops_per_token()
    with pytest.raises(FromzeroError, match="max_seq_len"):
        m.hidden_states(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(FromzeroError, match="divisible"):
        EncoderConfig(d_model=65, n_head=4)


def test_save_load_encoder_roundtrip(tmp_path):
    m = tiny(pair_head=True)
    save_encoder(m, tmp_path / "enc")
    back = load_encoder(tmp_path / "enc").eval()
    ids, mask, types = inputs()
    a, b = m(ids, mask, types), back(ids, mask, types)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    torch.testing.assert_close(a.pair_logits, b.pair_logits, atol=0, rtol=0)
    assert back.head.decoder.weight is back.emb.tok.weight
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    cfg["d_ff"] = 128
    (tmp_path / "enc" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FromzeroError, match=r"blocks\.0\.mlp\.down\.weight.*\(64, 256\)"):
        load_encoder(tmp_path / "enc")


# ------------------------------------------------------------------------------ Hugging Face parity


def hf_bert(kind: str = "BertForMaskedLM"):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32)
    return getattr(transformers, kind)(cfg).eval()


def test_import_hf_bert_matches_transformers(tmp_path):
    ref = hf_bert()
    ref.save_pretrained(tmp_path / "hf")
    with pytest.warns(UserWarning, match="pooler"):  # BertForMaskedLM files have no pooler
        ours = load_hf_bert(tmp_path / "hf").eval()
    ids, mask, types = inputs()
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        o = ours(ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(o.hidden[real], r.hidden_states[-1][real], atol=ATOL, rtol=0)
    torch.testing.assert_close(o.logits[real], r.logits[real], atol=ATOL, rtol=0)


def test_export_loads_in_transformers_with_same_outputs(tmp_path):
    ours = tiny(vocab_size=97, d_ff=128, pair_head=True)
    save_hf_bert(ours, tmp_path / "out")
    ids, mask, types = inputs()
    real = mask.bool()
    with torch.no_grad():
        o = ours(ids, mask, types)
        mlm = transformers.BertForPreTraining.from_pretrained(tmp_path / "out").eval()
        r = mlm(input_ids=ids, attention_mask=mask, token_type_ids=types)
        base = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
        b = base(input_ids=ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(r.prediction_logits[real], o.logits[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(r.seq_relationship_logits, o.pair_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(b.last_hidden_state[real], o.hidden[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(b.pooler_output, o.pooled, atol=ATOL, rtol=0)
    # and back again, through from_pretrained's BERT loader
    again = fromzero.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(again(ids, mask, types).logits, o.logits, atol=1e-6, rtol=0)


def test_bad_hf_folders_name_the_problem(tmp_path):
    ref = hf_bert("BertModel")
    ref.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(path))
    key = "encoder.layer.1.intermediate.dense.weight"
    save_file({**state, key: state[key][:100].contiguous()}, str(path))
    with pytest.raises(FromzeroError, match=r"bert\.encoder\.layer\.1\.intermediate\.dense\.weight"):
        load_hf_bert(tmp_path / "hf")
    key = "encoder.layer.0.attention.self.key.weight"  # a wrong input width used to crash in torch.cat
    save_file({**state, key: state[key][:, :40].contiguous()}, str(path))
    with pytest.raises(FromzeroError, match=r"'bert\.encoder\.layer\.0\.attention\.self\.key\.weight' has shape "
                                            r"\(64, 40\) but config.json implies \(64, 64\)"):
        load_hf_bert(tmp_path / "hf")
    save_file({**state, "encoder.layer.0.attention.self.rel_bias": torch.zeros(3)}, str(path))
    with pytest.raises(FromzeroError, match="rel_bias"):
        load_hf_bert(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    with pytest.raises(FromzeroError, match="hidden_act"):
        load_hf_bert(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(FromzeroError, match="roberta"):
        load_hf_bert(tmp_path / "hf")
    with pytest.raises(FromzeroError, match="pre_ln"):
        save_hf_bert(tiny(pre_ln=True), tmp_path / "x")
