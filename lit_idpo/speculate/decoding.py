"""The greedy decoders ``lit-idpo speculate`` times: plain and early-exit ``generate`` of transformers, and a
self-speculative loop that shares one KV cache between the draft and the verification (LayerSkip's scheme).

transformers' early exit (``generate(..., assistant_early_exit=k)``) drafts with a copy of the model cut at
layer ``k`` that keeps its own KV cache, and verifies with a full forward over every layer, so the first
``k`` layers run twice for every drafted token. :class:`SharedCacheDecoder` runs LayerSkip's full scheme
(Elhoushi et al. 2024, section 4.2): the draft steps run layers ``1..k`` on one token each and keep their
keys and values in the one cache; the verification runs only layers ``k+1..L`` over the round's tokens,
starting from the layer-``k`` hidden states the draft already computed; rejected positions are cut from
the cache. Decoding stays exactly greedy: every kept token is the full model's arg-max.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from lit_idpo.errors import ConfigError

__all__ = ["DraftCounter", "DraftSettings", "TransformersDecoder", "SharedCacheDecoder", "DraftStats"]


@dataclass
class DraftStats:
    """Counts of one or more self-speculative decodings.

    ``proposed``/``accepted``: draft tokens proposed and kept; ``rounds``: full-model verifications;
    ``layer_calls``: decoder layers run, counted once per call whatever the number of tokens in it;
    ``tokens``: new tokens produced (drafts kept plus one verified token per round, cut at EOS or the limit).
    """

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0
    layer_calls: int = 0
    tokens: int = 0

    def reset(self) -> None:
        self.proposed = self.accepted = self.rounds = self.layer_calls = self.tokens = 0


class DraftCounter:
    """Counts the draft tokens of transformers' early-exit decoding while active (a context manager).

    Wraps ``EarlyExitCandidateGenerator.get_candidates`` (proposed: the draft tokens it returns) and
    ``update_candidate_strategy`` (accepted: the ``num_matches`` the verifying model passes it), restoring
    both on exit. Not thread-safe: one decoding at a time.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.proposed = self.accepted = self.rounds = 0

    def __enter__(self) -> "DraftCounter":
        from transformers.generation.candidate_generator import EarlyExitCandidateGenerator as generator

        self._saved = (generator.get_candidates, generator.update_candidate_strategy)
        get_candidates, update = self._saved
        counter = self

        def counted_get_candidates(this, input_ids, **kwargs):
            candidate_ids, logits = get_candidates(this, input_ids, **kwargs)
            counter.proposed += candidate_ids.shape[1] - input_ids.shape[1]
            counter.rounds += 1
            return candidate_ids, logits

        def counted_update(this, input_ids, scores, num_matches):
            counter.accepted += int(num_matches)
            return update(this, input_ids, scores, num_matches)

        generator.get_candidates, generator.update_candidate_strategy = counted_get_candidates, counted_update
        return self

    def __exit__(self, *exc) -> None:
        from transformers.generation.candidate_generator import EarlyExitCandidateGenerator as generator

        generator.get_candidates, generator.update_candidate_strategy = self._saved


