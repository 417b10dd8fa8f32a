"""Encoder pretraining, end to end: tokenizer -> sentence corpus -> encoder -> objective -> trainer -> artifacts.

`run_encoder_pretrain(cfg)` runs one of the classic encoder objectives on built-in or user text:

    mlm          masked LM (BERT; whole-word masking for Chinese)
    mlm_nsp      masked LM + next-sentence prediction (original BERT)
    mlm_sop      masked LM + sentence-order prediction (ALBERT)
    rtd          replaced-token detection (ELECTRA): small generator + discriminator
    simcse       unsupervised SimCSE sentence embeddings (dropout as noise)
    simcse_sup   supervised SimCSE on given text pairs (data.sources: chat_zh/chat_en or pair files)
    mlm+simcse   both on one encoder, weighted (cfg.mixture)

It writes the trainer's checkpoints plus `<out_dir>/encoder/` (the encoder to keep - for rtd the
discriminator - with tokenizer.json), and returns a summary with the objective's own held-out
metric: masked-token accuracy, NSP/SOP accuracy, RTD accuracy, or alignment/uniformity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from fromzero.config import to_dict
from fromzero.data.pairs import PairBatches, PairCorpus, build_pair_corpus, iter_pairs
from fromzero.data.sentences import SentenceBatches, SentenceCorpus, build_sentence_corpus
from fromzero.data.sources import CORPUS_VERSION, source_files
from fromzero.errors import FromzeroError
from fromzero.model.encoder import EncoderConfig, EncoderModel, load_encoder, save_encoder
from fromzero.objectives.contrastive import ContrastiveConfig, SimCSE, contrastive_metrics, embed, knn_accuracy
from fromzero.objectives.mixture import Mixture, MixtureBatches
from fromzero.objectives.mlm import MaskedLM, MLMConfig, MLMMasker, evaluate_mlm
from fromzero.objectives.registry import objectives_for
from fromzero.objectives.rtd import ElectraModel, RTDConfig, evaluate_rtd, replaced_token_detection
from fromzero.recipes._common import run_ranked
from fromzero.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer
from fromzero.train.distributed import DistributedContext
from fromzero.train.trainer import TrainConfig, Trainer

Objective = Literal["mlm", "mlm_nsp", "mlm_sop", "rtd", "simcse", "simcse_sup", "mlm+simcse"]


@dataclass
class EncoderDataConfig:
    sources: list[str] = field(default_factory=lambda: ["people_daily", "reviews_zh"])
    val_fraction: float = 0.02  # held-out documents
    max_docs: int | None = None  # per source; None = all
    sentence_max_len: int = 64  # row length for sentence-level objectives (simcse, simcse_sup)
    cache_dir: str = ".cache/fromzero"


@dataclass
class EncoderPretrainConfig:
    objective: Objective = "mlm"
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(kind="wordpiece"))
    tokenizer_path: str | None = None  # reuse a trained tokenizer.json instead of training one
    init_from: str | None = None  # start from an encoder folder (fromzero or HF BERT); model.* is then ignored
    data: EncoderDataConfig = field(default_factory=EncoderDataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    mlm: MLMConfig = field(default_factory=MLMConfig)
    rtd: RTDConfig = field(default_factory=RTDConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    mixture: dict[str, float] = field(default_factory=lambda: {"mlm": 1.0, "simcse": 1.0})  # weights for mlm+simcse
    metric_batches: int = 40  # held-out batches for the final metric
    train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/encoder", lr=5e-4, betas=(0.9, 0.98),
                                                                   weight_decay=0.01))

    def __post_init__(self) -> None:
        if self.objective not in objectives_for("encoder"):
            raise FromzeroError(f"objective must be one of {', '.join(objectives_for('encoder'))}; "
                                f"got {self.objective!r}")


def run_encoder_pretrain(cfg: EncoderPretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Pretrain an encoder with cfg.objective; returns the run summary (also written to summary.json)."""
    return run_ranked(cfg.train.out_dir, resume, overwrite=cfg.train.overwrite,
                      prepare=lambda quiet: _prepare_data(cfg, Path(cfg.train.out_dir), quiet),
                      train=lambda dist, data: _train(cfg, dist, data[0], data[1], resume))


