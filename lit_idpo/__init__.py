"""lit-idpo: Intermediate DPO for Hugging Face causal LMs on PyTorch Lightning."""

from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs

__all__ = ["LinearLogprobsOptions", "linear_logprobs"]
__version__ = "0.1.0"