class DraftSettings:
    """The model's own generation config as transformers' early exit reads it, set for the measurement.

    The early-exit drafter copies its settings from ``model.generation_config`` (not from the config passed
    to ``generate``): a fixed ``num_assistant_tokens`` per round and no confidence cut-off (transformers'
    default stops a draft below probability 0.4). Restored on exit, as is transformers' log level: the
    drafter passes ``generate`` a config and keyword arguments together, which transformers warns about
    itself; the user cannot act on that, so its warnings are silenced meanwhile.
    """

    FIELDS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")

    def __init__(self, model, num_assistant_tokens: int):
        self.config, self.values = model.generation_config, (num_assistant_tokens, "constant", 0.0)

    def __enter__(self):
        import transformers

        self.saved = [getattr(self.config, name, None) for name in self.FIELDS]
        for name, value in zip(self.FIELDS, self.values):
            setattr(self.config, name, value)
        self.verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()

    def __exit__(self, *exc):
        import transformers

        for name, value in zip(self.FIELDS, self.saved):
            setattr(self.config, name, value)
        transformers.logging.set_verbosity(self.verbosity)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TransformersDecoder:
    """Greedy decoding of one model at batch size 1 with ``generate``, plain or drafting from an exit layer, timed."""

    def __init__(self, model, eos_ids: Sequence[int], pad_id: Optional[int], bos_id: Optional[int],
                 max_new_tokens: int, num_assistant_tokens: int):
        from transformers import GenerationConfig

        self.model, self.device, self.num_assistant_tokens = model, model.device, num_assistant_tokens
        eos = list(eos_ids)
        self.config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                       pad_token_id=pad_id if pad_id is not None else eos[0], bos_token_id=bos_id)

    def decode(self, ids: List[int], layer: Optional[int] = None, max_new_tokens: Optional[int] = None,
               counter: Optional[DraftCounter] = None) -> Tuple[List[int], float]:
        """New tokens (EOS included) and seconds of one greedy decoding; ``layer`` drafts from that exit layer."""
        import torch

        config = self.config
        if layer is not None or max_new_tokens is not None:
            config = copy.deepcopy(config)
            config.max_new_tokens = max_new_tokens or self.config.max_new_tokens
            if layer is not None:
                config.assistant_early_exit = layer
                config.num_assistant_tokens = self.num_assistant_tokens
        input_ids = torch.tensor([ids], device=self.device)
        with torch.inference_mode(), (counter if counter is not None else contextlib.nullcontext()):
            _sync(self.device)
            started = time.perf_counter()
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      generation_config=config)
            _sync(self.device)
            seconds = time.perf_counter() - started
        return out[0, len(ids):].tolist(), seconds


