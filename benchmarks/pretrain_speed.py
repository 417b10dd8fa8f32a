"""Pretraining tokens/s: fromzero's encoder (masked LM) and encoder-decoder (span corruption) vs
transformers' BertForMaskedLM and T5ForConditionalGeneration, same weights, same batch, one run.

    python benchmarks/pretrain_speed.py                    # bert-mlm + t5-span; fp32, bf16
    python benchmarks/pretrain_speed.py --arch bert-mlm --modes fp32 --reps 8
    python benchmarks/pretrain_speed.py --arch t5-span --modes bf16 --profile   # + top ops, ratio ceiling
    python benchmarks/pretrain_speed.py --arch t5-span --modes bf16 --compile   # both models under torch.compile

bert-mlm: post-LN BERT, 6 layers, d_model 384, 6 heads, d_ff 1536, vocab 8192, batch 32 x 128
(MLMMasker: 15% of the tokens, 80/10/10 [MASK]/random/kept). t5-span: T5 v1.1 (gated-GELU, tied
head), 4 + 4 layers, d_model 256, 4 heads of 64, d_ff 1024, vocab 8192, batch 32 x 128 encoder
tokens (span_corrupt: 15% noise, mean span 3; 29 decoder tokens). Dropout 0 everywhere.

The transformers model is built from fromzero's export of the fromzero model, and the losses on
the batch must agree (1e-4, fp32) before anything is timed, so both compute the same function on
the same numbers (how differs: e.g. fromzero's MLM head only runs at the masked positions, BERT's
at all of them). Random token ids stand in for text: speed does not depend on them. Each step is
forward + backward + AdamW; tokens/s counts encoder tokens; the two models' steps are interleaved.
"""

from __future__ import annotations

import argparse
import copy
from typing import Callable

import numpy as np
import torch
from common import ENCODER_SIZE, T5_SIZE, fromzero_encoder, fromzero_t5, hf_bert, hf_t5, interleaved, training_step

from fromzero.data.sentences import collate as collate_rows
from fromzero.data.seq2seq_batches import collate as collate_pairs
from fromzero.objectives.mlm import MLMMasker
from fromzero.objectives.span import span_corrupt, span_lengths
from fromzero.tokenizer import SPECIAL

BATCH, SEQ = 32, 128
PAD, EOS, MASK, CLS, SEP = (SPECIAL.index(t) for t in ("<pad>", "</s>", "<mask>", "<cls>", "<sep>"))
N_SENTINELS = 100  # <extra_id_i> = vocab_size - 1 - i, as add_sentinels lays them out

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


def mlm_batch(vocab: int) -> Batch:
    """[CLS] random tokens [SEP] rows (every token a word of its own), masked by MLMMasker."""
    masker = MLMMasker(MASK, vocab, range(len(SPECIAL)))
    rows = []
    for r in range(BATCH):
        rng = np.random.default_rng([0, r])
        ids = np.concatenate([[CLS], rng.integers(len(SPECIAL), vocab, SEQ - 2), [SEP]])
        words = np.concatenate([[-1], np.arange(SEQ - 2), [-1]])
        row = {"input_ids": ids, "token_type_ids": np.zeros(SEQ, dtype=np.int64), "word_ids": words}
        rows.append(masker(row, np.random.default_rng([1, r])))
    return collate_rows(rows, PAD)


def span_batch(vocab: int) -> Batch:
    """Random windows span-corrupted to exactly SEQ encoder tokens (no sentinel ids in the text)."""
    window, _ = span_lengths(SEQ)
    pairs = []
    for r in range(BATCH):
        rng = np.random.default_rng([0, r])
        tokens = rng.integers(len(SPECIAL), vocab - N_SENTINELS, window)
        pairs.append(span_corrupt(tokens, np.random.default_rng([1, r]), vocab - 1, EOS, n_sentinels=N_SENTINELS))
    return collate_pairs(pairs, PAD, decoder_start_id=PAD)


def bert_losses() -> tuple[LossFn, LossFn]:
    def hf(m: torch.nn.Module, b: Batch) -> torch.Tensor:
        return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                 labels=b["labels"]).loss

    def fz(m: torch.nn.Module, b: Batch) -> torch.Tensor:
        return m(b["input_ids"], b["attention_mask"], b["token_type_ids"], labels=b["labels"]).loss

    return hf, fz


