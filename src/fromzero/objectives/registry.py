"""Every pretraining objective by name, with the model family it trains.

The pretraining recipes dispatch on this table, and their configs validate `objective` against it,
so adding an objective is one entry here plus its module (and its branch in the family's runner).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fromzero.errors import FromzeroError

Family = Literal["decoder", "encoder", "encoder_decoder"]


@dataclass(frozen=True)
class ObjectiveSpec:
    family: Family
    description: str


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "clm": ObjectiveSpec("decoder", "causal language modelling: predict the next token (GPT, Llama)"),
    "mlm": ObjectiveSpec("encoder", "masked language modelling (BERT)"),
    "mlm_nsp": ObjectiveSpec("encoder", "MLM + next-sentence prediction (BERT)"),
    "mlm_sop": ObjectiveSpec("encoder", "MLM + sentence-order prediction (ALBERT)"),
    "rtd": ObjectiveSpec("encoder", "replaced-token detection with a small generator (ELECTRA)"),
    "simcse": ObjectiveSpec("encoder", "unsupervised contrastive sentence embeddings, dropout as noise (SimCSE)"),
    "simcse_sup": ObjectiveSpec("encoder", "supervised SimCSE on (sentence, paraphrase) pairs"),
    "mlm+simcse": ObjectiveSpec("encoder", "a weighted mixture of MLM and SimCSE batches"),
    "span": ObjectiveSpec("encoder_decoder", "span corruption: fill in sentinel-masked spans (T5)"),
    "denoise": ObjectiveSpec("encoder_decoder", "denoising: rebuild shuffled, masked sentences (BART)"),
}


def objectives_for(family: Family) -> tuple[str, ...]:
    return tuple(name for name, spec in OBJECTIVES.items() if spec.family == family)


def objective_spec(name: str) -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise FromzeroError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