# ---------------------------------------------------------------------- data


def prepare_tokenizer(cfg: EncoderPretrainConfig, out_dir: Path, quiet: bool = False) -> Tokenizer:
    """The configured tokenizer, the init_from model's, the run's own (on resume), or a new one."""
    if cfg.tokenizer_path:
        return Tokenizer.load(cfg.tokenizer_path)
    if cfg.init_from and (Path(cfg.init_from) / "tokenizer.json").is_file():
        return Tokenizer.load(Path(cfg.init_from))
    own = out_dir / "tokenizer.json"
    if own.is_file():
        return Tokenizer.load(own)
    from fromzero.data.sources import iter_texts

    if ENCODER_OBJECTIVES[cfg.objective].pair_data:  # pair files hold their texts in several fields
        texts = (t for src in cfg.data.sources for pair in iter_pairs(src) for t in pair if t)
    else:
        texts = (t for src in cfg.data.sources for t in iter_texts(src))
    tok = train_tokenizer(texts, cfg.tokenizer, show_progress=not quiet)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(own)
    if not quiet:
        print(f"tokenizer: trained {cfg.tokenizer.kind} with {tok.vocab_size} tokens -> {own}")
    return tok


def load_corpus(sources: list[str], tok: Tokenizer, max_docs: int | None, cache_dir: str | Path,
                quiet: bool = False) -> SentenceCorpus:
    """build_sentence_corpus, cached as .npz by (sources and their files' size/mtime, tokenizer, max_docs)."""
    h = hashlib.sha256(f"corpus {CORPUS_VERSION}".encode())
    for src in sources:
        h.update(src.encode())
        for f in source_files(src):
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(tok.to_str().encode())
    h.update(str(max_docs).encode())
    path = Path(cache_dir) / f"sentences-{h.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return SentenceCorpus(**{k: z[k] for k in ("tokens", "word_start", "sent_bounds", "doc_bounds")})
    corpus = build_sentence_corpus(sources, tok, max_docs=max_docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **dataclasses.asdict(corpus))
    tmp.replace(path)
    if not quiet:
        print(f"corpus: {corpus.n_docs:,} documents, {corpus.n_sentences:,} sentences, {len(corpus.tokens):,} tokens "
              f"-> {path}")
    return corpus


def _prepare_data(cfg: EncoderPretrainConfig, out_dir: Path,
                  quiet: bool) -> tuple[Tokenizer, SentenceCorpus | PairCorpus]:
    tok = prepare_tokenizer(cfg, out_dir, quiet=quiet)
    if ENCODER_OBJECTIVES[cfg.objective].pair_data:  # pairs are few and quick to tokenize: no cache
        return tok, build_pair_corpus(cfg.data.sources, tok)
    return tok, load_corpus(cfg.data.sources, tok, cfg.data.max_docs, cfg.data.cache_dir, quiet=quiet)


# ---------------------------------------------------------------------- the objectives


Corpus = SentenceCorpus | PairCorpus


def _masked(mode: str) -> Callable[..., SentenceBatches]:
    """MLM rows (packed, or NSP/SOP pairs of segments) with masked tokens and labels."""
    def batches(cfg: EncoderPretrainConfig, tok: Tokenizer, corpus: SentenceCorpus, max_len: int, **common):
        return SentenceBatches(corpus, tok, cfg.train.batch_size, max_len, mode, MLMMasker.for_tokenizer(tok, cfg.mlm),
                               **common)
    return batches


def _sentences(cfg: EncoderPretrainConfig, tok: Tokenizer, corpus: SentenceCorpus, max_len: int,
               **common) -> SentenceBatches:
    return SentenceBatches(corpus, tok, cfg.train.batch_size, min(cfg.data.sentence_max_len, max_len), "sentence",
                           **common)