class _LayerCache:
    """Keys and values per decoder layer, for one sequence: what transformers' attention modules ``update``.

    Hand-written rather than a transformers ``DynamicCache`` because the draft fills the first ``k`` layers
    ahead of the others and the verification cuts every layer back to one length, and ``DynamicCache``'s
    cut has changed meaning between transformers releases (a length, then a count to remove).
    """

    def __init__(self, num_layers: int):
        self.keys: List = [None] * num_layers
        self.values: List = [None] * num_layers

    def update(self, key, value, layer_idx, *args, **kwargs):
        import torch

        if self.keys[layer_idx] is not None:
            key = torch.cat([self.keys[layer_idx], key], dim=-2)
            value = torch.cat([self.values[layer_idx], value], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer."""
        for i, key in enumerate(self.keys):
            if key is not None:
                self.keys[i], self.values[i] = key[..., :length, :], self.values[i][..., :length, :]


class SharedCacheDecoder:
    """Self-speculative greedy decoding at batch size 1 with one KV cache (LayerSkip's draft and verification).

    Each round starts from the last token, which no layer has seen yet. Draft: up to ``num_draft_tokens``
    times, run that token through layers ``1..k`` (their cache grows), read ``lm_head(final_norm(h_k))``'s
    arg-max as the next draft token, stop early at EOS. Verify: run the last draft token through layers
    ``1..k`` too, then the round's layer-``k`` hidden states (one per token) through layers ``k+1..L`` in one
    call; the full model's arg-max at each position keeps the drafts up to the first disagreement and adds
    its own next token. The cache is cut back to the kept tokens. With ``num_draft_tokens=0`` this is plain
    greedy decoding through the same code (the fair baseline for the loop itself).

    Works for the decoder layouts of :data:`lit_idpo.speculate.SUPPORTED_MODEL_TYPES` (Llama-style blocks
    with rotary embeddings) with eager or SDPA attention and no sliding window shorter than the sequence.
    """

    def __init__(self, model, exit_layer: int, num_draft_tokens: int, eos_ids: Sequence[int]):
        from lit_idpo.logprobs import find_head_path

        path = find_head_path(model)
        backbone = path.backbone
        self.device = model.device
        self.embed, self.blocks = model.get_input_embeddings(), backbone.layers
        self.rotary, self.final_norm, self.lm_head = backbone.rotary_emb, path.final_norm, path.lm_head
        self.num_layers = path.num_layers
        if not 1 <= exit_layer <= self.num_layers:
            raise ConfigError(f"speculate: exit layer {exit_layer} is out of range 1..{self.num_layers}")
        self.exit_layer, self.num_draft_tokens, self.eos = exit_layer, num_draft_tokens, set(eos_ids)
        attention = getattr(model.config, "_attn_implementation", None) or "eager"
        if attention not in ("eager", "sdpa"):
            raise ConfigError(f"speculate: the shared-cache draft loop passes its own causal mask, which "
                              f"{attention!r} attention does not take; load the model with eager or sdpa attention, "
                              f"or set generation.shared_cache false")
        # transformers 5.2x renamed the blocks' cache argument (past_key_values -> cache); pass the one they take
        parameters = inspect.signature(self.blocks[0].forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.window = self._sliding_window(model.config)

    @staticmethod
    def _sliding_window(config) -> Optional[int]:
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None) or []
        uses_window = "sliding_attention" in layer_types or (
            getattr(config, "model_type", None) == "mistral" and not layer_types)
        return window if window and uses_window else None

    def _run(self, hidden, start: int, stop: int, position: int, cache: _LayerCache):
        """Blocks ``start..stop-1`` (0-based) over ``hidden`` ``[1, q, d]`` at positions ``position..position+q-1``."""
        import torch

        q = hidden.shape[1]
        position_ids = torch.arange(position, position + q, device=self.device)[None]
        rotary = self.rotary(hidden, position_ids)
        mask = None
        if q > 1:  # query i sees keys 0..position+i (a bottom-right causal mask; SDPA's is_causal is top-left)
            mask = torch.full((q, position + q), torch.finfo(hidden.dtype).min, dtype=hidden.dtype,
                              device=self.device).triu(position + 1)[None, None]
        for block in self.blocks[start:stop]:
            out = block(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=rotary,
                        use_cache=True, **{self.cache_argument: cache})
            hidden = out[0] if isinstance(out, tuple) else out  # transformers 4 returned tuples
        return hidden

    def _argmax(self, hidden):
        """Greedy tokens read from block outputs ``[1, q, d]``: the final norm is applied here, at the exit layer
        and at the last one alike (the backbone applies it after its last block; the blocks never do)."""
        return self.lm_head(self.final_norm(hidden)).argmax(-1)[0]

    def decode(self, ids: List[int], max_new_tokens: int, stats: Optional[DraftStats] = None
               ) -> Tuple[List[int], float]:
        """New tokens (EOS included) and seconds of one greedy decoding of prompt ``ids``."""
        import torch

        if self.window is not None and len(ids) + max_new_tokens > self.window:
            raise ConfigError(f"speculate: the prompt plus generation.max_new_tokens ({len(ids) + max_new_tokens} "
                              f"tokens) exceed the model's sliding window ({self.window}), which the shared-cache "
                              f"draft loop does not implement; lower max_new_tokens or set generation.shared_cache "
                              f"false")
        stats = stats if stats is not None else DraftStats()
        k, total = self.exit_layer, self.num_layers
        cache = _LayerCache(len(self.blocks))

        def embed(tokens: List[int]):
            return self.embed(torch.tensor([tokens], device=self.device))

        with torch.inference_mode():
            _sync(self.device)
            started = time.perf_counter()
            if len(ids) > 1:  # prefill: every token but the last, whose turn is the first round's
                self._run(embed(ids[:-1]), 0, total, 0, cache)
            seen, last, new = len(ids) - 1, ids[-1], []  # seen: positions every layer's cache holds
            while len(new) < max_new_tokens:
                drafts, exit_states = [], []
                for _ in range(min(self.num_draft_tokens, max_new_tokens - len(new) - 1)):
                    exit_states.append(self._run(embed([last]), 0, k, seen + len(drafts), cache))
                    last = int(self._argmax(exit_states[-1])[-1])
                    drafts.append(last)
                    if last in self.eos:
                        break
                exit_states.append(self._run(embed([last]), 0, k, seen + len(drafts), cache))
                verified = self._argmax(self._run(torch.cat(exit_states, dim=1), k, total, seen, cache)).tolist()
                kept = 0
                while kept < len(drafts) and drafts[kept] == verified[kept]:
                    kept += 1
                cache.crop(seen + 1 + kept)  # the round's first token and the kept drafts
                round_tokens = drafts[:kept] + [verified[kept]]
                seen, last = seen + 1 + kept, round_tokens[-1]
                stats.proposed, stats.accepted, stats.rounds = (stats.proposed + len(drafts), stats.accepted + kept,
                                                                stats.rounds + 1)
                stats.layer_calls += (len(drafts) + 1) * k + (total - k)
                for token in round_tokens:
                    new.append(token)
                    if token in self.eos or len(new) == max_new_tokens:
                        break
                if new[-1] in self.eos:
                    break
            _sync(self.device)
            seconds = time.perf_counter() - started
        stats.tokens += len(new)
        return new, seconds
