"""The reference model's log-probs: the seam the module reads, and the on-disk cache.

    seam.py    ReferenceLogprobs: live (a frozen copy) | adapters disabled (LoRA) | cached
    cache.py   reference log-probs computed once and stored (``model.reference_cache``); docs/reference_cache.md
"""

from lit_idpo.reference.cache import ReferenceCache, ReferenceCacheError
from lit_idpo.reference.seam import (
    AdapterDisabledReference,
    CachedReference,
    LiveReference,
    ReferenceLogprobs,
    Scorer,
)

__all__ = ["AdapterDisabledReference", "CachedReference", "LiveReference", "ReferenceCache", "ReferenceCacheError",
           "ReferenceLogprobs", "Scorer"]