def _pairs(cfg: EncoderPretrainConfig, tok: Tokenizer, corpus: PairCorpus, max_len: int, **common) -> PairBatches:
    return PairBatches(corpus, tok, cfg.train.batch_size, min(cfg.data.sentence_max_len, max_len), **common)


def _mixture_batches(cfg: EncoderPretrainConfig, tok: Tokenizer, corpus: SentenceCorpus, max_len: int,
                     **common) -> MixtureBatches:
    return MixtureBatches({"mlm": _masked("packed")(cfg, tok, corpus, max_len, **common),
                           "simcse": _sentences(cfg, tok, corpus, max_len, **common)})


def _simcse(cfg: EncoderPretrainConfig) -> SimCSE:  # supervised when the batches carry input_ids_b
    return SimCSE(cfg.contrastive.temperature, cfg.contrastive.pooling)


def _mixture(cfg: EncoderPretrainConfig) -> Mixture:
    unknown = set(cfg.mixture) - {"mlm", "simcse"}
    if unknown:
        raise FromzeroError(f"mixture weights are for 'mlm' and 'simcse', got {', '.join(sorted(unknown))}")
    return Mixture({"mlm": (MaskedLM(), cfg.mixture.get("mlm", 1.0)),
                    "simcse": (_simcse(cfg), cfg.mixture.get("simcse", 1.0))})


def _mlm_metrics(cfg: EncoderPretrainConfig, model: torch.nn.Module, tok: Tokenizer, val: SentenceCorpus,
                 max_len: int, seed: int, unigram_token: int | None) -> dict[str, float]:
    spec = ENCODER_OBJECTIVES[cfg.objective]
    make = spec.batches if spec.pair_task else _masked("packed")  # the mixture's MLM part is packed
    return evaluate_mlm(model, make(cfg, tok, val, max_len, seed=seed).fixed(cfg.metric_batches),
                        pair_task=spec.pair_task, unigram_token=unigram_token)


def _rtd_metrics(cfg, model, tok, val, max_len, seed, unigram_token) -> dict[str, float]:
    return evaluate_rtd(model, _masked("packed")(cfg, tok, val, max_len, seed=seed).fixed(cfg.metric_batches))


def _sentence_metrics(cfg, model, tok, val, max_len, seed, unigram_token) -> dict[str, float]:
    sentences = _sentences(cfg, tok, val, max_len, seed=seed).fixed(cfg.metric_batches)
    return contrastive_metrics(model, sentences, cfg.contrastive.pooling)


def _pair_metrics(cfg, model, tok, val, max_len, seed, unigram_token) -> dict[str, float]:
    return contrastive_metrics(model, _pair_eval_batches(cfg, tok, val, max_len, cfg.metric_batches),
                               cfg.contrastive.pooling)


def _mixture_metrics(cfg, model, tok, val, max_len, seed, unigram_token) -> dict[str, float]:
    return {**_mlm_metrics(cfg, model, tok, val, max_len, seed, unigram_token),
            **_sentence_metrics(cfg, model, tok, val, max_len, seed, unigram_token)}


def _fixed_batches(cfg: EncoderPretrainConfig, tok: Tokenizer, val: Corpus, max_len: int, n: int,
                   seed: int) -> list[dict[str, torch.Tensor]]:
    return build_batches(cfg, tok, val, max_len, seed).fixed(n)


def _embedding_loss(cfg: EncoderPretrainConfig, tok: Tokenizer, val: SentenceCorpus, max_len: int, n: int,
                    seed: int) -> Callable[[torch.nn.Module], float]:
    """Unsupervised SimCSE's own loss is ~0 without dropout: validate on perturbed copies instead."""
    sentences = _sentences(cfg, tok, val, max_len, seed=seed).fixed(n)
    return lambda model: contrastive_metrics(model, sentences, cfg.contrastive.pooling)["val_loss"]


def _given_pairs(cfg: EncoderPretrainConfig, tok: Tokenizer, val: PairCorpus, max_len: int, n: int,
                 seed: int) -> list[dict[str, torch.Tensor]]:
    """Given pairs: the training loss itself is a fair held-out measure."""
    return _pair_eval_batches(cfg, tok, val, max_len, n)


