"""What differs between task kinds, behind one small interface the fine-tuning recipe drives:

    kind.build_model(backbone)        the trainable task model (backbone + head, or the LM itself)
    kind.rows(examples, where)        training rows (tokenized once)
    kind.objective(model, batch)      {"loss", ...} for the Trainer
    kind.set_validation(examples)     tokenize the validation split once
    kind.validate(model)              the number that picks the best checkpoint (higher is better)
    kind.evaluate(model, examples)    full metrics on a split (+ predictions)
    kind.predict(model, inputs)       labels / tags / answers for raw inputs
    kind.probabilities(model, rows)   class probabilities (classification only; ensembles average them)

Classification  SequenceClassifier; accuracy, macro-F1, per-class scores, confusion matrix.
Tagging         TokenClassifier, labels on each unit's first piece; entity P/R/F1 (seqeval
                semantics) for BIO tag sets, word F1 for BMES segmentation, tag accuracy always.
Seq2seq         the LM itself through a Seq2SeqFormat; char accuracy / exact match by greedy
                generation (validation uses the cheaper target loss).
Chat            the LM itself; loss on assistant tokens, packed rows; validation and test report
                the assistant-token loss and perplexity, plus a few sample replies.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fromzero.errors import FromzeroError
from fromzero.evaluation.metrics import classification_report, entity_report, perplexity, tag_accuracy
from fromzero.modules.wrappers import unwrap
from fromzero.objectives.clm import causal_lm
from fromzero.tuning.bio import bio_scores, viterbi
from fromzero.tuning.collate import (
    Framing,
    Row,
    encode_classification,
    encode_tagging,
    mean_lm_loss,
    predict_logits,
    tags_from_predictions,
)
from fromzero.tuning.crf import CRF
from fromzero.tuning.heads import SequenceClassifier, TokenClassifier
from fromzero.tuning.sft import ChatFormat, pack_rows, sft_rows


class TaskKind:
    """Base class; see the module docstring. `metric` names what validate() returns."""

    name = ""
    metric = ""
    head_modules: tuple[str, ...] = ()  # submodules a task head adds on the backbone (always trained, saved apart)

    def __init__(self, tokenizer: Any, max_len: int, eval_batch_size: int = 64):
        self.tok, self.max_len, self.eval_batch_size = tokenizer, max_len, eval_batch_size

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return backbone

    def rows(self, examples: Sequence[Any], where: str) -> list[Row]:
        raise NotImplementedError

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return causal_lm(model, batch)

    def set_validation(self, examples: Sequence[Any]) -> None:
        self.val_examples = list(examples)
        self.val_rows = self.rows(self.val_examples, "val")

    def validate(self, model: nn.Module) -> float:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, examples: Sequence[Any], where: str = "test") -> tuple[dict, list]:
        raise NotImplementedError

    def predict(self, model: nn.Module, inputs: Sequence[Any]) -> list:
        raise NotImplementedError


# ----------------------------------------------------------------------------- classification


class Classification(TaskKind):
    name, metric, head_modules = "classification", "accuracy", ("classifier",)

    def __init__(self, tokenizer: Any, max_len: int, labels: Sequence[str], framing: Framing,
                 pooling: str = "auto", dropout: float = 0.1, eval_batch_size: int = 64):
        super().__init__(tokenizer, max_len, eval_batch_size)
        self.labels, self.framing, self.pooling, self.dropout = list(labels), framing, pooling, dropout

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return SequenceClassifier(backbone, len(self.labels), self.pooling, self.dropout)

    def rows(self, examples: Sequence[Any], where: str) -> list[Row]:
        return encode_classification([e.text for e in examples], [e.label for e in examples], self.tok,
                                     self.framing, self.max_len, len(self.labels), where)

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        loss = F.cross_entropy(logits, batch["labels"])
        return {"loss": loss, "acc": (logits.argmax(-1) == batch["labels"]).float().mean()}

    def _logits(self, model: nn.Module, rows: list[Row]) -> torch.Tensor:
        if not rows:
            return torch.empty(0, len(self.labels))
        return torch.stack(predict_logits(model, rows, self.eval_batch_size, self.tok.pad_id))

    def probabilities(self, model: nn.Module, rows: list[Row]) -> torch.Tensor:
        """[rows, classes] softmax of the classifier's logits, in the rows' order."""
        return self._logits(model, rows).softmax(-1)

    def _predict_ids(self, model: nn.Module, rows: list[Row]) -> list[int]:
        return self._logits(model, rows).argmax(-1).tolist()

    def validate(self, model: nn.Module) -> float:
        pred = self._predict_ids(model, self.val_rows)
        return sum(p == r["labels"] for p, r in zip(pred, self.val_rows)) / max(len(self.val_rows), 1)

    def evaluate(self, model: nn.Module, examples: Sequence[Any], where: str = "test") -> tuple[dict, list]:
        rows = self.rows(examples, where)
        pred = self._predict_ids(model, rows)
        report = classification_report([r["labels"] for r in rows], pred, self.labels)
        return report, [self.labels[p] for p in pred]

    def predict(self, model: nn.Module, texts: Sequence[str]) -> list[str]:
        rows = encode_classification(list(texts), None, self.tok, self.framing, self.max_len, len(self.labels),
                                     "input")
        return [self.labels[p] for p in self._predict_ids(model, rows)]


# ----------------------------------------------------------------------------- tagging


def is_bio(labels: Sequence[str]) -> bool:
    """True for O / B-X / I-X (and E-/S-) tag sets, which entity-level metrics apply to."""
    return all(t == "O" or (t[:2] in ("B-", "I-", "E-", "S-") and len(t) > 2) for t in labels) and "O" in labels


def is_bmes(labels: Sequence[str]) -> bool:
    return set(labels) == {"B", "M", "E", "S"}


def bmes_as_entities(tags: Sequence[str]) -> list[str]:
    """Word segmentation tags as BIOES 'W' entities, so entity F1 = word-level segmentation F1."""
    return [{"B": "B-W", "M": "I-W", "E": "E-W", "S": "S-W"}[t] for t in tags]


class Tagging(TaskKind):
    name = "tagging"

    def __init__(self, tokenizer: Any, max_len: int, labels: Sequence[str], framing: Framing,
                 unit: str = "char", dropout: float = 0.1, eval_batch_size: int = 64, crf: bool = False):
        super().__init__(tokenizer, max_len, eval_batch_size)
        self.labels, self.framing, self.unit, self.dropout, self.crf = list(labels), framing, unit, dropout, crf
        self.metric = "entity_f1" if is_bio(self.labels) else "word_f1" if is_bmes(self.labels) else "tag_accuracy"
        self.head_modules = ("classifier", "crf") if crf else ("classifier",)
        self._bio_scores = bio_scores(self.labels)

    def build_model(self, backbone: nn.Module) -> nn.Module:
        model = TokenClassifier(backbone, len(self.labels), self.dropout)
        if self.crf:
            model.crf = CRF(self.labels)
        return model

    def rows(self, examples: Sequence[Any], where: str) -> list[Row]:
        return encode_tagging([e.tokens for e in examples], [e.tags for e in examples], self.tok, self.framing,
                              self.max_len, self.labels, where)[0]

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).float()
        if self.crf:
            return {"loss": unwrap(model).crf.nll(logits, batch["labels"])}
        return {"loss": F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)}

    def _encode(self, units: Sequence[Sequence[str]], tags: Sequence[Sequence[str]] | None, where: str) -> tuple:
        return encode_tagging(units, tags, self.tok, self.framing, self.max_len, self.labels, where)

    def _tags(self, model: nn.Module, units: Sequence[Sequence[str]], encoded: tuple) -> list[list[str]]:
        rows, positions, owners = encoded
        logits = predict_logits(model, rows, self.eval_batch_size, self.tok.pad_id)
        crf_scores = unwrap(model).crf.viterbi_scores() if self.crf else None
        return tags_from_predictions([self._decode(lg, pos, crf_scores) for lg, pos in zip(logits, positions)],
                                     positions, owners, [len(u) for u in units], self.labels)

    def _decode(self, logits: torch.Tensor, positions: Sequence[int | None],
                crf_scores: tuple | None = None) -> list[int]:
        """Per-position tag ids of one row: the CRF's best sequence (crf_scores = its start/trans/end)
        over the positions that stand for a unit, else the best well-formed BIO sequence
        (tasks/bio_decode.py), else the per-position argmax."""
        ids = logits.argmax(-1).tolist()
        if crf_scores is None and self._bio_scores is None:
            return ids
        at = [i for i, u in enumerate(positions) if u is not None]
        emissions = logits[at].float()
        if crf_scores is None:  # the softmax head's scores are log-probabilities, the CRF's are raw
            emissions = torch.log_softmax(emissions, dim=-1)
        for i, tag in zip(at, viterbi(emissions.numpy(), *(crf_scores or self._bio_scores))):
            ids[i] = tag
        return ids

    def scores(self, gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
        out: dict[str, Any] = {"tag_accuracy": tag_accuracy(gold, pred), "n": len(gold)}
        if self.metric == "entity_f1":
            rep = entity_report(gold, pred)
            out.update(entity_f1=rep["f1"], entity_precision=rep["precision"], entity_recall=rep["recall"],
                       entity_macro_f1=rep["macro_f1"], per_type=rep["per_type"])
        elif self.metric == "word_f1":
            rep = entity_report([bmes_as_entities(t) for t in gold], [bmes_as_entities(t) for t in pred])
            out.update(word_f1=rep["f1"], word_precision=rep["precision"], word_recall=rep["recall"])
        return out

    def set_validation(self, examples: Sequence[Any]) -> None:
        self.val_examples = list(examples)
        self.val_encoded = self._encode([e.tokens for e in examples], [e.tags for e in examples], "val")

    def validate(self, model: nn.Module) -> float:
        pred = self._tags(model, [e.tokens for e in self.val_examples], self.val_encoded)
        return float(self.scores([e.tags for e in self.val_examples], pred)[self.metric])

    def evaluate(self, model: nn.Module, examples: Sequence[Any], where: str = "test") -> tuple[dict, list]:
        units, tags = [e.tokens for e in examples], [e.tags for e in examples]
        pred = self._tags(model, units, self._encode(units, tags, where))
        return self.scores(tags, pred), pred

    def predict(self, model: nn.Module, inputs: Sequence[str | Sequence[str]]) -> list[list[tuple[str, str]]]:
        """Texts (split into characters, or on whitespace for word-level tasks) or ready token lists."""
        units = []
        for i, x in enumerate(inputs):
            u = list(x) if not isinstance(x, str) else \
                [c for c in x if not c.isspace()] if self.unit == "char" else x.split()
            if not u:
                raise FromzeroError(f"input {i + 1} is empty; remove empty lines")
            units.append(u)
        return [list(zip(u, t)) for u, t in zip(units, self._tags(model, units, self._encode(units, None, "input")))]


# ----------------------------------------------------------------------------- seq2seq and chat


class Seq2Seq(TaskKind):
    name, metric = "seq2seq", "neg_val_loss"

    def __init__(self, tokenizer: Any, max_len: int, fmt: Any, max_new_tokens: int | None = None,
                 eval_batch_size: int = 64):
        super().__init__(tokenizer, max_len, eval_batch_size)
        self.fmt, self.max_new_tokens = fmt, max_new_tokens

    def rows(self, examples: Sequence[Any], where: str) -> list[Row]:
        return self.fmt.rows(examples, where)

    def objective(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.fmt.objective(model, batch)

    def validate(self, model: nn.Module) -> float:
        return -mean_lm_loss(model, self.objective, self.val_rows, self.eval_batch_size, self.tok.pad_id)

    def evaluate(self, model: nn.Module, examples: Sequence[Any], where: str = "test") -> tuple[dict, list]:
        from fromzero.tuning.seq2seq import evaluate_seq2seq

        return evaluate_seq2seq(model, self.fmt, examples, self.max_new_tokens)

    def predict(self, model: nn.Module, sources: Sequence[str]) -> list[str]:
        for i, s in enumerate(sources):
            if not s.strip():
                raise FromzeroError(f"input {i + 1} is empty; remove empty lines")
        return self.fmt.generate(model, list(sources), self.max_new_tokens)


class Chat(TaskKind):
    name, metric = "chat", "neg_val_loss"
    SAMPLES = 3

    def __init__(self, tokenizer: Any, max_len: int, fmt: ChatFormat, pack: bool = True,
                 max_new_tokens: int | None = None, eval_batch_size: int = 64):
        super().__init__(tokenizer, max_len, eval_batch_size)
        self.fmt, self.pack, self.max_new_tokens = fmt, pack, max_new_tokens

    def rows(self, examples: Sequence[Any], where: str) -> list[Row]:
        rows = sft_rows(examples, self.fmt, self.max_len, where)
        return pack_rows(rows, self.max_len) if self.pack and where == "train" else rows

    def _loss(self, model: nn.Module, examples: Sequence[Any], where: str) -> float:
        rows = sft_rows(examples, self.fmt, self.max_len, where)
        return mean_lm_loss(model, self.objective, rows, self.eval_batch_size, self.tok.pad_id)

    def validate(self, model: nn.Module) -> float:
        return -mean_lm_loss(model, self.objective, self.val_rows, self.eval_batch_size, self.tok.pad_id)

    def evaluate(self, model: nn.Module, examples: Sequence[Any], where: str = "test") -> tuple[dict, list]:
        loss = self._loss(model, examples, where)
        samples = []
        for ex in examples[: self.SAMPLES]:
            history = ex.messages[:-1]
            samples.append({"messages": history, "reference": ex.messages[-1]["content"],
                            "reply": self.predict(model, [history])[0]})
        return {"assistant_loss": loss, "assistant_perplexity": perplexity(loss), "n": len(examples)}, samples

    def predict(self, model: nn.Module, inputs: Sequence[str | Sequence[dict]]) -> list[str]:
        from fromzero.infer.generate import GenerationConfig
        from fromzero.tuning.sft import chat

        gen = GenerationConfig(max_new_tokens=self.max_new_tokens or 64, temperature=0.0)
        return [chat(model, self.tok, x, gen, self.fmt.template) for x in inputs]


__all__ = ["Chat", "Classification", "Seq2Seq", "Tagging", "TaskKind", "bmes_as_entities", "is_bio", "is_bmes"]
