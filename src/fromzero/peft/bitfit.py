"""BitFit (Ben Zaken et al. 2021): train only the bias terms, ~0.1% of the parameters."""

from __future__ import annotations

from torch import nn

from fromzero.errors import FromzeroError


def bias_parameter_names(model: nn.Module) -> list[str]:
    """Names of every bias parameter (Linear, Conv1D, norm layers ...); an error if there are none."""
    names = [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
    if not names:
        raise FromzeroError(
            f"BitFit trains only biases, but {type(model).__name__} has no bias parameters (Llama-style models "
            "are built with bias=False); use method: lora or ia3 instead"
        )
    return names