@dataclass(frozen=True)
class EncoderObjective:
    """How the recipe runs one objective of fromzero.objectives.registry (family "encoder").

    heads: the encoder heads its loss reaches ("mlm", "pair" for NSP/SOP, "pooler"); a fresh model
    gets only those, and a loaded one has the others frozen. Under torchrun DDP fails a step on any
    parameter that needs a gradient and gets none, so nothing the loss never reaches may be trainable.
    pools: the loss pools sentence embeddings, which reach the pooler when contrastive.pooling=pooler.
    """

    heads: frozenset[str]
    batches: Callable[..., Any]  # (cfg, tok, corpus, max_len, seed=, rank=, world_size=) -> batch source
    loss: Callable[[EncoderPretrainConfig], Callable]
    metrics: Callable[..., dict[str, float]]  # the held-out metric (see held_out_metrics)
    validation: Callable[..., Any] = _fixed_batches  # what the trainer evaluates every eval_every steps
    pair_task: Literal["nsp", "sop"] | None = None
    pools: bool = False
    dropout_noise: bool = False  # unsupervised SimCSE: dropout is its only noise
    pair_data: bool = False  # data.sources are text pairs, not documents
    electra: bool = False  # trains a generator and a discriminator (ElectraModel); the discriminator is kept
    metrics_before: bool = False  # also measure the untrained model (a random encoder's embeddings are a baseline)


_PAIR = frozenset({"mlm", "pooler", "pair"})
ENCODER_OBJECTIVES: dict[str, EncoderObjective] = {
    "mlm": EncoderObjective(frozenset({"mlm"}), _masked("packed"), lambda cfg: MaskedLM(), _mlm_metrics),
    "mlm_nsp": EncoderObjective(_PAIR, _masked("nsp"), lambda cfg: MaskedLM("nsp", cfg.mlm.pair_weight),
                                _mlm_metrics, pair_task="nsp"),
    "mlm_sop": EncoderObjective(_PAIR, _masked("sop"), lambda cfg: MaskedLM("sop", cfg.mlm.pair_weight),
                                _mlm_metrics, pair_task="sop"),
    "rtd": EncoderObjective(frozenset(), _masked("packed"), lambda cfg: replaced_token_detection, _rtd_metrics,
                            electra=True),
    "simcse": EncoderObjective(frozenset(), _sentences, _simcse, _sentence_metrics, _embedding_loss, pools=True,
                               dropout_noise=True, metrics_before=True),
    "simcse_sup": EncoderObjective(frozenset(), _pairs, _simcse, _pair_metrics, _given_pairs, pools=True,
                                   pair_data=True, metrics_before=True),
    "mlm+simcse": EncoderObjective(frozenset({"mlm"}), _mixture_batches, _mixture, _mixture_metrics, pools=True,
                                   dropout_noise=True),
}
assert set(ENCODER_OBJECTIVES) == set(objectives_for("encoder")), "every encoder objective needs its entry"


def heads_used(cfg: EncoderPretrainConfig) -> frozenset[str]:
    """The encoder heads cfg.objective's loss reaches (see EncoderObjective)."""
    spec = ENCODER_OBJECTIVES[cfg.objective]
    return spec.heads | ({"pooler"} if spec.pools and cfg.contrastive.pooling == "pooler" else frozenset())


_HEAD_MODULES = {"mlm": "head", "pair": "pair_head", "pooler": "pooler"}


def freeze_unreached(model: EncoderModel, heads: frozenset[str]) -> None:
    """requires_grad=False for the heads outside `heads` (never the token embedding the MLM decoder
    shares): they keep their weights, as they would in one process, and DDP does not wait for them."""
    shared = {id(model.emb.tok.weight)}
    for head, attr in _HEAD_MODULES.items():
        module = getattr(model, attr)
        if module is not None and head not in heads:
            for p in module.parameters():
                if id(p) not in shared:
                    p.requires_grad_(False)


