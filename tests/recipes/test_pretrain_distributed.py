"""Every pretraining objective under `torchrun --nproc_per_node 2` (gloo, CPU), through the CLI.

DDP fails a step when a parameter that needs a gradient gets none, which a single process never
notices; so each objective runs two real steps in two processes on a slice of the built-in reviews
(or chat pairs), with a tiny model. One thread per process: two processes share the two cores.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch.distributed

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

ENCODER = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.max_seq_len=32", "metric_batches=1"]
SEQ2SEQ = ["model.n_layer=1", "model.n_decoder_layer=1", "model.d_model=32", "model.d_kv=16", "model.n_head=2",
           "model.d_ff=64", "seq_len=32"]
DECODER = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.max_seq_len=32"]

# objective -> (recipe, overrides): every entry of fromzero.objectives.registry.OBJECTIVES
CASES = {
    "clm": ("pretrain/gpt-tiny-zh", DECODER),
    "mlm": ("pretrain/bert-mlm-zh", ENCODER),
    "mlm_nsp": ("pretrain/bert-mlm-zh", ["objective=mlm_nsp", *ENCODER]),
    "mlm_sop": ("pretrain/bert-mlm-zh", ["objective=mlm_sop", *ENCODER]),
    "rtd": ("pretrain/electra-rtd-zh", ENCODER),
    "simcse": ("pretrain/simcse-zh", ENCODER),
    "simcse_sup": ("pretrain/simcse-sup-zh", ENCODER),
    "mlm+simcse": ("pretrain/bert-mlm-simcse-zh", ENCODER),
    "span": ("pretrain/t5-span-zh", SEQ2SEQ),
    "denoise": ("pretrain/bart-denoise-zh", SEQ2SEQ),
}


def test_every_objective_has_a_case():
    from fromzero.objectives.registry import OBJECTIVES

    assert set(CASES) == set(OBJECTIVES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fromzero.corpora import iter_conversations, iter_reviews_labeled

    root = tmp_path_factory.mktemp("ddp")
    docs = root / "docs.txt"
    docs.write_text("\n\n".join(t for t, _ in itertools.islice(iter_reviews_labeled(), 300)) + "\n", encoding="utf-8")
    pairs = [{"text": a, "positive": b} for turns in itertools.islice(iter_conversations("zh"), 40)
             for a, b in zip(turns, turns[1:])]
    pair_file = root / "pairs.jsonl"
    pair_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return root, docs, pair_file


@pytest.mark.parametrize("objective", list(CASES))
def test_pretrain_under_torchrun(objective, data):
    root, docs, pairs = data
    recipe, overrides = CASES[objective]
    out = root / objective.replace("+", "_")
    source = pairs if objective == "simcse_sup" else docs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fromzero", "pretrain", "--config", recipe, *overrides,
           f"data.sources=[{source}]", f"data.cache_dir={root / 'cache'}", f"train.out_dir={out}",
           "tokenizer.vocab_size=400", "train.max_steps=2", "train.batch_size=4", "train.eval_every=0",
           "train.eval_batches=1", "train.max_minutes=null", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]
    assert run.returncode == 0, "\n".join(errors[-5:]) or run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 2 and summary["world_size"] == 2
