"""The transformers engine: batched `generate` with left padding; the CPU default and the fallback engine.

Inside a learner it shares the learner's model (nothing to sync). Behind the rollout server it holds its own
copy and takes weight updates (`update_weights`: full weights by name; `load_adapter`: a PEFT LoRA adapter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rollout.base import Prompt, PromptLimit, PromptRenderError, Sample, SamplingParams, Truncation


def _apply_chat_template(tokenizer: PreTrainedTokenizerBase, messages: list[Any], **kwargs: Any) -> Any:
    """`tokenizer.apply_chat_template(messages, **kwargs)`, with every failure as a one-line PromptRenderError:
    no chat template, or a template that rejects the messages (a template is the model's code, so whatever it
    raises counts as a rejection)."""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptRenderError(
            "chat messages need a chat template and this tokenizer has none; give plain-text prompts or use a "
            "model whose tokenizer has a chat template"
        )
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as err:  # noqa: BLE001 - jinja2 and template code raise their own types
        text = str(err).strip()
        detail = text.splitlines()[0][:300] if text else ""
        raise PromptRenderError(
            f"the tokenizer's chat template rejects these messages ({type(err).__name__}"
            f"{': ' + detail if detail else ''})"
        ) from None


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Any], *, add_generation_prompt: bool) -> list[int]:
    """Token ids of chat messages through the tokenizer's chat template (as TRL renders them); PromptRenderError
    (one line) when the tokenizer has no chat template or the template rejects the messages."""
    ids = _apply_chat_template(
        tokenizer, messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )
    return list(ids["input_ids"])


def render_chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[Any], *, add_generation_prompt: bool) -> str:
    """The text `render_chat` tokenizes, with the same errors (about 5x cheaper: for checks before a run)."""
    return str(_apply_chat_template(tokenizer, messages, add_generation_prompt=add_generation_prompt, tokenize=False))


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of a prompt as TRL builds them: chat template with generation prompt, or the plain text.
    PromptRenderError when chat messages cannot be rendered (`render_chat`)."""
    if isinstance(prompt, str):
        return list(tokenizer(text=prompt)["input_ids"])
    return render_chat(tokenizer, prompt, add_generation_prompt=True)


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt]) -> list[list[int]]:
    """`tokenize_prompt` for each prompt; a PromptRenderError names the prompt's index."""
    out = []
    for i, prompt in enumerate(prompts):
        try:
            out.append(tokenize_prompt(tokenizer, prompt))
        except PromptRenderError as err:
            raise PromptRenderError(f"prompt {i}: {err}") from None
    return out


def truncate_at_stop(
    completion_ids: list[int], eos_ids: set[int], stop: Sequence[str], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], bool]:
    """Cut generated ids after the first EOS (kept) or after the token completing a stop string.

    Returns (ids, stopped): stopped is True when an EOS or a stop string ended the completion.
    """
    for t, token in enumerate(completion_ids):
        if token in eos_ids:
            completion_ids = completion_ids[: t + 1]
            return completion_ids, True
    if stop:
        text = tokenizer.decode(completion_ids, skip_special_tokens=True)
        if any(s in text for s in stop):
            for t in range(1, len(completion_ids) + 1):
                prefix = tokenizer.decode(completion_ids[:t], skip_special_tokens=True)
                if any(s in prefix for s in stop):
                    return completion_ids[:t], True
    return completion_ids, False