# ---------------------------------------------------------------------- model, batches, objective


def build_model(cfg: EncoderPretrainConfig, tok: Tokenizer) -> torch.nn.Module:
    """EncoderModel with the heads the objective uses, or ElectraModel, sized to the tokenizer."""
    spec, heads = ENCODER_OBJECTIVES[cfg.objective], heads_used(cfg)
    if cfg.init_from:
        if spec.electra:
            raise FromzeroError("init_from is not supported for rtd (ELECTRA trains its own generator); remove it")
        model = load_encoder(cfg.init_from)
        if model.config.vocab_size != tok.vocab_size:
            raise FromzeroError(f"init_from model has vocab_size {model.config.vocab_size} but the tokenizer has "
                                f"{tok.vocab_size}; use the tokenizer saved with that model (tokenizer_path)")
        if "mlm" in heads and model.head is None:
            raise FromzeroError(f"{cfg.init_from} has no masked-LM head (an encoder trained for sentence embeddings or "
                                f"a discriminator): objective {cfg.objective} cannot start from it")
        if "pair" in heads and model.pair_head is None:
            model.pair_head = torch.nn.Linear(model.config.d_model, 2)
            torch.nn.init.normal_(model.pair_head.weight, std=0.02)
            torch.nn.init.zeros_(model.pair_head.bias)
            model.config.pair_head = True
        freeze_unreached(model, heads)
        return model
    if spec.dropout_noise and cfg.model.dropout <= 0:
        raise FromzeroError("SimCSE uses dropout as its noise: set model.dropout > 0 (0.1 is the paper's)")
    if spec.electra:
        return ElectraModel(dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id),
                            cfg.rtd)
    model = EncoderModel(dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                             pair_head="pair" in heads, mlm_head="mlm" in heads))
    freeze_unreached(model, heads)
    return model


def _max_len(model: torch.nn.Module) -> int:
    return model.config.discriminator.max_seq_len if isinstance(model, ElectraModel) else model.config.max_seq_len


def build_batches(cfg: EncoderPretrainConfig, tok: Tokenizer, corpus: Corpus, max_len: int, seed: int,
                  rank: int = 0, world_size: int = 1):
    """The batch source of cfg.objective over `corpus`."""
    return ENCODER_OBJECTIVES[cfg.objective].batches(cfg, tok, corpus, max_len, seed=seed, rank=rank,
                                                     world_size=world_size)


def build_objective(cfg: EncoderPretrainConfig):
    """The loss function of cfg.objective: objective(model, batch) -> {"loss": ..., metrics}."""
    return ENCODER_OBJECTIVES[cfg.objective].loss(cfg)


def held_out_metrics(cfg: EncoderPretrainConfig, model: torch.nn.Module, tok: Tokenizer,
                     val: Corpus, unigram_token: int | None = None) -> dict[str, float]:
    """The objective's own metric on cfg.metric_batches fixed held-out batches (see evaluate_mlm for
    unigram_token)."""
    seed = cfg.train.seed + 1_000_003  # never the training stream
    return ENCODER_OBJECTIVES[cfg.objective].metrics(cfg, model, tok, val, _max_len(model), seed, unigram_token)


def _pair_eval_batches(cfg: EncoderPretrainConfig, tok: Tokenizer, val: PairCorpus, max_len: int,
                       n: int) -> list[dict[str, torch.Tensor]]:
    """n held-out batches, each as many pairs with distinct texts as train.batch_size or the split allow."""
    B = min(cfg.train.batch_size, val.max_batch)
    if B < 2:
        raise FromzeroError(f"the validation split has {len(val)} text pair(s) ({val.max_batch} with distinct "
                            "texts); contrastive metrics need at least 2: raise data.val_fraction or add pairs")
    return PairBatches(val, tok, B, min(cfg.data.sentence_max_len, max_len), seed=cfg.train.seed + 1_000_003).fixed(n)