def t5_losses() -> tuple[LossFn, LossFn]:
    def hf(m: torch.nn.Module, b: Batch) -> torch.Tensor:
        return m(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                 decoder_input_ids=b["decoder_input_ids"], labels=b["labels"]).loss

    def fz(m: torch.nn.Module, b: Batch) -> torch.Tensor:
        return m(b["input_ids"], b["attention_mask"], b["decoder_input_ids"], b["labels"])[1]

    return hf, fz


def setup(arch: str) -> tuple[dict[str, torch.nn.Module], dict[str, LossFn], Batch]:
    """Both models (fromzero's and its transformers copy, train mode), their losses and the batch."""
    torch.manual_seed(0)
    if arch == "bert-mlm":
        fz = fromzero_encoder()
        hf, batch, (hf_loss, fz_loss) = hf_bert(fz), mlm_batch(ENCODER_SIZE["vocab_size"]), bert_losses()
    else:
        fz = fromzero_t5()
        hf, batch, (hf_loss, fz_loss) = hf_t5(fz), span_batch(T5_SIZE["vocab_size"]), t5_losses()
    hf.train(), fz.train()
    return {"hf": hf, "fz": fz}, {"hf": hf_loss, "fz": fz_loss}, batch


def check_parity(arch: str, models: dict[str, torch.nn.Module], losses: dict[str, LossFn], batch: Batch) -> None:
    """The fp32 losses must match: otherwise the two would not be computing the same thing."""
    with torch.no_grad():
        got = {k: float(losses[k](models[k], batch)) for k in models}
    diff = abs(got["hf"] - got["fz"])
    print(f"{arch} fp32 loss: HF {got['hf']:.6f}  fromzero {got['fz']:.6f}  |diff| {diff:.1e}", flush=True)
    assert diff < 1e-4, f"{arch}: the models disagree on the batch's loss ({got}); the comparison would be unfair"


def make_step(model: torch.nn.Module, loss_fn: LossFn, batch: Batch, bf16: bool) -> Callable[[], None]:
    return training_step(model, lambda: loss_fn(model, batch), bf16)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", nargs="+", choices=["bert-mlm", "t5-span"], default=["bert-mlm", "t5-span"])
    p.add_argument("--modes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--profile", action="store_true", help="then profile 3 steps of each model (torch profiler)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (the warmup steps compile)")
    args = p.parse_args()
    setups = {arch: setup(arch) for arch in args.arch}
    for arch, s in setups.items():
        check_parity(arch, *s)
    print(f"{'arch':<9} {'mode':<5} {'HF tok/s':>9} {'fromzero':>9} {'ratio':>6}")
    for arch, (models, losses, batch) in setups.items():
        tokens = batch["input_ids"].numel()
        for mode in args.modes:
            fresh = copy.deepcopy(models)  # every mode starts from the checked weights, with new optimizers
            run = {k: torch.compile(m) for k, m in fresh.items()} if args.compile else fresh
            steps = {k: make_step(m, losses[k], batch, mode == "bf16") for k, m in run.items()}
            med = interleaved(steps, args.warmup, args.reps)
            tps = {k: tokens / v for k, v in med.items()}
            print(f"{arch:<9} {mode:<5} {tps['hf']:>9,.0f} {tps['fz']:>9,.0f} {tps['fz'] / tps['hf']:>5.2f}x",
                  flush=True)
            if args.profile:
                gemm = {}
                for name, step in steps.items():
                    print(f"\n{arch} {mode} {'transformers' if name == 'hf' else 'fromzero'}, 3 steps:")
                    table, gemm[name] = profile_step(step)
                    print(table)
                print(f"{arch} {mode}: matrix multiplies alone take {gemm['fz'] * 1e3:.0f} ms/step in fromzero "
                      f"({gemm['hf'] * 1e3:.0f} in transformers), whose whole step takes {med['hf'] * 1e3:.0f} ms: "
                      f"with these multiplies fromzero cannot beat it by more than {med['hf'] / gemm['fz']:.2f}x\n")


GEMMS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm"}


def profile_step(step: Callable[[], None], steps: int = 3, rows: int = 15) -> tuple[str, float]:
    """The ops that take the most CPU time over `steps` training steps, and the seconds per step
    spent in matrix multiplies (the floor under any step that does the same multiplies)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = prof.key_averages()
    gemm = sum(e.self_cpu_time_total for e in ops if e.key in GEMMS) / 1e6 / steps
    return ops.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40), gemm


if __name__ == "__main__":
    main()