class TransformersEngine:
    """Generates with a transformers (or PEFT) causal LM held in this process.

    The engine shares the learner's weights: no copy, no sync. Inside a learner under ZeRO-3, call
    `generate` within `using(unwrapped_model)` so that the gathered full parameters are used.
    """

    name = "transformers"

    def __init__(
        self,
        model: PreTrainedModel | Any,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 64,
        *,
        max_prompt_tokens: int | None = None,
        prompt_truncation: Truncation = "left",
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before generating")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prompt_limit = PromptLimit(max_prompt_tokens, prompt_truncation)
        self.truncated_prompts = 0  # prompts cut from the left so far (each cut is also logged)
        self._adapter_config: dict[str, Any] | None = None

    @property
    def context_length(self) -> int | None:
        """The model's context window in tokens (max_position_embeddings), if it declares one."""
        value = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    @contextlib.contextmanager
    def using(self, model: Any) -> Iterator[TransformersEngine]:
        """Temporarily generate with `model` (e.g. the ZeRO-3 gathered copy of the policy)."""
        previous, self.model = self.model, model
        try:
            yield self
        finally:
            self.model = previous

    def _eos_ids(self) -> set[int]:
        eos: set[int] = set()
        config = getattr(self.model, "generation_config", None)
        for source in (getattr(config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(x) for x in source)
        return eos

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Sample `params.n` completions for each prompt; returns one list of samples per prompt, in order."""
        prompt_ids = tokenize_prompts(self.tokenizer, prompts)
        prompt_ids, truncated = self.prompt_limit.apply(prompt_ids, self.context_length, params.max_tokens)
        self.truncated_prompts += truncated
        if params.seed is not None:
            torch.manual_seed(params.seed)
        per_chunk = max(1, self.batch_size // params.n)
        results: list[list[Sample]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompt_ids), per_chunk):
                results.extend(self._generate_chunk(prompt_ids[start : start + per_chunk], params))
        finally:
            if was_training:
                self.model.train()
        return results

    def _generate_chunk(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[Sample]]:
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids in prompt_ids)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        eos_ids = self._eos_ids()
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else None,
            max_new_tokens=params.max_tokens,
            num_return_sequences=params.n,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids) if eos_ids else None,
            output_logits=True,
            return_dict_in_generate=True,
        )
        generated = out.sequences[:, width:].cpu()
        # Logprobs under the sampling distribution at temperature T (before top-k/top-p), as TRL recomputes them.
        logits = torch.stack(out.logits, dim=1).float().cpu() / params.temperature
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        samples: list[list[Sample]] = [[] for _ in prompt_ids]
        for row in range(generated.shape[0]):
            prompt_index = row // params.n
            ids, stopped = truncate_at_stop(generated[row].tolist(), eos_ids, params.stop, self.tokenizer)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in params.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            samples[prompt_index].append(
                Sample(
                    text=text,
                    prompt_ids=list(prompt_ids[prompt_index]),
                    completion_ids=ids,
                    logprobs=token_logprobs[row, : len(ids)].tolist(),
                    finish_reason="stop" if stopped else "length",
                )
            )
        return samples

    # -- weight updates (when this engine holds its own copy, e.g. behind the rollout server) -----------------
    @torch.no_grad()
    def update_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy full weights (Hugging Face names; a subset is fine) into the model; drops any loaded adapter.

        Raises ValueError naming unknown parameters or mismatched shapes before anything is changed.
        """
        if self._adapter_config is not None:
            self.model = self.model.unload()  # back to the plain base model (LoRA layers removed, not merged)
            self._adapter_config = None
        params = dict(self.model.named_parameters())
        # Tied weights (lm_head tied to the embeddings) appear once in named_parameters; accept both names.
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            params.setdefault(name, tensor)
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise ValueError(
                f"{len(unknown)} unknown parameter name(s), e.g. {unknown[:3]}; expected names like "
                f"{sorted(params)[:3]}"
            )
        bad = [(n, tuple(t.shape), tuple(params[n].shape)) for n, t in tensors.items() if t.shape != params[n].shape]
        if bad:
            name, got, want = bad[0]
            raise ValueError(f"{len(bad)} shape mismatch(es), e.g. {name}: got {got}, the model has {want}")
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))

    def load_adapter(self, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        """Generate from now on with the PEFT LoRA adapter `tensors` (keys as `get_peft_model_state_dict` gives
        them) and `config` (the adapter's LoraConfig as a dict) on top of the current base weights.

        The first adapter (or one with another config) wraps the model with PEFT; later ones only replace the
        adapter tensors. Raises ValueError when the tensors do not match the adapter's parameters.
        """
        from peft import get_peft_config, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        if config != self._adapter_config:
            try:
                peft_config = get_peft_config(dict(config))
            except (TypeError, ValueError, KeyError) as err:
                raise ValueError(f"bad adapter config: {err}") from None
            peft_config.inference_mode = True
            base = self.model.unload() if self._adapter_config is not None else self.model
            self.model = get_peft_model(base, peft_config)
            self.model.eval()
            self._adapter_config = dict(config)
        expected = set(get_peft_model_state_dict(self.model))
        missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unknown:
            self.model, self._adapter_config = self.model.unload(), None  # serve the plain base weights
            raise ValueError(
                f"adapter tensors do not match the adapter: {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unknown)} unknown (e.g. {unknown[:2]})"
            )
        set_peft_model_state_dict(self.model, tensors)
