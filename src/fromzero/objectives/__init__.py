"""Training objectives: `objective(model, batch) -> {"loss": tensor, ...other scalars to log}`.

An objective knows how to turn a batch into a loss; it never knows which optimizer or trainer runs it.
"""

from fromzero.objectives.clm import causal_lm

__all__ = ["causal_lm"]