def review_probe(model: torch.nn.Module, tok: Tokenizer, pooling: str, n: int = 2000, seed: int = 0) -> float:
    """Sentiment separability of the sentence embeddings: leave-one-out 10-NN accuracy on a balanced,
    seeded sample of n built-in Chinese reviews (chance = 0.5). No labels are used in pretraining."""
    from fromzero.corpora import iter_reviews_labeled

    reviews = list(iter_reviews_labeled())
    rng = np.random.default_rng(seed)
    picked = []
    for label in (0, 1):
        idx = [i for i, (_, y) in enumerate(reviews) if y == label]
        picked += rng.choice(idx, size=n // 2, replace=False).tolist()
    encoder = model.discriminator if isinstance(model, ElectraModel) else model
    emb = embed(encoder, tok, [reviews[i][0] for i in picked], pooling=pooling)
    return knn_accuracy(emb, torch.tensor([reviews[i][1] for i in picked]))


def _eval_source(cfg: EncoderPretrainConfig, tok: Tokenizer, val: Corpus, max_len: int):
    """What the trainer evaluates every eval_every steps (None without validation batches)."""
    if cfg.train.eval_batches == 0:
        return None
    spec = ENCODER_OBJECTIVES[cfg.objective]
    return spec.validation(cfg, tok, val, max_len, cfg.train.eval_batches, cfg.train.seed + 1_000_003)


# ---------------------------------------------------------------------- the run


def _train(cfg: EncoderPretrainConfig, dist: DistributedContext, tok: Tokenizer,
           corpus: SentenceCorpus | PairCorpus, resume: bool) -> dict[str, Any]:
    train, val = corpus.split(cfg.data.val_fraction, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, tok)
    max_len = _max_len(model)
    batches = build_batches(cfg, tok, train, max_len, cfg.train.seed, dist.rank, dist.world_size)
    evals = _eval_source(cfg, tok, val, max_len)
    probe = dist.is_main and "reviews_zh" in cfg.data.sources
    baseline = None
    if dist.is_main and not resume:  # the same metrics before training, for comparison
        baseline = held_out_metrics(cfg, model, tok, val) if ENCODER_OBJECTIVES[cfg.objective].metrics_before else {}
        if probe:
            baseline["review_sentiment_knn"] = review_probe(model, tok, cfg.contrastive.pooling)
    if dist.is_main:
        unit = "text pairs" if isinstance(train, PairCorpus) else "documents"
        print(f"data: {train.n_docs:,} train / {val.n_docs:,} val {unit} ({len(train.tokens):,} / "
              f"{len(val.tokens):,} tokens) from {', '.join(cfg.data.sources)}")
        print(f"model: encoder for {cfg.objective}, {model.num_params() / 1e6:.2f}M parameters")

    summary = Trainer(model, build_objective(cfg), batches, evals, cfg.train, save_extra=tok.save).fit(resume=resume)
    summary.pop("val_perplexity", None)  # not a language-model perplexity here
    summary.pop("best_val_perplexity", None)
    summary["objective"] = cfg.objective
    summary["params"] = model.num_params()
    if dist.is_main:
        counts = np.bincount(train.tokens, minlength=tok.vocab_size)
        counts[[i for i in (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) if i is not None]] = 0
        summary["metrics"] = held_out_metrics(cfg, model, tok, val, unigram_token=int(counts.argmax()))
        if probe:
            summary["metrics"]["review_sentiment_knn"] = review_probe(model, tok, cfg.contrastive.pooling)
        if baseline:
            summary["metrics_before_training"] = baseline
        encoder = model.discriminator if isinstance(model, ElectraModel) else model
        enc_dir = save_encoder(encoder, Path(cfg.train.out_dir) / "encoder")
        tok.save(enc_dir)
        (enc_dir / "embedding.json").write_text(json.dumps({"pooling": cfg.contrastive.pooling}) + "\n",
                                                encoding="utf-8")
        summary["encoder"] = str(enc_dir)
        summary["config"] = to_dict(cfg)
        (Path(cfg.train.out_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str),
                                                              encoding="utf-8")
        print("metrics: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in summary["metrics"].items()))
    return summary
