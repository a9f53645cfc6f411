"""R^3, the Regularized Relevance Reward (Kim & Seo, "Rethinking the Role of Proxy Rewards in Language Model
Alignment", EMNLP 2024, arXiv 2402.03469; reference code: naver-ai/rethinking-proxy-reward).

A preference-free reward built from a retriever and two inductive biases that keep each other in check:

- QR, query relevance: ``e(query) . e(response)``; the query is the user's question, cleaned of chat markup;
- RAR, reference-answer relevance: ``e(reference) . e(response)``, only where a reference answer exists;
- LI, length incentive: word tokens of the response / 100 (unbounded; QR and RP keep it in check);
- RP, repetition penalty: distinct word trigrams / all word trigrams, 1.0 when there are none.

Open-ended prompts get ``r = LI * QR * RP``; constrained prompts (a reference answer exists and the prompt is
flagged constrained, see *Branching*) get ``r = (RAR / s) * (L_max / 100) * RP``. In the authors' code the
constrained branch is a linear map of RAR from ``[0, s]`` onto LI's range ``[0, L_max / 100]`` (a response is at
most L_max tokens), so a constrained answer is paid like an open-ended answer of L_max words whose relevance
factor is RAR / s, whatever its length.

Choices made here (the paper leaves them open or this port changes them); each is a field of
:class:`R3Config`:

- Retriever. all-MiniLM-L6-v2 (see :mod:`rewards.retriever`) instead of Contriever: embeddings are mean-pooled
  and L2-normalised, so QR and RAR are cosines in [-1, 1]; Contriever's are unnormalised dot products.
- Word tokens. LI and RP count ``\\w+|[^\\w\\s]+`` tokens (NLTK's ``wordpunct_tokenize``, as the authors' code
  does): a punctuation run is a token, so "Hello, world!" has 4.
- Response cutting. The response is cut at the first role-prefix stop string (:data:`DEFAULT_STOP_STRINGS`:
  a policy that goes on talking as the user, "\\nHuman:", "<|im_start|>", ..., plus the authors' "\\n\\n\\n\\n",
  "\\n\\n--", "\\n\\n____"); all four factors score the cut text, as in the authors' training loop.
- Query cleaning. :func:`clean_query` keeps the last user turn and drops system prompts, chat-template markup
  and role tags. Only role tags go: "Question:", "Context:" or "Q:" inside the user's text stay (they are
  content). The authors join every user turn; on single-turn data the two agree, and a message-list prompt
  goes through :func:`rewards.text.prompt_text`, which keeps the last user turn, so both prompt formats agree.
- Empty responses. A response that is empty after cutting has QR = RAR = 0 (it says nothing relevant); the
  retriever would give the bare ``[CLS] [SEP]`` embedding a small arbitrary cosine.
- Branching (``branch``): ``"auto"`` (default) marks a row constrained when it has a non-empty reference and,
  if the batch carries a qtype column (``qtype_column``, default "qtype"), that column's value is one of
  ``constrained_values`` (default "CONSTRAINED", compared case-insensitively, the authors' label; theirs for
  the rest is "OPENENDED"); with no qtype column every row with a reference is constrained. ``"qtype"`` demands
  the column, ``"reference"`` ignores it, ``"none"`` scores every row open-ended (the authors'
  ``reward_branching=False``). A row flagged constrained without a reference is scored open-ended, with a
  warning.
- Switches. ``use_qr``, ``use_rar``, ``use_li``, ``use_rp``: a factor switched off is 1 in every formula and
  in its own component (RAR stays None where there is no reference). L_max / 100 is a constant of the
  constrained branch, not LI, so ``use_li=False`` leaves it in place (as in the authors' code).

The scale s for cosine similarity (``scale``, default :data:`DEFAULT_SCALE`)
-------------------------------------------------------------------------------------------------------------
The authors' s = 3.5 is tied to Contriever's unnormalised dot products. Intent: RAR / s stands where QR stands
in the open-ended formula, so the two branches pay comparable rewards in one batch (PPO normalises scores over
the batch, so the branch that pays more would dominate). It is re-derived here as *branch parity*: a good
answer to a constrained prompt earns what a good answer to an open-ended prompt earns,

    (RAR_good / s) * (L_max / 100) = LI_good * QR_good   =>   s = (L_max / 100) * RAR_good / (LI * QR)_good.

Measurement (``bench/bench_r3.py --derive-scale``, texts written for it, fp32 MiniLM, L_max = 512): 8
constrained questions, each with a reference answer and a good answer paraphrasing it: RAR_good from 0.73 to
0.94, median 0.867; 8 open-ended questions, each with a good answer of 89-104 words (99-120 wordpunct tokens,
median LI = 1.11): QR_good median 0.683, median (LI * QR)_good = 0.764. Hence s = 5.12 * 0.867 / 0.764 = 5.81,
rounded to 5.8. The eight good constrained answers then earn 0.64-0.83 (median 0.77; RP = 1 on these short
answers), level with the open-ended median of 0.76, and the branch stays within [-0.88, 0.88] (5.12 / 5.8)
since a cosine is at most 1. For comparison, the literal range map (s = 1.0, the top of the cosine range) would
pay a good constrained answer 4.4, six times a good open-ended one. Contriever cannot be loaded offline here, so
the authors' own branch ratio could not be measured. Under GRPO the choice matters less: every completion of a
group shares its prompt and so its branch, and group std-normalisation cancels s; it matters for PPO/RLOO-style
batch baselines and when R^3 is weighted against other objectives.

Query-copy guard (``copy_guard``, off by default so the paper's reward stays reproducible)
-------------------------------------------------------------------------------------------------------------
A response that restates the question is the retriever's nearest neighbour of the query, so it earns a higher
QR than a real answer (measured in ``tests/test_r3.py``: for "What are the main causes of inflation?", the
restatement "You are asking what the main causes of inflation are." scores QR 0.93, a correct answer 0.71, the
verbatim copy 1.0). With the guard on, QR is multiplied by ``min(1, novelty / copy_guard_min_novelty)`` when
QR >= ``copy_guard_min_similarity``, where novelty is the share of the response's distinct words (lower-cased
``\\w+``) absent from the query: the verbatim copy has novelty 0 and loses all of its QR, the restatement
(novelty 0.22) keeps 0.44 of it (QR 0.41), and answers, including one that restates the question before
answering it (novelty 0.7), keep all of theirs. Limitation: a very short answer made mostly of the question's
words ("The capital of France is Paris.", novelty 0.17) is scaled down too.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np

from rewards.errors import RewardConfigError
from rewards.retriever import BACKENDS, Retriever, get_retriever
from rewards.text import completion_text, prompt_text

DEFAULT_SCALE = 5.8
"""s for MiniLM cosines and L_max = 512, by branch parity (see the module docstring)."""

DEFAULT_MAX_LENGTH = 512
"""L_max, the authors' generation limit in tokens (their ``output_max_length``)."""

