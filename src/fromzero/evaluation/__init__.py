"""Metrics and reports for every task: classification, tagging, seq2seq and language modelling."""

from fromzero.evaluation.metrics import (
                                         accuracy,
                                         char_accuracy,
                                         classification_report,
                                         confusion_matrix,
                                         edit_distance,
                                         entity_f1,
                                         entity_report,
                                         exact_match,
                                         get_entities,
                                         macro_f1,
                                         perplexity,
                                         tag_accuracy,
)
from fromzero.evaluation.report import confusion_matrix_png, write_report

__all__ = ["accuracy", "char_accuracy", "classification_report", "confusion_matrix", "confusion_matrix_png",
           "edit_distance", "entity_f1", "entity_report", "exact_match", "get_entities", "macro_f1",
           "perplexity", "tag_accuracy", "write_report"]
