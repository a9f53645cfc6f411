"""R^3 scoring throughput on CPU, int8-vs-fp32 agreement, and the derivations of the cosine scale s and of the
robust preset's relevance floor.

Workload (the GRPO shape): 32 prompts x 8 completions of ~40 words = 256 completions per step, new completions
every step (``--words 300``: ~300 words each, past MiniLM's 256 word pieces). Methods:

- ``plain``: ``SentenceTransformer.encode`` of the 256 queries (one per completion, as a reward function that
  knows nothing of groups does) and of the 256 responses, then the R^3 formula;
- ``<backend>-<preset>``: :class:`rewards.r3.R3Reward` with that preset ("paper": one truncated pass per
  response; "robust": the whole response in 64-piece chunks, floor, copy guard) on a
  :class:`rewards.r3.retriever.Retriever` of that backend (fp32, int8, int8-full), ``cold`` (the step's 32 prompts
  are new: deduplicated, 32 prompt encodes) and ``warm`` (they are in the LRU cache, as on a second epoch).

The machine is shared with other work, so every method is timed over several rounds, interleaved, and the best
and median rounds are reported, together with the load average and a matrix-multiply GFLOPS probe taken at the
start, and the process CPU seconds of each step (less sensitive to other work than wall time).
``--derive-scale`` prints the measurement behind ``rewards.r3.DEFAULT_SCALE``, ``--derive-floor`` the one behind
``rewards.r3.ROBUST_FLOOR``. Writes ``bench/results/r3.json`` (``r3_<words>w.json`` for other lengths) and prints
a table.

    python bench/bench_r3.py [--threads 2] [--rounds 3] [--words 40] [--presets paper,robust] [--derive-scale]
        [--derive-floor]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewards.r3 import (  # noqa: E402
    DEFAULT_MAX_LENGTH,
    ROBUST_FLOOR,
    R3Config,
    R3Reward,
    R3Scorer,
    clean_query,
    constrained_reward,
    cut_response,
    floored_relevance,
    length_incentive,
    open_ended_reward,
    repetition_penalty,
    word_tokens,
)
from rewards.r3.retriever import Retriever, _load_sentence_transformer, default_model_path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "r3.json"

# -- calibration texts for s (written for this benchmark) ------------------------------------------------------

# (question, reference answer, a good answer that paraphrases the reference)
CONSTRAINED_CALIBRATION: list[tuple[str, str, str]] = [
    (
        "What is the capital of Australia?",
        "The capital of Australia is Canberra.",
        "Canberra is Australia's capital city, chosen as a compromise between Sydney and Melbourne.",
    ),
    (
        "How many bones are in the adult human body?",
        "An adult human body has 206 bones.",
        "An adult skeleton usually has 206 bones; babies are born with more, and some fuse as they grow.",
    ),
    (
        "Who wrote Pride and Prejudice?",
        "Pride and Prejudice was written by Jane Austen.",
        "Jane Austen wrote Pride and Prejudice, first published in 1813.",
    ),
    (
        "What is the boiling point of water at sea level in Celsius?",
        "Water boils at 100 degrees Celsius at sea level.",
        "At standard sea-level pressure, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.",
    ),
    (
        "Translate 'thank you' into Spanish.",
        "'Thank you' in Spanish is 'gracias'.",
        "In Spanish you say 'gracias' to thank someone.",
    ),
    (
        "What is the chemical symbol for gold?",
        "The chemical symbol for gold is Au.",
        "Gold's chemical symbol is Au, from the Latin word aurum.",
    ),
    (
        "What is 15 multiplied by 4?",
        "15 multiplied by 4 equals 60.",
        "15 times 4 is 60.",
    ),
    (
        "Which planet is known as the Red Planet?",
        "Mars is known as the Red Planet.",
        "Mars is called the Red Planet because iron oxide on its surface gives it a reddish colour.",
    ),
]

# (open-ended question, a good answer of realistic length)
OPEN_CALIBRATION: list[tuple[str, str]] = [
    (
        "How can I improve my sleep quality?",
        "Keep a regular schedule: go to bed and wake up at the same time every day, weekends included. Make your "
        "bedroom dark, quiet and cool, and keep screens out of it for the last hour before sleep, because bright "
        "light delays the release of melatonin. Avoid caffeine after early afternoon and heavy meals or alcohol "
        "late in the evening. Regular exercise helps, but finish intense workouts a few hours before bed. If you "
        "cannot fall asleep within twenty minutes, get up and do something calm until you feel drowsy. If poor "
        "sleep persists for weeks, talk to a doctor about insomnia or sleep apnea.",
    ),
    (
        "Explain how vaccines work.",
        "A vaccine trains the immune system to recognise a pathogen without causing the disease. It contains a "
        "harmless piece or version of the germ, such as an inactivated virus, a protein from its surface, or mRNA "
        "instructions that let your cells make that protein for a short time. The immune system reacts to this "
        "antigen by producing antibodies and by creating memory B and T cells. If you later meet the real "
        "pathogen, these memory cells recognise it quickly and mount a strong response before the infection can "
        "take hold. Some vaccines need boosters because this memory fades over time.",
    ),
    (
        "What are some tips for learning a new programming language?",
        "Start with a small, concrete project instead of reading the whole manual: a command-line tool or a tiny "
        "web app forces you to learn the basics you actually need. Work through the official tutorial first, then "
        "read idiomatic code written by experienced developers to learn the language's conventions. Write code "
        "every day, even briefly, and use the language's standard tools for formatting, testing and debugging "
        "from the start. Compare new concepts with what you already know from other languages, but pay attention "
        "to where they differ. Finally, ask for code reviews, since feedback shows you habits you would not notice.",
    ),
    (
        "Why is biodiversity important?",
        "Biodiversity keeps ecosystems stable and productive. A variety of species means that if one declines, "
        "others can take over its role, so forests, wetlands and oceans keep cleaning water, storing carbon, "
        "building soil and pollinating crops. Much of our food, medicine and raw material comes from wild species "
        "or from their genes; many drugs were first found in plants and fungi. Diverse ecosystems also resist "
        "pests, diseases and climate extremes better. Beyond these services, many people value other species for "
        "their own sake and for the cultural and recreational life they support.",
    ),
    (
        "How do I prepare for a job interview?",
        "Research the company: its products, customers, recent news and culture, and reread the job description "
        "so you can match your experience to what they need. Prepare short stories about past work that show your "
        "skills, using the situation, task, action and result structure. Practise common questions out loud, "
        "ideally with a friend. Prepare a few thoughtful questions of your own about the team and the role. Plan "
        "the logistics the day before, dress one level more formally than the company norm, and bring copies of "
        "your resume. Afterwards, send a brief thank-you note.",
    ),
    (
        "Describe the water cycle.",
        "The water cycle is the continuous movement of water between the earth and the atmosphere. The sun heats "
        "oceans, lakes and soil, and water evaporates; plants also release water vapour through transpiration. "
        "As the warm, moist air rises it cools, and the vapour condenses into tiny droplets that form clouds. "
        "When the droplets grow heavy they fall as precipitation: rain, snow, sleet or hail. On land the water "
        "runs off into rivers, soaks into the ground to recharge aquifers, or is stored in ice, and eventually "
        "returns to the sea, where the cycle starts again.",
    ),
    (
        "What are the benefits of regular exercise?",
        "Regular exercise strengthens the heart and lungs, lowers blood pressure and improves cholesterol, which "
        "reduces the risk of heart disease and stroke. It helps control weight, improves insulin sensitivity and "
        "lowers the risk of type 2 diabetes. Strength training builds muscle and bone density, protecting against "
        "osteoporosis and falls later in life. Exercise also improves mood and sleep and reduces anxiety and "
        "symptoms of depression, partly through the release of endorphins. Even moderate activity such as brisk "
        "walking for thirty minutes on most days brings most of these benefits.",
    ),
    (
        "How does a bill become a law in the United States?",
        "A member of Congress introduces the bill in the House or the Senate, and it is sent to a committee that "
        "studies it, holds hearings and may amend it. If the committee approves it, the full chamber debates and "
        "votes on it. The bill then goes to the other chamber, which repeats the process. Both chambers must pass "
        "identical text, so differences are resolved by a conference committee. The final bill goes to the "
        "President, who can sign it into law or veto it; Congress can override a veto with a two-thirds vote in "
        "both chambers.",
    ),
]


def derive_scale(retriever: Retriever, max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, Any]:
    """Branch parity: s such that (median RAR_good / s) * L_max / 100 = median (LI * QR)_good."""
    refs = retriever.encode([r for _, r, _ in CONSTRAINED_CALIBRATION])
    goods = retriever.encode([a for _, _, a in CONSTRAINED_CALIBRATION])
    rar = (refs * goods).sum(1)
    questions = retriever.encode([q for q, _ in OPEN_CALIBRATION])
    answers = retriever.encode([a for _, a in OPEN_CALIBRATION])
    qr = (questions * answers).sum(1)
    li = np.array([length_incentive(a) for _, a in OPEN_CALIBRATION])
    words = [len(a.split()) for _, a in OPEN_CALIBRATION]
    rar_med, liqr_med = float(np.median(rar)), float(np.median(li * qr))
    scale = (max_length / 100) * rar_med / liqr_med
    return {
        "rule": "s = (L_max/100) * median(RAR_good) / median(LI*QR)_good",
        "max_length": max_length,
        "rar_good": [round(float(x), 4) for x in rar],
        "rar_good_median": round(rar_med, 4),
        "open_qr_good": [round(float(x), 4) for x in qr],
        "open_qr_good_median": round(float(np.median(qr)), 4),
        "open_li_good": [round(float(x), 4) for x in li],
        "open_li_good_median": round(float(np.median(li)), 4),
        "open_words": words,
        "open_li_qr_good_median": round(liqr_med, 4),
        "scale": round(scale, 3),
        "constrained_reward_at_scale": round(rar_med / scale * max_length / 100, 4),
        "constrained_reward_at_scale_1": round(rar_med * max_length / 100, 4),
    }


def derive_floor(retriever: Retriever) -> dict[str, Any]:
    """The relevance floor: where the cosines of questions with sentences written for *other* questions (off-topic)
    end and those with their own sentences (on-topic) begin, on the 32 questions of :data:`TOPICS` (not the probe
    sets the floor is evaluated on)."""
    questions = retriever.encode([q for q, _, _ in TOPICS])
    sentences = retriever.encode([s for _, a, b in TOPICS for s in (a, b)])
    sims = questions.astype(np.float64) @ sentences.T.astype(np.float64)
    own = np.zeros_like(sims, dtype=bool)
    for i in range(len(TOPICS)):
        own[i, 2 * i : 2 * i + 2] = True
    on, off = sims[own], sims[~own]
    return {
        "rule": "floor between the off-topic and on-topic sentence cosines: above ~97.5% of off-topic, below on-topic",
        "on_topic": {"n": int(on.size), "min": round(float(on.min()), 4), "p5": round(float(np.percentile(on, 5)), 4)},
        "off_topic": {
            "n": int(off.size),
            **{f"p{p}": round(float(np.percentile(off, p)), 4) for p in (50, 90, 95, 97.5, 99)},
            "max": round(float(off.max()), 4),
        },
        "share_off_topic_at_or_above": {str(t): round(float((off >= t).mean()), 4) for t in (0.25, 0.3, 0.35)},
        "share_on_topic_below": {str(t): round(float((on < t).mean()), 4) for t in (0.25, 0.3, 0.35)},
    }


def padding_study(retriever: Retriever) -> dict[str, Any]:
    """Pairwise accuracy of ``LI * QR * RP`` on the padded probe pairs (answer vs answer + ~300 unrelated words,
    ``tools/r3_pairs.py``, dev and held-out together) for each way of reading a long response, with and without
    the robust floor, and the median rewards of answers and padded answers. Ways: one pass truncated on the
    right or left; chunks of at most 32/64/128 word pieces combined as the word-weighted mean of the chunks'
    cosines (the robust preset's, 64) or as the renormalised mean of the chunk embeddings."""
    from tools.r3_pairs import asset_path

    pairs = [json.loads(line) for split in ("dev", "heldout") for line in asset_path("padded", split).open()]
    n = len(pairs)
    queries = [clean_query(p["prompt"]) for p in pairs] * 2
    responses = [cut_response(x) for x in [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]]
    q = retriever.encode(queries, cache=True).astype(np.float64)
    li = np.array([length_incentive(r) for r in responses])
    rp = np.array([repetition_penalty(r) for r in responses])
    qr = {
        f"one pass, truncated {side}": (q * retriever.encode(responses, truncation_side=side)).sum(1)
        for side in ("right", "left")
    }
    for max_tokens in (32, 64, 128):
        chunks = retriever.encode_chunks(responses, max_tokens=max_tokens)
        words = np.array([len(word_tokens(t)) for t in chunks.chunk_texts()], dtype=np.float64)
        qr[f"chunks {max_tokens}, word-weighted cosine"] = (q * chunks.pooled(words)).sum(1)
        mean = chunks.pooled(np.ones_like(words))
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
        qr[f"chunks {max_tokens}, renormalised mean embedding"] = (q * mean).sum(1)
    out: dict[str, Any] = {"pairs": n}
    for name, values in qr.items():
        for floor in (0.0, ROBUST_FLOOR):
            reward = li * floored_relevance(values, floor) * rp
            wins = (reward[:n] > reward[n:]).sum() + 0.5 * (reward[:n] == reward[n:]).sum()
            out[f"{name}, floor {floor}"] = {
                "accuracy": round(float(wins / n), 4),
                "median_answer": round(float(np.median(reward[:n])), 4),
                "median_padded": round(float(np.median(reward[n:])), 4),
            }
    return out


# -- synthetic GRPO workload -------------------------------------------------------------------------------

TOPICS: list[tuple[str, str, str]] = [
    (
        "What causes inflation?",
        "Inflation rises when demand grows faster than the supply of goods.",
        "Central banks raise interest rates to slow price growth.",
    ),
    (
        "How do plants make food?",
        "Plants use sunlight, water and carbon dioxide to make sugar.",
        "Chlorophyll in the leaves captures the energy of light.",
    ),
    (
        "Why do we have seasons?",
        "The tilt of the earth's axis changes how directly sunlight hits each hemisphere.",
        "Summer comes when your hemisphere leans toward the sun.",
    ),
    (
        "How does a refrigerator keep food cold?",
        "A refrigerant absorbs heat inside the fridge as it evaporates.",
        "The compressor pushes that heat out through coils at the back.",
    ),
    (
        "What is machine learning?",
        "Machine learning fits a model to data so it can make predictions.",
        "Training adjusts the model's parameters to reduce its errors on examples.",
    ),
    (
        "How do I bake bread at home?",
        "Mix flour, water, yeast and salt, then knead the dough until smooth.",
        "Let it rise, shape the loaf and bake it in a hot oven.",
    ),
    (
        "Why is exercise good for the heart?",
        "Exercise strengthens the heart muscle and lowers blood pressure.",
        "Regular cardio improves circulation and cholesterol levels.",
    ),
    (
        "How do airplanes stay in the air?",
        "Wings are shaped so air moving over them creates lift.",
        "Engines provide thrust that keeps air flowing over the wings.",
    ),
    (
        "What is a black hole?",
        "A black hole is a region where gravity is so strong that light cannot escape.",
        "Most form when a massive star collapses at the end of its life.",
    ),
    (
        "How can I save money each month?",
        "Track your spending and set a budget for each category.",
        "Automatically move part of your salary into a savings account.",
    ),
    (
        "What does DNA do?",
        "DNA stores the genetic instructions for building proteins.",
        "Genes are sections of DNA that are copied into RNA.",
    ),
    (
        "How do vaccines protect us?",
        "Vaccines teach the immune system to recognise a germ.",
        "Memory cells respond quickly if the real infection arrives later.",
    ),
    (
        "Why did the Roman Empire fall?",
        "Rome suffered from political instability and economic troubles.",
        "Invasions by Germanic tribes weakened the western empire.",
    ),
    (
        "How does the internet work?",
        "Computers exchange data in packets routed across many networks.",
        "Protocols such as TCP and IP make sure packets arrive in order.",
    ),
    (
        "What is climate change?",
        "Climate change is the long-term warming of the planet.",
        "Burning fossil fuels adds greenhouse gases that trap heat.",
    ),
    (
        "How do I learn to play guitar?",
        "Start with a few basic chords and practise switching between them.",
        "Play along with simple songs to build rhythm and finger strength.",
    ),
    (
        "What is the stock market?",
        "The stock market is where shares of companies are bought and sold.",
        "Share prices move with expectations about company profits.",
    ),
    (
        "How do bees make honey?",
        "Bees collect nectar from flowers and store it in the hive.",
        "They fan the nectar with their wings until the water evaporates.",
    ),
    (
        "Why is sleep important?",
        "Sleep lets the brain consolidate memories and clear waste.",
        "Lack of sleep harms mood, attention and the immune system.",
    ),
    (
        "How do electric cars work?",
        "Electric cars store energy in large lithium-ion batteries.",
        "An electric motor turns that energy into motion without burning fuel.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis converts light energy into chemical energy in sugar.",
        "It releases oxygen as a by-product of splitting water.",
    ),
    (
        "How does the heart pump blood?",
        "The heart's chambers contract in sequence to push blood out.",
        "Valves keep the blood flowing in one direction.",
    ),
    (
        "What is a good way to study for exams?",
        "Spread your study sessions over several days.",
        "Test yourself with practice questions instead of rereading notes.",
    ),
    (
        "How do earthquakes happen?",
        "Earthquakes happen when tectonic plates slip along a fault.",
        "Stress builds up in the rocks until it is suddenly released.",
    ),
    (
        "What is democracy?",
        "Democracy is a system where citizens choose their government by voting.",
        "It protects rights such as free speech and fair elections.",
    ),
    (
        "How do I start running?",
        "Begin with short intervals of running and walking.",
        "Increase your distance slowly to avoid injuries.",
    ),
    (
        "Why is the ocean salty?",
        "Rivers carry dissolved minerals from rocks into the sea.",
        "Evaporation removes water but leaves the salt behind.",
    ),
    (
        "How does a computer store data?",
        "Computers store data as bits, ones and zeros.",
        "Solid state drives keep those bits in flash memory cells.",
    ),
    (
        "What is a healthy diet?",
        "A healthy diet includes vegetables, fruit, whole grains and protein.",
        "Limit sugar, salt and highly processed foods.",
    ),
    (
        "How do volcanoes form?",
        "Volcanoes form where magma rises through cracks in the crust.",
        "Many sit along plate boundaries such as the Pacific Ring of Fire.",
    ),
    (
        "What is the theory of evolution?",
        "Evolution explains how species change over generations.",
        "Natural selection favours traits that help organisms survive and reproduce.",
    ),
    (
        "How do I write a good essay?",
        "Start with a clear thesis and an outline of your arguments.",
        "Support each paragraph with evidence and end with a strong conclusion.",
    ),
]
FILLER = [
    "This is a common question and the answer has several parts.",
    "There are a few factors worth considering here.",
    "In short, it depends on the situation and the details.",
    "Many people find this topic confusing at first.",
    "I hope this explanation helps you understand it better.",
]


def make_step(seed: int, n_prompts: int = 32, group: int = 8, words: int = 40) -> tuple[list[str], list[str]]:
    """One GRPO step: ``n_prompts`` chat prompts, ``group`` completions each of about ``words`` words, mixing
    on-topic, off-topic and filler sentences so relevance varies within a group."""
    rng = random.Random(seed)
    prompts, completions = [], []
    for p in range(n_prompts):
        question, a, b = TOPICS[p % len(TOPICS)]
        prompt = f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        prompt += "<|im_start|>assistant\n"
        for _ in range(group):
            on_topic = rng.randint(0, 2)
            parts = rng.sample([a, b], on_topic)
            while sum(len(s.split()) for s in parts) < words - 4:
                if rng.random() < 0.5:
                    other = TOPICS[rng.randrange(len(TOPICS))]
                    parts.append(other[rng.randint(1, 2)])
                else:
                    parts.append(rng.choice(FILLER))
            rng.shuffle(parts)
            prompts.append(prompt)
            completions.append(" ".join(parts))
    return prompts, completions


# -- methods -----------------------------------------------------------------------------------------------


def plain_r3(model: Any, prompts: list[str], completions: list[str], batch_size: int = 32) -> list[float]:
    """Baseline: SentenceTransformer.encode of every query and every response, then LI * QR * RP."""
    queries = [clean_query(p) for p in prompts]
    responses = [cut_response(c) for c in completions]
    q = model.encode(queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    r = model.encode(responses, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    qr = (q * r).sum(1)
    li = np.array([length_incentive(x) for x in responses])
    rp = np.array([repetition_penalty(x) for x in responses])
    return open_ended_reward(li, qr, rp).tolist()


def gflops_probe() -> float:
    """Best-of-5 fp32 matmul GFLOPS of a BERT-sized GEMM: how much CPU this run actually had."""
    a, b = torch.randn(2048, 384), torch.randn(384, 1536)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 2048 * 384 * 1536 / (time.perf_counter() - t) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--words", type=int, default=40, help="about this many words per completion")
    parser.add_argument("--presets", default="paper,robust", help="comma-separated R^3 presets to time")
    parser.add_argument("--no-int8", action="store_true", help="fp32 only")
    parser.add_argument("--derive-scale", action="store_true", help="also print the derivation of s")
    parser.add_argument("--derive-floor", action="store_true", help="also print the derivation of the floor")
    parser.add_argument("--padding-study", action="store_true", help="also compare ways of reading long responses")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.out is None:
        args.out = RESULTS if args.words == 40 else RESULTS.with_name(f"r3_{args.words}w.json")
    presets = [p for p in args.presets.split(",") if p]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    n = args.prompts * args.group

    load_before = os.getloadavg()
    probe = gflops_probe()
    model = _load_sentence_transformer(str(default_model_path()))
    backends = ["fp32"] + ([] if args.no_int8 else ["int8", "int8-full"])
    retrievers = {b: Retriever(backend=b) for b in backends}

    # warm-up (first-call allocations) on a step that is not timed
    wp, wc = make_step(10_000, args.prompts, args.group, args.words)
    plain_r3(model, wp, wc)
    for r in retrievers.values():
        for preset in presets:
            R3Reward(retriever=r, preset=preset)(wp, wc)

    times: dict[str, list[float]] = {"plain": []}
    cpu: dict[str, list[float]] = {"plain": []}
    for b in backends:
        for preset in presets:
            for kind in ("cold", "warm"):
                times[f"{b}-{preset}-{kind}"] = []
                cpu[f"{b}-{preset}-{kind}"] = []
    for rnd in range(args.rounds):
        prompts, completions = make_step(rnd, args.prompts, args.group, args.words)
        _, other = make_step(rnd + 5_000, args.prompts, args.group, args.words)  # same prompts, new answers
        t, c = time.perf_counter(), time.process_time()
        plain_r3(model, prompts, completions)
        times["plain"].append(time.perf_counter() - t)
        cpu["plain"].append(time.process_time() - c)
        for b, r in retrievers.items():
            for preset in presets:
                r.clear_cache()
                reward = R3Reward(retriever=r, preset=preset)  # fresh scorer: no memo
                for kind, batch in (("cold", completions), ("warm", other)):  # warm: the prompts are cached now
                    t, c = time.perf_counter(), time.process_time()
                    reward(prompts, batch)
                    times[f"{b}-{preset}-{kind}"].append(time.perf_counter() - t)
                    cpu[f"{b}-{preset}-{kind}"].append(time.process_time() - c)

    rows = {}
    for name, ts in times.items():
        rows[name] = {
            "best_completions_per_s": round(n / min(ts), 1),
            "median_completions_per_s": round(n / statistics.median(ts), 1),
            "seconds": [round(x, 4) for x in ts],
            "cpu_seconds": [round(x, 4) for x in cpu[name]],
        }

    result: dict[str, Any] = {
        "workload": f"{args.prompts} prompts x {args.group} completions of ~{args.words} words = {n} per step",
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "gemm_gflops_probe": round(probe, 1),
        "throughput": rows,
    }

    for b in backends[1:]:
        result[f"{b}_agreement"] = agreement(retrievers["fp32"], retrievers[b], args)
    if args.derive_scale:
        result["scale_derivation"] = derive_scale(retrievers["fp32"])
    if args.derive_floor:
        result["floor_derivation"] = derive_floor(retrievers["fp32"])
    if args.padding_study:
        result["padding_study"] = padding_study(retrievers["fp32"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"R^3 throughput, {result['workload']}, {args.threads} threads")
    print(f"load average {result['loadavg_before']} -> {result['loadavg_after']}, GEMM probe {probe:.0f} GFLOPS")
    print(f"{'method':<22} {'best/s':>8} {'median/s':>9} {'cpu s/step':>11}")
    for name, row in rows.items():
        print(
            f"{name:<22} {row['best_completions_per_s']:>8.1f} {row['median_completions_per_s']:>9.1f}"
            f" {statistics.median(row['cpu_seconds']):>11.2f}"
        )
    for b in backends[1:]:
        print(f"{b} vs fp32:", json.dumps(result[f"{b}_agreement"]))
    if args.derive_scale:
        print("scale derivation:", json.dumps(result["scale_derivation"], indent=1))
    if args.derive_floor:
        print("floor derivation:", json.dumps(result["floor_derivation"], indent=1))
    if args.padding_study:
        print("padding study (accuracy, median answer, median padded):")
        for name, row in result["padding_study"].items():
            if name != "pairs":
                print(f"  {name:<58} {row['accuracy']:.3f} {row['median_answer']:>7.3f} {row['median_padded']:>7.3f}")
    print(f"wrote {args.out}")


def agreement(fp32: Retriever, int8: Retriever, args: argparse.Namespace) -> dict[str, Any]:
    """How well int8 R^3 tracks fp32: correlation of QR and of rewards, and within-group pairwise ordering."""
    qr: dict[str, list[float]] = {"fp32": [], "int8": []}
    rew: dict[str, list[float]] = {"fp32": [], "int8": []}
    for seed in (20_000, 20_001):
        prompts, completions = make_step(seed, args.prompts, args.group, args.words)
        for name, retriever in (("fp32", fp32), ("int8", int8)):
            scorer = R3Scorer(R3Config(), retriever=retriever)
            factors = scorer.factors(prompts, completions)
            assert factors.qr is not None
            qr[name] += factors.qr.tolist()
            rew[name] += factors.reward(scorer.config).tolist()
    a, b = np.array(qr["fp32"]), np.array(qr["int8"])
    ra, rb = np.array(rew["fp32"]), np.array(rew["int8"])
    agree = total = 0
    for start in range(0, len(ra), args.group):
        ga, gb = ra[start : start + args.group], rb[start : start + args.group]
        for i in range(len(ga)):
            for j in range(i + 1, len(ga)):
                if ga[i] == ga[j]:
                    continue
                total += 1
                agree += (ga[i] - ga[j]) * (gb[i] - gb[j]) > 0
    # the constrained branch: RAR on calibration answers vs their references
    refs = [r for _, r, _ in CONSTRAINED_CALIBRATION]
    goods = [g for _, _, g in CONSTRAINED_CALIBRATION]
    rar = {name: (r.encode(refs) * r.encode(goods)).sum(1) for name, r in (("fp32", fp32), ("int8", int8))}
    return {
        "completions": len(a),
        "qr_pearson": round(float(np.corrcoef(a, b)[0, 1]), 4),
        "qr_spearman": round(float(_spearman(a, b)), 4),
        "qr_max_abs_diff": round(float(np.abs(a - b).max()), 4),
        "qr_mean_abs_diff": round(float(np.abs(a - b).mean()), 4),
        "reward_pearson": round(float(np.corrcoef(ra, rb)[0, 1]), 4),
        "within_group_pair_order_agreement": round(agree / max(total, 1), 4),
        "within_group_pairs": total,
        "rar_calibration_max_abs_diff": round(float(np.abs(rar["fp32"] - rar["int8"]).max()), 4),
        "constrained_reward_fp32": [round(float(x), 4) for x in constrained_reward(rar["fp32"], np.ones(len(refs)))],
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (no ties expected in continuous scores)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


if __name__ == "__main__":
    main()