DEFAULT_STOP_STRINGS: tuple[str, ...] = (
    "\nHuman:",
    "\nUser:",
    "\nUSER:",
    "\nAssistant:",
    "\nASSISTANT:",
    "\nQuestion:",
    "\n### Human",
    "\n### User",
    "\n### Assistant",
    "\n### Instruction",
    "\n### Input",
    "\n### Response",
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "[INST]",
    "<start_of_turn>",
    "<end_of_turn>",
    "</s>",
    "\n\n\n\n",
    "\n\n--",
    "\n\n____",
)
"""Where a response is cut: role prefixes of the common chat formats (a policy that starts the next turn
itself), end-of-turn markers, and the authors' three layout breaks."""

BRANCH_RULES: tuple[str, ...] = ("auto", "qtype", "reference", "none")

# -- word tokens, LI, RP ----------------------------------------------------------------------------------------

_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")
_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Word tokens as the authors count them: runs of word characters or of punctuation (``wordpunct``)."""
    return _WORDPUNCT.findall(text)


def length_incentive(text: str) -> float:
    """LI (Kim & Seo 2024, Sec. 3): number of word tokens of ``text`` / 100, unbounded."""
    return len(word_tokens(text)) / 100.0


def repetition_penalty(text: str) -> float:
    """RP (Kim & Seo 2024, Sec. 3): distinct word trigrams / all word trigrams of ``text``; 1.0 when it has none.

    In (0, 1]; 1 means no trigram repeats. Tokens are compared as written (case-sensitive), as the authors do.
    """
    tokens = word_tokens(text)
    trigrams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))
    if not trigrams:
        return 1.0
    return len(set(trigrams)) / len(trigrams)


# -- relevance ----------------------------------------------------------------------------------------------


def query_relevance(query_emb: np.ndarray, response_emb: np.ndarray) -> np.ndarray:
    """QR (Kim & Seo 2024, Sec. 3): row-wise dot product ``e(query_i) . e(response_i)``.

    Args:
        query_emb: [N, d] query embeddings (L2-normalised, so QR is a cosine in [-1, 1]).
        response_emb: [N, d] response embeddings.
    Returns:
        [N] float64.
    """
    if query_emb.shape != response_emb.shape:
        raise ValueError(f"query_emb {query_emb.shape} and response_emb {response_emb.shape} differ in shape")
    return np.einsum("nd,nd->n", query_emb.astype(np.float64), response_emb.astype(np.float64))


def reference_relevance(
    reference_emb: np.ndarray, response_emb: np.ndarray, has_reference: np.ndarray | None = None
) -> np.ndarray:
    """RAR (Kim & Seo 2024, Sec. 3): row-wise dot product ``e(reference_i) . e(response_i)``.

    Args:
        reference_emb: [N, d] reference-answer embeddings (rows without a reference are ignored).
        response_emb: [N, d] response embeddings.
        has_reference: [N] bool, False where row i has no reference; default: all True.
    Returns:
        [N] float64, NaN where there is no reference (the components report those rows as None).
    """
    rar = query_relevance(reference_emb, response_emb)
    if has_reference is not None:
        rar = np.where(np.asarray(has_reference, dtype=bool), rar, np.nan)
    return rar


def open_ended_reward(li: np.ndarray, qr: np.ndarray, rp: np.ndarray) -> np.ndarray:
    """R^3 for open-ended prompts (Kim & Seo 2024, Eq. 2): ``LI * QR * RP``, all [N] -> [N]."""
    return np.asarray(li, dtype=np.float64) * np.asarray(qr, dtype=np.float64) * np.asarray(rp, dtype=np.float64)


def constrained_reward(
    rar: np.ndarray, rp: np.ndarray, scale: float = DEFAULT_SCALE, max_length: int = DEFAULT_MAX_LENGTH
) -> np.ndarray:
    """R^3 for constrained prompts (Kim & Seo 2024, Eq. 3): ``(RAR / s) * (L_max / 100) * RP``, [N] -> [N].

    ``scale`` is s (authors: 3.5 for Contriever; :data:`DEFAULT_SCALE` for MiniLM cosines), ``max_length`` L_max.
    """
    return np.asarray(rar, dtype=np.float64) / scale * (max_length / 100.0) * np.asarray(rp, dtype=np.float64)


# -- query-copy guard --------------------------------------------------------------------------------------


def query_novelty(query: str, response: str) -> float:
    """Share of the response's distinct lower-cased words (``\\w+``) that do not occur in the query, in [0, 1].

    0.0 for a response without words. A restatement of the question scores near 0, an answer near 1.
    """
    response_words = {w.lower() for w in _WORD.findall(response)}
    if not response_words:
        return 0.0
    query_words = {w.lower() for w in _WORD.findall(query)}
    return len(response_words - query_words) / len(response_words)


def copy_guard_factor(novelty: float, qr: float, min_novelty: float, min_similarity: float) -> float:
    """Multiplier in [0, 1] for QR: ``min(1, novelty / min_novelty)`` when ``qr >= min_similarity``, else 1."""
    if qr < min_similarity or novelty >= min_novelty:
        return 1.0
    return max(0.0, novelty / min_novelty)


# -- query cleaning and response cutting ---------------------------------------------------------------------

_ROLE_NAMES = {
    "user": "user",
    "human": "user",
    "instruction": "user",
    "input": "user",
    "assistant": "assistant",
    "response": "assistant",
    "model": "assistant",
    "gpt": "assistant",
    "system": "system",
}

# (pattern, fixed role or None to read the "role" group). Plain tags ("User:") only match at a line start, so
# "User:" inside a sentence stays; "### Role" is markup wherever it stands. "Question:"/"Answer:" style
# prefixes are content, never tags.
_ROLE_TAGS: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"<\|im_start\|>[ \t]*(?P<role>\w+)[ \t]*\n?"), None),
    (re.compile(r"<\|start_header_id\|>\s*(?P<role>\w+)\s*<\|end_header_id\|>[ \t]*\n*"), None),
    (re.compile(r"<\|(?P<role>system|user|assistant)\|>[ \t]*\n?"), None),
    (re.compile(r"<start_of_turn>[ \t]*(?P<role>\w+)[ \t]*\n?"), None),
    (re.compile(r"\[INST\]"), "user"),
    (re.compile(r"\[/INST\]"), "assistant"),
    (re.compile(r"<<SYS>>"), "system"),
    (re.compile(r"<</SYS>>"), "user"),
    (
        re.compile(
            r"(?:^|(?<=\s))###[ \t]*(?P<role>Human|User|Instruction|Input|Assistant|Response|System)\b[ \t]*:?[ \t]*"
        ),
        None,
    ),
    (
        re.compile(
            r"^[ \t]*(?P<role>Human|User|Assistant|System|HUMAN|USER|ASSISTANT|SYSTEM|GPT)[ \t]*:[ \t]*", re.MULTILINE
        ),
        None,
    ),
    # Vicuna puts "USER:" / "ASSISTANT:" inline after the system prompt
    (re.compile(r"(?<=\s)(?P<role>USER|ASSISTANT)[ \t]*:[ \t]*"), None),
)

_SPECIAL_TOKENS = re.compile(
    r"<\|(?:im_end|eot_id|eom_id|begin_of_text|end_of_text|endoftext|end)\|>|</?s>|<end_of_turn>|<bos>|<eos>"
)
_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=65536)
def clean_query(text: str) -> str:
    """The retrieval query of a prompt string: its last user turn, without system prompt, markup or role tags.

    Recognised formats: ChatML (``<|im_start|>user``), Llama 3 headers, Zephyr/Phi (``<|user|>``), Gemma
    (``<start_of_turn>user``), Llama 2 (``[INST]``, ``<<SYS>>``), Alpaca/markdown (``### Instruction:``,
    ``### Input:``, ``### Human:`` ...), Anthropic/Vicuna plain tags at a line start (``Human:``, ``USER:``,
    ``Assistant:``, ``System:``). Consecutive user segments (Alpaca's Instruction + Input) form one turn. Text
    before the first tag is a system preamble when a user turn exists, and the query itself when none does.
    Words such as "Question:" or "Context:" are content, never removed. Whitespace runs become one space.
    """
    spans: list[tuple[int, int, str]] = []
    for pattern, fixed_role in _ROLE_TAGS:
        for match in pattern.finditer(text):
            role = fixed_role or _ROLE_NAMES.get(match.group("role").lower(), "other")
            spans.append((match.start(), match.end(), role))
    spans.sort(key=lambda s: (s[0], -s[1]))
    segments: list[tuple[str, str]] = []  # (role, text)
    cursor, role = 0, "lead"
    for start, end, tag_role in spans:
        if start < cursor:
            continue  # overlaps a tag already taken
        segments.append((role, text[cursor:start]))
        cursor, role = end, tag_role
    segments.append((role, text[cursor:]))

    turns: list[tuple[str, str]] = []
    for seg_role, seg_text in segments:
        seg_text = _SPECIAL_TOKENS.sub(" ", seg_text)
        if turns and turns[-1][0] == seg_role == "user":
            turns[-1] = ("user", turns[-1][1] + "\n" + seg_text)
        else:
            turns.append((seg_role, seg_text))
    user_turns = [t for r, t in turns if r == "user" and t.strip()]
    if user_turns:
        query = user_turns[-1]
    else:
        lead = [t for r, t in turns if r == "lead" and t.strip()]
        query = lead[0] if lead else " ".join(t for r, t in turns if r != "system")
    return _SPACE.sub(" ", query).strip()


def cut_response(text: str, stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS) -> str:
    """``text`` up to the first stop string (role prefix of a turn the policy should not write), stripped.

    Leading newlines and spaces are removed first, as the authors do. Stop strings match as written: "\\nHuman:"
    needs a newline before it, so a response may open with "Question:" or "Human:"; one that opens with markup
    such as "<|im_start|>" is cut to the empty string.
    """
    text = text.strip("\n ")
    cut = len(text)
    for stop in stop_strings:
        at = text.find(stop)
        if 0 <= at < cut:
            cut = at
    return text[:cut].strip()


# -- configuration -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class R3Config:
    """Every option of R^3; see the module docstring for what each choice means.

    Attributes:
        use_qr, use_rar, use_li, use_rp: factor switches; a factor switched off is 1.
        scale: s, dividing RAR in the constrained branch (> 0).
        max_length: L_max in tokens; the constrained branch multiplies by L_max / 100 (> 0).
        branch: "auto", "qtype", "reference" or "none": which rows are constrained.
        qtype_column: dataset column holding the prompt type.
        constrained_values: qtype values (case-insensitive) that mark a row constrained.
        reference_column: dataset column holding the reference answer.
        clean_query: strip chat markup, system prompt and role tags from the query.
        cut_response: cut the response at the first of ``stop_strings``.
        stop_strings: where responses are cut.
        copy_guard: scale QR down for responses that restate the question (off: the paper's reward).
        copy_guard_min_novelty: novelty below which the guard scales QR by novelty / this, in (0, 1].
        copy_guard_min_similarity: QR at or above which the guard looks at novelty at all, in [-1, 1].
        backend: retriever backend, "fp32" or "int8".
        batch_size: most rows in one retriever forward pass.
        cache_size: LRU entries for prompt and reference embeddings.
    """

    use_qr: bool = True
    use_rar: bool = True
    use_li: bool = True
    use_rp: bool = True
    scale: float = DEFAULT_SCALE
    max_length: int = DEFAULT_MAX_LENGTH
    branch: str = "auto"
    qtype_column: str = "qtype"
    constrained_values: tuple[str, ...] = ("CONSTRAINED",)
    reference_column: str = "reference"
    clean_query: bool = True
    cut_response: bool = True
    stop_strings: tuple[str, ...] = field(default=DEFAULT_STOP_STRINGS)
    copy_guard: bool = False
    copy_guard_min_novelty: float = 0.5
    copy_guard_min_similarity: float = 0.5
    backend: str = "fp32"
    batch_size: int = 64
    cache_size: int = 8192

    def __post_init__(self) -> None:
        for name in ("use_qr", "use_rar", "use_li", "use_rp", "clean_query", "cut_response", "copy_guard"):
            if not isinstance(getattr(self, name), bool):
                raise RewardConfigError(f"r3.{name}: must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not self.scale > 0:
            raise RewardConfigError(f"r3.scale: must be a number > 0, got {self.scale!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length <= 0:
            raise RewardConfigError(f"r3.max_length: must be an integer > 0, got {self.max_length!r}")
        if self.branch not in BRANCH_RULES:
            raise RewardConfigError(f"r3.branch: {self.branch!r} is not allowed; choose {', '.join(BRANCH_RULES)}")
        if self.backend not in BACKENDS:
            raise RewardConfigError(f"r3.backend: unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")
        for name in ("qtype_column", "reference_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise RewardConfigError(f"r3.{name}: must be a non-empty column name, got {getattr(self, name)!r}")
        for name in ("constrained_values", "stop_strings"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise RewardConfigError(f"r3.{name}: must be a list of non-empty strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not 0 < self.copy_guard_min_novelty <= 1:
            raise RewardConfigError(
                f"r3.copy_guard_min_novelty: must be in (0, 1], got {self.copy_guard_min_novelty!r}"
            )
        if not -1 <= self.copy_guard_min_similarity <= 1:
            raise RewardConfigError(
                f"r3.copy_guard_min_similarity: must be in [-1, 1], got {self.copy_guard_min_similarity!r}"
            )
        for name in ("batch_size", "cache_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise RewardConfigError(f"r3.{name}: must be an integer >= {int(name == 'batch_size')}, got {value!r}")

    @classmethod
    def from_kwargs(cls, config: R3Config | None = None, **overrides: Any) -> R3Config:
        """``config`` (default: the defaults) with ``overrides`` applied; unknown names raise RewardConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RewardConfigError(f"r3: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(config or cls(), **overrides)


# -- batch scoring -----------------------------------------------------------------------------------------


@dataclass
class R3Factors:
    """Every factor of one batch of N rows, switches and the copy guard applied (a factor switched off is 1).

    Attributes:
        query: [N] cleaned queries.  response: [N] cut responses.  reference: [N] references or None.
        constrained: [N] bool, the rows scored by the constrained branch.
        li, rp: [N] LI and RP.  novelty: [N] query novelty of each response (for the copy guard).
        qr: [N] QR, guarded when the guard is on; None until relevance is computed.
        qr_unguarded: [N] QR before the guard.  rar: [N] RAR, NaN where there is no reference.
    """

    query: list[str]
    response: list[str]
    reference: list[str | None]
    constrained: np.ndarray
    li: np.ndarray
    rp: np.ndarray
    novelty: np.ndarray
    qr: np.ndarray | None = None
    qr_unguarded: np.ndarray | None = None
    rar: np.ndarray | None = None

    def reward(self, config: R3Config) -> np.ndarray:
        """[N] R^3: ``(RAR / s) * (L_max / 100) * RP`` on constrained rows, ``LI * QR * RP`` on the rest."""
        if self.qr is None or self.rar is None:
            raise ValueError("relevance factors were not computed for this batch")
        open_r = open_ended_reward(self.li, self.qr, self.rp)
        rar = np.where(self.constrained, self.rar, 0.0)
        constrained_r = constrained_reward(rar, self.rp, config.scale, config.max_length)
        return np.where(self.constrained, constrained_r, open_r)


def _reference_or_none(value: Any) -> str | None:
    """A reference cell as text, or None when it is missing, NaN or blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = value if isinstance(value, str) else completion_text(value)
    return text if text.strip() else None


def _column(columns: dict[str, Sequence[Any]], name: str, n: int) -> list[Any] | None:
    """Column ``name`` as a list of length n, or None when the batch does not carry it."""
    values = columns.get(name)
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} rows, the batch has {n}")
    return values


class R3Scorer:
    """Computes :class:`R3Factors` for batches; shared by the R^3 components so a batch is scored once.

    The last batch's factors are memoised (the composer calls r3, r3.qr, r3.rar, ... on the same batch);
    prompt and reference embeddings go through the retriever's LRU cache, responses are encoded once per batch.

    Args:
        config: options (default :class:`R3Config`).
        retriever: the encoder; default: :func:`rewards.retriever.get_retriever` for ``config.backend``, built
            on first need (LI and RP alone never load it).
    """

    def __init__(self, config: R3Config | None = None, retriever: Retriever | None = None) -> None:
        self.config = config or R3Config()
        self._retriever = retriever
        self._memo_key: tuple[Any, ...] | None = None
        self._memo: R3Factors | None = None
        self._lock = threading.RLock()
        self._warned_missing_reference = False

    @property
    def retriever(self) -> Retriever:
        """The retriever, loaded on first use."""
        if self._retriever is None:
            self._retriever = get_retriever(
                self.config.backend, batch_size=self.config.batch_size, cache_size=self.config.cache_size
            )
        return self._retriever

    def factors(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        columns: dict[str, Sequence[Any]] | None = None,
        *,
        relevance: bool = True,
    ) -> R3Factors:
        """Factors of N (prompt, completion) rows; ``columns`` are the batch's extra dataset columns (reference,
        qtype, ...). With ``relevance=False`` QR and RAR are left uncomputed (no retriever needed)."""
        cfg = self.config
        columns = columns or {}
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        queries = [clean_query(prompt_text(p)) if cfg.clean_query else prompt_text(p) for p in prompts]
        responses = [
            cut_response(completion_text(c), cfg.stop_strings) if cfg.cut_response else completion_text(c)
            for c in completions
        ]
        ref_col = _column(columns, cfg.reference_column, n)
        references = [_reference_or_none(v) for v in ref_col] if ref_col is not None else [None] * n
        constrained = self._constrained(references, _column(columns, cfg.qtype_column, n))
        key = (tuple(queries), tuple(responses), tuple(references), tuple(constrained.tolist()))
        with self._lock:
            if key != self._memo_key or self._memo is None:
                self._memo_key = key
                self._memo = R3Factors(
                    query=queries,
                    response=responses,
                    reference=references,
                    constrained=constrained,
                    li=np.array([length_incentive(r) if cfg.use_li else 1.0 for r in responses], dtype=np.float64),
                    rp=np.array([repetition_penalty(r) if cfg.use_rp else 1.0 for r in responses], dtype=np.float64),
                    novelty=np.array([query_novelty(q, r) for q, r in zip(queries, responses, strict=True)]),
                )
            factors = self._memo
            if relevance and factors.qr is None:
                self._relevance(factors)
            return factors

    def _constrained(self, references: list[str | None], qtypes: list[Any] | None) -> np.ndarray:
        """[N] bool: rows scored by the constrained branch under ``config.branch``."""
        cfg = self.config
        has_ref = np.array([r is not None for r in references], dtype=bool)
        if cfg.branch == "none":
            return np.zeros(len(references), dtype=bool)
        if cfg.branch == "reference" or (cfg.branch == "auto" and qtypes is None):
            return has_ref
        if qtypes is None:
            raise RewardConfigError(f"r3.branch='qtype' needs the column {cfg.qtype_column!r} in the batch")
        wanted = {v.strip().lower() for v in cfg.constrained_values}
        flagged = np.array([isinstance(q, str) and q.strip().lower() in wanted for q in qtypes], dtype=bool)
        if (flagged & ~has_ref).any() and not self._warned_missing_reference:
            self._warned_missing_reference = True
            warnings.warn(
                f"r3: rows flagged constrained by {cfg.qtype_column!r} have no {cfg.reference_column!r}; "
                "they are scored open-ended",
                stacklevel=3,
            )
        return flagged & has_ref

    def _relevance(self, factors: R3Factors) -> None:
        """Fill ``factors.qr``, ``qr_unguarded`` and ``rar`` (needs the retriever unless both are switched off)."""
        cfg = self.config
        n = len(factors.response)
        has_ref = np.array([r is not None for r in factors.reference], dtype=bool)
        nonempty = np.array([bool(r) for r in factors.response], dtype=bool)
        qr = np.ones(n)
        rar = np.where(has_ref, 1.0, np.nan)
        if cfg.use_qr or (cfg.use_rar and has_ref.any()):
            response_emb = self.retriever.encode(factors.response)
            if cfg.use_qr:
                query_emb = self.retriever.encode(factors.query, cache=True)
                qr = np.where(nonempty, query_relevance(query_emb, response_emb), 0.0)
            if cfg.use_rar and has_ref.any():
                rows = np.flatnonzero(has_ref)
                ref_emb = self.retriever.encode([factors.reference[i] for i in rows], cache=True)
                rar[rows] = np.where(nonempty[rows], query_relevance(ref_emb, response_emb[rows]), 0.0)
        factors.qr_unguarded = qr
        if cfg.copy_guard and cfg.use_qr:
            guard = np.array(
                [
                    copy_guard_factor(nv, q, cfg.copy_guard_min_novelty, cfg.copy_guard_min_similarity)
                    for nv, q in zip(factors.novelty, qr, strict=True)
                ]
            )
            qr = qr * guard
        factors.qr = qr
        factors.rar = rar


_SCORERS: dict[R3Config, R3Scorer] = {}
_SCORERS_LOCK = threading.Lock()


def shared_scorer(config: R3Config | None = None) -> R3Scorer:
    """The process-wide :class:`R3Scorer` for ``config``: components built with equal options (as the registry
    builds them, one by one) share it, and with it the memo of the last batch."""
    config = config or R3Config()
    with _SCORERS_LOCK:
        scorer = _SCORERS.get(config)
        if scorer is None:
            scorer = _SCORERS[config] = R3Scorer(config)
        return scorer


# -- components --------------------------------------------------------------------------------------------


class _R3Component:
    """Base of the R^3 components: holds a shared :class:`R3Scorer` and the objective's name."""

    default_name = "r3"
    needs_relevance = True

    def __init__(
        self,
        config: R3Config | None = None,
        *,
        name: str | None = None,
        scorer: R3Scorer | None = None,
        retriever: Retriever | None = None,
        **options: Any,
    ) -> None:
        if scorer is not None and (config is not None or options or retriever is not None):
            raise RewardConfigError("r3: pass either a scorer or config/options/retriever, not both")
        if scorer is None:
            cfg = R3Config.from_kwargs(config, **options)
            scorer = R3Scorer(cfg, retriever=retriever) if retriever is not None else shared_scorer(cfg)
        self.scorer = scorer
        self.name = name or self.default_name

    @property
    def __name__(self) -> str:  # TRL names reward functions by __name__
        return self.name

    @property
    def config(self) -> R3Config:
        """The scorer's options."""
        return self.scorer.config

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        factors = self.scorer.factors(prompts, completions, columns, relevance=self.needs_relevance)
        return [None if v is None or math.isnan(v) else float(v) for v in self._values(factors)]

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class R3Reward(_R3Component):
    """R^3 (Kim & Seo 2024): ``LI * QR * RP`` on open-ended rows, ``(RAR / s) * (L_max / 100) * RP`` on
    constrained ones. Options: the fields of :class:`R3Config`, as ``config=`` or keyword arguments."""

    default_name = "r3"

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        return factors.reward(self.config).tolist()


class QueryRelevance(_R3Component):
    """QR alone, ``e(query) . e(response)`` (copy guard applied when on; 1 when ``use_qr`` is off)."""

    default_name = "r3.qr"

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        assert factors.qr is not None
        return factors.qr.tolist()


class ReferenceRelevance(_R3Component):
    """RAR alone, ``e(reference) . e(response)``; None where the row has no reference."""

    default_name = "r3.rar"

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        assert factors.rar is not None
        return factors.rar.tolist()


class LengthIncentive(_R3Component):
    """LI alone, word tokens / 100 of the cut response (1 when ``use_li`` is off). Never loads the retriever."""

    default_name = "r3.li"
    needs_relevance = False

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        return factors.li.tolist()


class RepetitionPenalty(_R3Component):
    """RP alone, distinct / all word trigrams of the cut response (1 when ``use_rp`` is off). No retriever."""

    default_name = "r3.rp"
    needs_relevance = False

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        return factors.rp.tolist()


def r3_components(
    config: R3Config | None = None, *, retriever: Retriever | None = None, **options: Any
) -> list[_R3Component]:
    """The five R^3 objectives (r3, r3.qr, r3.rar, r3.li, r3.rp) sharing one scorer, so a batch is scored once."""
    cfg = R3Config.from_kwargs(config, **options)
    scorer = R3Scorer(cfg, retriever=retriever) if retriever is not None else shared_scorer(cfg)
    classes = (R3Reward, QueryRelevance, ReferenceRelevance, LengthIncentive, RepetitionPenalty)
    return [cls(scorer=scorer) for cls in classes]
