"""Data: text sources -> token shards on disk -> batches."""

from fromzero.corpora import iter_conversations, iter_people_daily_tagged, iter_reviews_labeled, iter_tweets_labeled
from fromzero.data.loader import TokenBatches, eval_batches
from fromzero.data.shards import ShardPaths, build_shards, load_tokens, read_meta
from fromzero.data.sources import BUILTIN, iter_texts

__all__ = [
    "BUILTIN",
    "ShardPaths",
    "TokenBatches",
    "build_shards",
    "eval_batches",
    "iter_conversations",
    "iter_people_daily_tagged",
    "iter_reviews_labeled",
    "iter_texts",
    "iter_tweets_labeled",
    "load_tokens",
    "read_meta",
]
