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

- Retriever. all-MiniLM-L6-v2 (see :mod:`rewards.r3.retriever`) instead of Contriever: embeddings are mean-pooled
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
  constrained branch, not LI, so ``use_li=False`` leaves it in place (as in the authors' code). The constrained
  branch is RAR's: with ``use_rar=False`` every row is open-ended, so with both relevances off every row gets
  ``LI * RP``, as the authors' reward without relevance scaling does.
- Long texts (``truncation_side``, default "left"). MiniLM reads 256 word pieces; a longer query, reference or
  (under ``response_encoding: truncate``) response is cut on the left, keeping its end, as the authors'
  Contriever does (``truncation_side="left"``, at its 512).

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

Extensions (off in the paper preset; the ``robust`` preset, :data:`PRESETS`, turns all three on)
-------------------------------------------------------------------------------------------------------------
The paper's reward can be gamed: an answer followed by ~300 words of unrelated true sentences out-earns the
answer alone (LI grows ~15x, QR falls ~2x), and a response that echoes the question out-earns answers (QR of a copy
is ~1). Measured on the probe sets of ``tools/r3_pairs.py`` in docs/FIDELITY.md; each extension is a field:

- ``response_encoding: chunked``: relevance sees the whole response. It is cut into chunks of whole sentences
  of at most ``chunk_tokens`` (64) word pieces (:meth:`rewards.r3.retriever.Retriever.encode_chunks`), each chunk
  is encoded, and the response's embedding is the mean of its chunk embeddings weighted by their word tokens, not
  renormalised: QR (and RAR) is then the word-weighted mean of the chunks' relevances, and ``LI * QR`` is exactly
  the sum over chunks of ``LI(chunk) * QR(chunk)``: every part of a response is paid its own length times its
  own relevance. A response of one chunk scores as one pass does. (A renormalised mean of chunk embeddings was
  measured too: it lets padding win, docs/FIDELITY.md.)
- ``relevance_floor`` (0.3): QR is measured from a floor, ``(QR - floor) / (1 - floor)``
  (:func:`floored_relevance`), so, with chunks, text less relevant than the floor costs reward in proportion to
  its length instead of earning a little. MiniLM gives unrelated text a positive cosine (median 0.08 for a
  sentence, ~0.18 for a window of several unrelated facts against a "Question: ... Answer:" query), which the
  unbounded LI multiplies; seeing the whole response alone does not stop padding. 0.3 sits above 97.8% of the
  cosines between 32 questions and the 62 sentences written for the other questions, and below all 64 written for
  their own (``bench/bench_r3.py --derive-floor``; not the probe sets). RAR is not floored (the constrained branch
  has no LI to pay for length).
- ``copy_guard``: what a response copies from the question earns no relevance. Copied words are those in runs
  of ``copy_guard_min_run`` (3) consecutive words that also occur consecutively in the query, or every word of a
  response made only of the query's words (:func:`strip_copied`); single shared words, the question's key words,
  never count. For a response that copies and has QR >= ``copy_guard_min_similarity`` (0.5), QR is multiplied by
  :func:`copy_guard_factor`, ``rho * (2 - rho)`` with ``rho`` = QR of the response without its copied words / QR.
  For "What are the main causes of inflation?" (``tests/test_r3.py``): the verbatim copy goes from QR 1.0 to 0,
  the restatement "You are asking what the main causes of inflation are." from 0.93 to 0.30, a correct answer
  stays at 0.71, and "The main causes of inflation are demand outpacing supply, ..." keeps the relevance of its
  answer (0.84 -> 0.73); "Paris is the French capital." is untouched and "The capital of France is Paris." keeps
  0.81 of its 0.88. The guard replaces an earlier one that scaled QR by the share of the response's distinct
  words absent from the question, which also scaled down short answers made of the question's key words.

Layout: ``maths`` (the factor and reward formulas, pure functions), ``cleaning`` (query cleaning, response
cutting, the stop strings), ``config`` (:class:`R3Config`), ``scorer`` (one batch's factors, computed once and
shared), ``components`` (the reward components the registry builds), ``retriever`` (MiniLM loading, backends,
cache).
"""

from rewards.r3.cleaning import DEFAULT_STOP_STRINGS, clean_query, cut_response
from rewards.r3.components import (
    LengthIncentive,
    QueryRelevance,
    R3Reward,
    ReferenceRelevance,
    RepetitionPenalty,
    r3_components,
)
from rewards.r3.config import BRANCH_RULES, PRESETS, RESPONSE_ENCODINGS, R3Config
from rewards.r3.maths import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_SCALE,
    ROBUST_FLOOR,
    constrained_reward,
    copy_guard_factor,
    floored_relevance,
    length_incentive,
    open_ended_reward,
    query_relevance,
    reference_relevance,
    repetition_penalty,
    strip_copied,
    word_tokens,
)
from rewards.r3.scorer import R3Factors, R3Scorer, shared_scorer

__all__ = [
    "BRANCH_RULES",
    "PRESETS",
    "RESPONSE_ENCODINGS",
    "ROBUST_FLOOR",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_SCALE",
    "DEFAULT_STOP_STRINGS",
    "LengthIncentive",
    "QueryRelevance",
    "R3Config",
    "R3Factors",
    "R3Reward",
    "R3Scorer",
    "ReferenceRelevance",
    "RepetitionPenalty",
    "clean_query",
    "constrained_reward",
    "floored_relevance",
    "strip_copied",
    "copy_guard_factor",
    "cut_response",
    "length_incentive",
    "open_ended_reward",
    "query_relevance",
    "r3_components",
    "reference_relevance",
    "repetition_penalty",
    "shared_scorer",
    "word_tokens",
]
