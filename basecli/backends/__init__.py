"""Where tokens come from: the local torch engine, or a remote OpenAI-compatible server."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Protocol, Sequence

if TYPE_CHECKING:
    from basecli.config import SamplingParams
    from basecli.events import Event, ScoredToken
    from basecli.text.tokenizers import Tokenizer


class Backend(Protocol):
    """What commands use of a backend; LocalBackend and RemoteBackend declare it."""

    name: str  # the model's name, as output records show it
    tokenizer: "Tokenizer"
    context_length: int  # tokens, prompt and answer together
    load_seconds: float  # what opening it took
    local: bool  # weights and model code on this machine (info shows them; batches are sized to memory)

    def encode(self, text: str, *, truncate: bool = False, reserve: int = 1) -> list[int]:
        """Prompt ids as the model sees them; too long is a UsageError, or cut from the left with truncate."""

    def stream(self, prompts: Sequence[str], params: Sequence["SamplingParams"], *, alternatives: int = 0,
               entropy: bool = False, seeds: Optional[Sequence[int]] = None, truncate: bool = False) -> Iterator["Event"]:
        """One Event per new token of any row, rows interleaved, each row ending with its finish_reason."""

    def score(self, text: str, *, context: Optional[str] = None, alternatives: int = 0, stride: Optional[int] = None,
              window: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None) -> list["ScoredToken"]:
        """Teacher-forced log-probabilities of every token of `text`, the first conditioned on `context`."""


def open_backend(model: str | None = None, *, base_url: str | None = None, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False, quantize: str | None = None,
                 prefix_cache: bool = False) -> Backend:
    """--base-url, or a saved profile named by --model, means a remote server; anything else is local.

    `quantize` is --quantize as given (LocalBackend reads BASECLI_QUANTIZE itself): a weight format for a local model.
    `prefix_cache` keeps the keys and values of recent prompts between generations (a local model; a server
    keeps its own, if it does).
    """
    from basecli.backends import profiles
    from basecli.config import default_model

    profile = None if base_url else profiles.get(model or default_model())
    if quantize not in (None, "none") and (base_url or profile is not None):
        from basecli.errors import UsageError

        raise UsageError("--quantize applies to local models; the server chooses its own weights")
    if base_url:
        from basecli.backends.remote import RemoteBackend

        # the key only ever comes from the environment; a profile names its own variable
        return RemoteBackend(base_url, model, api_key=os.environ.get("BASECLI_API_KEY") or None,
                             tokenizer=os.environ.get("BASECLI_TOKENIZER") or None)
    if profile is not None:
        from basecli.backends.remote import from_profile

        return from_profile(profile)
    from basecli.backends.local import LocalBackend

    return LocalBackend(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                        quantize=quantize, prefix_cache=prefix_cache)
