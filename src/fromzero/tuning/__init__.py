"""How a task kind is trained and scored: heads, batches, decoding, and saved fine-tuned models."""
