"""Generic nn.Module helpers shared by model, peft, train and (soon) compress: no model families here."""

from fromzero.modules.wrappers import eval_mode, unwrap

__all__ = ["eval_mode", "unwrap"]
