"""Labelled task data: built-in Chinese/English tasks and user files, split 80/10/10 without overlap."""

from fromzero.tasks.chat_data import ChatExample
from fromzero.tasks.classification_data import ClassificationExample
from fromzero.tasks.datasets import TASKS, label_names, load_task_data, split_examples, task_kind
from fromzero.tasks.seq2seq_data import Seq2SeqExample
from fromzero.tasks.tagging_data import TaggedSentence, TaggingExample, align_labels

__all__ = ["TASKS", "ChatExample", "ClassificationExample", "Seq2SeqExample", "TaggedSentence", "TaggingExample",
           "align_labels", "label_names", "load_task_data", "split_examples", "task_kind"]
