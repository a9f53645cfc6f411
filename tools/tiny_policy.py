"""Build the tiny pretrained policy used by the CPU quickstart, from a corpus this script writes itself.

Nothing is downloaded: the script

1. generates a *noisy* question/answer corpus from the hand-written fact table below. Each document is
   ``Question: <question>\\nAnswer: <answer><|endoftext|>``; an answer is 1 to 5 facts, and with probability
   ``on_topic_prob`` (0.5) they are facts about the question's topic, otherwise about a different topic picked
   at random. The noise is deliberate: sampled from the trained model, answers are a mix of on-topic and
   off-topic ones of varied lengths, which gives RL (relevance + length rewards) something to improve;
2. trains a byte-level BPE tokenizer on the corpus (no BOS, nothing added automatically; EOS and PAD tokens);
3. trains a ~1M-parameter ``LlamaForCausalLM`` from random weights with a plain torch loop (AdamW, cosine);
4. saves model (safetensors), tokenizer, generation config and a README to ``--out``;
5. writes the quickstart prompt sets (TRL standard format) next to it: ``quickstart_prompts.jsonl`` (train)
   and ``quickstart_eval_prompts.jsonl`` (held-out question phrasing/topic combinations never seen in the corpus).

The model is a ``LlamaForCausalLM`` rather than a Qwen2 one because transformers 5's ``AutoTokenizer`` swaps a
qwen2 model's tokenizer for ``Qwen2Tokenizer``, whose pre-tokenizer differs from the one trained here; for a llama
model it loads ``tokenizer.json`` as saved (``main`` checks that the reloaded tokenizer encodes the corpus identically).

Prompts end with ``Answer:``: in the corpus the answer starts with a space, which byte-level BPE attaches to the
answer's first word, so a completion continues the prompt exactly as in training (completions start with a space).

Rebuild (about 3 minutes on 2 CPU cores)::

    python -m tools.tiny_policy --out alignment/assets/tiny_policy
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MAX_POSITIONS = 256
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "alignment" / "assets" / "tiny_policy"

# Every fact mentions its topic word (whole word, any case) and no other topic's word; `validate_facts` checks it,
# so "the answer contains the question's topic word" is a reliable on-topic test for the model's samples.
FACTS: dict[str, tuple[str, ...]] = {
    "volcanoes": (
        "Volcanoes are openings in the crust of the Earth where molten rock escapes.",
        "Volcanoes can erupt with lava, ash and hot gas.",
        "Some volcanoes have been quiet for thousands of years.",
        "The soil near volcanoes is often very rich for farming.",
        "Scientists watch volcanoes closely to warn people before an eruption.",
        "Many volcanoes sit along the edges of huge moving plates of rock.",
    ),
    "penguins": (
        "Penguins are birds that cannot fly but swim very well.",
        "Most penguins live in the cold southern half of the world.",
        "Penguins use their wings like flippers to move through water.",
        "Emperor penguins keep their eggs warm on their feet.",
        "Penguins eat fish, squid and small shrimp called krill.",
        "Thick feathers and a layer of fat keep penguins warm.",
    ),
    "bread": (
        "Bread is made from flour, water and yeast.",
        "Yeast makes bread rise by producing small bubbles of gas.",
        "People have been baking bread for thousands of years.",
        "Fresh bread has a crisp crust and a soft inside.",
        "Whole grain bread contains more fiber than white bread.",
        "Bread can be baked in an oven, on a hot stone or in a pan.",
    ),
    "rivers": (
        "Rivers carry fresh water from high ground down to the sea.",
        "Many old cities were built beside rivers.",
        "Rivers shape valleys by slowly wearing away rock and soil.",
        "The Nile and the Amazon are among the longest rivers on Earth.",
        "Fish, otters and many birds depend on rivers for food.",
        "People use rivers for drinking water, farming and transport.",
    ),
    "bees": (
        "Bees collect nectar and pollen from flowers.",
        "Bees help plants make fruit by carrying pollen from flower to flower.",
        "Honey bees live together in large colonies with one queen.",
        "Bees make honey and store it in combs of wax.",
        "Bees tell each other where food is by dancing inside the hive.",
        "Many crops would fail without bees to pollinate them.",
    ),
    "deserts": (
        "Deserts are places that receive very little rain each year.",
        "Some deserts are hot and sandy, while others are cold and rocky.",
        "The Sahara is one of the largest deserts in the world.",
        "Plants in deserts store water in thick stems and leaves.",
        "Deserts can be very hot by day and very cold at night.",
        "Many animals in deserts hide underground during the heat.",
    ),
    "glaciers": (
        "Glaciers are huge masses of ice that move slowly downhill.",
        "Glaciers grow where more ice builds up each winter than melts each summer.",
        "Glaciers carve deep valleys as they grind over rock.",
        "Much of the fresh water on Earth is frozen in glaciers.",
        "Many glaciers are shrinking as the climate gets warmer.",
        "Glaciers can carry giant boulders far from where they started.",
    ),
    "elephants": (
        "Elephants are the largest land animals alive today.",
        "Elephants use their long trunks to drink, smell and grab food.",
        "Elephants live in family groups led by an older female.",
        "African elephants have larger ears than Asian elephants.",
        "Elephants can remember friends and water holes for many years.",
        "Elephants eat grass, leaves, bark and fruit for most of the day.",
    ),
    "chocolate": (
        "Chocolate is made from the roasted seeds of the cacao tree.",
        "Dark chocolate contains more cacao and less sugar than milk chocolate.",
        "Chocolate melts at about the temperature of the human body.",
        "People in Central America were drinking chocolate long ago.",
        "Chocolate is a popular gift on holidays and birthdays.",
        "Chocolate is poisonous to dogs and cats.",
    ),
    "coffee": (
        "Coffee is brewed from roasted and ground coffee beans.",
        "Coffee contains caffeine, which helps people feel awake.",
        "Coffee plants grow best in warm, wet places near the equator.",
        "Brazil grows more coffee than any other country.",
        "Espresso is a strong coffee made by forcing hot water through fine grounds.",
        "Many people drink coffee every morning.",
    ),
    "tea": (
        "Tea is made by soaking dried leaves in hot water.",
        "Green tea and black tea come from the same plant.",
        "Tea was first enjoyed in China thousands of years ago.",
        "Some people add milk, lemon or sugar to their tea.",
        "Tea contains a little caffeine, which gives a gentle lift.",
        "In Britain, tea is often served in the afternoon with small cakes.",
    ),
    "whales": (
        "Whales are mammals that live in the sea and breathe air.",
        "Blue whales are the largest animals that have ever lived.",
        "Whales breathe through a blowhole on the top of their heads.",
        "Some whales sing long songs that travel far under water.",
        "Many whales travel thousands of kilometers each year.",
        "Baleen whales filter tiny animals from the water to eat.",
    ),
    "earthquakes": (
        "Earthquakes happen when huge plates of rock suddenly slip.",
        "Earthquakes are measured with instruments called seismometers.",
        "Strong earthquakes can knock down buildings and crack roads.",
        "Japan and Chile have many earthquakes each year.",
        "Earthquakes under the sea can cause giant waves called tsunamis.",
        "Engineers design buildings that can sway safely during earthquakes.",
    ),
    "rainbows": (
        "Rainbows appear when sunlight shines through drops of rain.",
        "Rainbows have seven colors from red to violet.",
        "You can only see rainbows when the sun is behind you.",
        "Rainbows are really full circles, but the ground hides the lower half.",
        "Sometimes two rainbows appear, one fainter than the other.",
        "Rainbows can also form in the spray of a waterfall.",
    ),
    "bicycles": (
        "Bicycles have two wheels and are moved by pedaling.",
        "Riding bicycles is a healthy way to travel around a city.",
        "Bicycles do not burn fuel or make exhaust.",
        "The first bicycles had no pedals and were pushed with the feet.",
        "Many bicycles have gears to make climbing hills easier.",
        "In the Netherlands there are more bicycles than people.",
    ),
    "pianos": (
        "Pianos make sound when small hammers strike metal strings.",
        "Most pianos have eighty-eight black and white keys.",
        "Pianos were invented in Italy about three hundred years ago.",
        "Grand pianos are large, while upright pianos fit against a wall.",
        "Pianos need to be tuned regularly to sound right.",
        "Many famous composers wrote music for pianos.",
    ),
    "libraries": (
        "Libraries lend books to people for free.",
        "Many libraries also offer computers, films and music.",
        "Ancient libraries kept their writing on scrolls of papyrus.",
        "Librarians help visitors find books in libraries.",
        "Libraries are quiet places to read and study.",
        "Public libraries often host story time for children.",
    ),
    "tomatoes": (
        "Tomatoes are fruits, even though people cook them like vegetables.",
        "Tomatoes were first grown in South America.",
        "Tomatoes turn red as they ripen in the sun.",
        "Tomatoes are used to make sauce, soup and ketchup.",
        "Tomatoes are rich in vitamin C.",
        "Tomatoes grow on vines that need support as they get heavy.",
    ),
    "cheese": (
        "Cheese is made from milk that is thickened and pressed.",
        "There are thousands of kinds of cheese around the world.",
        "Some cheese is aged for months or even years.",
        "Cheese is a good source of calcium and protein.",
        "Blue cheese gets its veins from a special mold.",
        "Switzerland and France are famous for their cheese.",
    ),
    "owls": (
        "Owls are birds that hunt mostly at night.",
        "Owls can turn their heads much farther than people can.",
        "Owls have soft feathers that let them fly silently.",
        "Owls eat mice, insects and other small animals.",
        "Large eyes help owls see in very dim light.",
        "Owls swallow small prey whole and cough up pellets of bone and fur.",
    ),
    "sharks": (
        "Sharks are fish with skeletons made of cartilage instead of bone.",
        "Sharks have lived in the sea for hundreds of millions of years.",
        "Sharks lose and replace thousands of teeth in their lives.",
        "Sharks can sense tiny electric signals from other animals.",
        "Most sharks are not dangerous to people.",
        "The largest sharks eat only tiny plankton.",
    ),
    "mountains": (
        "Mountains are landforms that rise high above the land around them.",
        "Mount Everest is the tallest of all mountains above sea level.",
        "Mountains form when plates of rock push against each other.",
        "The air is thin and cold at the top of high mountains.",
        "Mountains change the weather by forcing air to rise and cool.",
        "Goats and other animals climb steep mountains with ease.",
    ),
    "islands": (
        "Islands are pieces of land surrounded by water.",
        "Greenland is one of the largest islands in the world.",
        "Some islands are built from coral, others from old lava.",
        "Animals on islands often evolve into unique species.",
        "Hawaii is a chain of islands in the Pacific Ocean.",
        "People travel to islands by boat or by plane.",
    ),
    "forests": (
        "Forests are large areas covered with trees.",
        "Forests make oxygen and store huge amounts of carbon.",
        "Rain forests are home to more than half of all animal species.",
        "Forests provide wood, fruit and medicine for people.",
        "Many animals build nests and burrows in forests.",
        "Cutting down forests can harm the soil and the climate.",
    ),
    "lightning": (
        "Lightning is a giant spark of electricity in the sky.",
        "Lightning is hotter than the surface of the sun.",
        "Thunder is the sound made by lightning heating the air.",
        "Lightning strikes the Earth many times every second.",
        "Tall buildings use metal rods to guide lightning safely to the ground.",
        "During storms with lightning it is safest to stay indoors.",
    ),
    "snow": (
        "Snow is made of tiny ice crystals that fall from the sky.",
        "Every flake of snow has six sides.",
        "Snow falls when the air is cold enough for water to freeze.",
        "Fresh snow reflects most of the sunlight that hits it.",
        "Children love to build figures and forts out of snow.",
        "Snow can act like a blanket that keeps the ground warm.",
    ),
    "comets": (
        "Comets are balls of ice, dust and rock that orbit the sun.",
        "Comets grow long glowing tails when they pass close to the sun.",
        "Some comets, like the one named after Halley, return every seventy-six years.",
        "The tails of comets always point away from the sun.",
        "Comets come from the cold outer edges of the solar system.",
        "Long ago, people thought comets were signs of bad luck.",
    ),
    "planets": (
        "There are eight planets that orbit our sun.",
        "Jupiter is the largest of the planets in the solar system.",
        "Rocky planets are closer to the sun, and gas giants are farther out.",
        "Planets do not make their own light but reflect sunlight.",
        "Astronomers have found thousands of planets around other stars.",
        "Some planets have rings made of ice and rock.",
    ),
    "dinosaurs": (
        "Dinosaurs lived on Earth for more than one hundred and fifty million years.",
        "Birds are the living relatives of dinosaurs.",
        "Some dinosaurs ate plants, while others hunted meat.",
        "Dinosaurs died out about sixty-six million years ago.",
        "Scientists learn about dinosaurs by studying fossils.",
        "The largest dinosaurs were longer than three buses.",
    ),
    "butterflies": (
        "Butterflies start life as caterpillars.",
        "Butterflies taste with their feet.",
        "Monarch butterflies fly thousands of kilometers each year.",
        "Butterflies drink nectar from flowers with a long tube.",
        "The wings of butterflies are covered with tiny colored scales.",
        "Butterflies need warm sunshine to fly.",
    ),
    "spiders": (
        "Spiders have eight legs and are not insects.",
        "Spiders spin webs from silk made in their bodies.",
        "Spiders catch insects and wrap them in silk.",
        "Most spiders have eight eyes.",
        "The silk of spiders is stronger than steel of the same weight.",
        "Spiders help people by eating flies and mosquitoes.",
    ),
    "frogs": (
        "Frogs are amphibians that live both in water and on land.",
        "Frogs start life as tadpoles with tails.",
        "Frogs can breathe through their skin.",
        "Frogs use long sticky tongues to catch insects.",
        "Some frogs are brightly colored to warn that they are poisonous.",
        "Frogs croak loudly at night to find a mate.",
    ),
    "camels": (
        "Camels can walk for days without drinking water.",
        "Camels store fat, not water, in their humps.",
        "Camels have long eyelashes that keep out sand.",
        "People have used camels to carry goods across dry lands for centuries.",
        "Some camels have one hump and others have two.",
        "Camels can drink a huge amount of water very quickly.",
    ),
    "dolphins": (
        "Dolphins are clever mammals that live in the sea.",
        "Dolphins use clicks and echoes to find food.",
        "Dolphins live in groups called pods.",
        "Dolphins breathe air through a blowhole.",
        "Dolphins are known for playing and leaping out of the water.",
        "Dolphins sleep with one half of the brain at a time.",
    ),
    "rice": (
        "Rice is the main food for more than half of the people in the world.",
        "Rice grows in flooded fields called paddies.",
        "There are thousands of kinds of rice, such as brown rice and jasmine rice.",
        "China and India grow the most rice.",
        "Rice is boiled or steamed before it is eaten.",
        "Rice can be ground into flour to make noodles.",
    ),
    "apples": (
        "Apples grow on trees in cool climates.",
        "There are thousands of kinds of apples with different colors and flavors.",
        "Apples float in water because they are partly made of air.",
        "Apples are used to make juice, pies and cider.",
        "Apples first grew wild in Central Asia.",
        "Eating apples adds fiber and vitamins to a diet.",
    ),
    "potatoes": (
        "Potatoes are tubers that grow under the ground.",
        "Potatoes were first grown in the Andes of South America.",
        "Potatoes can be boiled, baked, mashed or fried.",
        "Potatoes were once the most important food in Ireland.",
        "Potatoes should be stored in a cool, dark place.",
        "Green spots on potatoes can be slightly poisonous.",
    ),
    "salt": (
        "Salt is a mineral made of sodium and chloride.",
        "Salt is used to add flavor to food.",
        "People used salt to preserve meat and fish before fridges existed.",
        "Sea water tastes strong because it contains a lot of salt.",
        "In winter, salt is spread on roads to melt ice.",
        "Too much salt in the diet can raise blood pressure.",
    ),
    "bridges": (
        "Bridges let people cross over water, valleys and roads.",
        "Suspension bridges hang from strong steel cables.",
        "The Romans built stone bridges with arches that still stand.",
        "Engineers test bridges to make sure they can carry heavy loads.",
        "Some bridges can open to let tall ships pass.",
        "The Golden Gate is one of the most famous bridges in the world.",
    ),
    "castles": (
        "Castles were strong buildings made to protect lords and kings.",
        "Many castles have thick stone walls and tall towers.",
        "Some castles are surrounded by a ditch of water called a moat.",
        "Most castles in Europe were built during the Middle Ages.",
        "Today many castles are museums that visitors can explore.",
        "Castles often stood on hills to watch the land around them.",
    ),
    "trains": (
        "Trains run on steel rails and can carry many passengers.",
        "The first trains were pulled by steam engines.",
        "High speed trains in Japan travel at over three hundred kilometers per hour.",
        "Freight trains carry coal, grain and containers across countries.",
        "Electric trains get power from overhead wires or a third rail.",
        "Traveling by trains is often calmer than driving a car.",
    ),
    "airplanes": (
        "Airplanes fly because their wings create lift as air flows over them.",
        "The Wright brothers built and flew some of the first airplanes.",
        "Airplanes cruise about ten kilometers above the ground.",
        "Large airplanes can carry hundreds of passengers across oceans.",
        "Pilots use instruments to guide airplanes through fog and darkness.",
        "Airplanes burn jet fuel in powerful engines.",
    ),
    "batteries": (
        "Batteries store energy as chemicals and release it as electricity.",
        "Phones, laptops and cars use rechargeable batteries.",
        "Batteries have a positive end and a negative end.",
        "Old batteries should be recycled, not thrown in the trash.",
        "Lithium batteries are light and hold a lot of energy.",
        "Batteries slowly lose their charge even when they are not used.",
    ),
    "magnets": (
        "Magnets attract iron and steel.",
        "Magnets have a north pole and a south pole.",
        "Opposite poles of magnets pull together, and like poles push apart.",
        "Compasses use small magnets that line up with the field of the Earth.",
        "Magnets are used in motors, speakers and hard drives.",
        "Heating magnets too much can make them lose their strength.",
    ),
    "clouds": (
        "Clouds are made of tiny drops of water or ice floating in the air.",
        "Clouds form when warm, wet air rises and cools.",
        "Dark clouds often bring rain.",
        "Fluffy white clouds are called cumulus clouds.",
        "Clouds help keep the Earth warm at night.",
        "Fog is simply clouds that touch the ground.",
    ),
    "tornadoes": (
        "Tornadoes are spinning columns of air that reach down from storms.",
        "The United States has more tornadoes than any other country.",
        "Tornadoes can have winds faster than four hundred kilometers per hour.",
        "Most tornadoes last only a few minutes.",
        "People hide in basements when tornadoes are coming.",
        "Scientists use radar to spot tornadoes early.",
    ),
    "caves": (
        "Caves are natural hollow spaces under the ground.",
        "Many caves form when water slowly dissolves limestone.",
        "Stalactites hang from the ceilings of caves, and stalagmites rise from the floor.",
        "Bats often sleep in dark caves during the day.",
        "Early humans painted animals on the walls of caves.",
        "Exploring caves requires helmets, lights and ropes.",
    ),
    "candles": (
        "Candles are made of wax with a cotton wick in the middle.",
        "Candles give light by burning slowly.",
        "Before electric lights, people read by the light of candles.",
        "Scented candles release pleasant smells as they burn.",
        "Candles should never be left burning in an empty room.",
        "Birthday cakes are often decorated with small candles.",
    ),
}
TOPICS: tuple[str, ...] = tuple(FACTS)

# Question phrasings; every one reads well with a plural or a mass noun.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "What do you know about {topic}?",
    "Tell me about {topic}.",
    "What is interesting about {topic}?",
    "Can you explain {topic} to me?",
    "Give me some facts about {topic}.",
    "What should I know about {topic}?",
    "Describe {topic} briefly.",
    "I am curious about {topic}. What can you say?",
)
# Never used in the corpus: evaluation prompts use these phrasings (and a few held-out train-phrasing combos).
# They are new combinations of words the corpus has, so every word is in the tokenizer's vocabulary.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "Tell me some facts about {topic}.",
    "What can you say about {topic}?",
)
HELDOUT_COMBO_FRACTION = 0.1


@dataclass(frozen=True)
class Document:
    """One corpus document: a question about ``topic`` answered with facts about ``answer_topic``."""

    question: str
    topic: str
    answer_topic: str
    answer: str

    @property
    def on_topic(self) -> bool:
        """Whether the answer is about the question's topic."""
        return self.topic == self.answer_topic

    @property
    def text(self) -> str:
        """The document text without the EOS token (which training appends as an id)."""
        return format_prompt(self.question) + " " + self.answer


def format_prompt(question: str) -> str:
    """The policy's prompt for a question; the model's answer (starting with a space) continues it."""
    return f"Question: {question}\nAnswer:"


def mentions_topic(text: str, topic: str) -> bool:
    """Whether ``text`` contains the topic word as a whole word (case-insensitive)."""
    return re.search(rf"\b{re.escape(topic)}\b", text, flags=re.IGNORECASE) is not None


def validate_facts(facts: dict[str, Sequence[str]] = FACTS) -> None:
    """Raise ``ValueError`` unless every fact mentions its own topic word and no other topic's word."""
    problems = []
    for topic, sentences in facts.items():
        for sentence in sentences:
            if not mentions_topic(sentence, topic):
                problems.append(f"{topic!r}: fact does not mention its topic: {sentence!r}")
            others = [other for other in facts if other != topic and mentions_topic(sentence, other)]
            if others:
                problems.append(f"{topic!r}: fact mentions other topics {others}: {sentence!r}")
    if problems:
        raise ValueError("fact table is inconsistent:\n" + "\n".join(problems))


def split_combos(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(template, topic) combinations for the corpus and held-out ones for evaluation, deterministic in ``seed``.

    Held out: every combination with a ``HELDOUT_TEMPLATES`` phrasing, plus ``HELDOUT_COMBO_FRACTION`` of the
    train-phrasing combinations (at least one train phrasing per topic stays in the corpus).
    """
    rng = random.Random(f"combos-{seed}")
    train: list[tuple[str, str]] = []
    heldout = [(template, topic) for topic in TOPICS for template in HELDOUT_TEMPLATES]
    for topic in TOPICS:
        n_out = round(HELDOUT_COMBO_FRACTION * len(TRAIN_TEMPLATES))
        out = set(rng.sample(TRAIN_TEMPLATES, n_out))
        for template in TRAIN_TEMPLATES:
            (heldout if template in out else train).append((template, topic))
    return train, heldout


def make_answer(rng: random.Random, topic: str, min_sentences: int = 1, max_sentences: int = 5) -> str:
    """An answer of ``min_sentences`` to ``max_sentences`` distinct facts about ``topic``, in random order."""
    facts = FACTS[topic]
    k = rng.randint(min_sentences, min(max_sentences, len(facts)))
    return " ".join(rng.sample(facts, k))


def generate_corpus(seed: int = 0, num_docs: int = 20000, on_topic_prob: float = 0.5) -> list[Document]:
    """The noisy training corpus: ``num_docs`` documents over the corpus (template, topic) combinations.

    With probability ``on_topic_prob`` a document's answer is about the question's topic, otherwise about a
    different topic drawn uniformly; the answer has 1 to 5 facts. Deterministic in ``seed``.
    """
    validate_facts()
    rng = random.Random(f"corpus-{seed}")
    combos, _ = split_combos(seed)
    docs = []
    for _ in range(num_docs):
        template, topic = rng.choice(combos)
        if rng.random() < on_topic_prob:
            answer_topic = topic
        else:
            answer_topic = rng.choice([t for t in TOPICS if t != topic])
        docs.append(Document(template.format(topic=topic), topic, answer_topic, make_answer(rng, answer_topic)))
    return docs


def build_prompt_sets(seed: int = 0, n_train: int = 96, n_eval: int = 32) -> tuple[list[dict], list[dict]]:
    """Quickstart prompt rows ``{"prompt", "topic", "reference"}`` (TRL standard format): train and held-out eval.

    Train rows use corpus combinations, spread evenly over the topics; eval rows use held-out combinations, one per
    topic for ``n_eval`` distinct topics (if ``n_eval`` <= number of topics). The reference is 2-3 on-topic facts.
    """
    rng = random.Random(f"prompts-{seed}")
    train_combos, heldout_combos = split_combos(seed)

    def row(template: str, topic: str) -> dict:
        reference = make_answer(rng, topic, min_sentences=2, max_sentences=3)
        return {"prompt": format_prompt(template.format(topic=topic)), "topic": topic, "reference": reference}

    def spread(combos: list[tuple[str, str]], n: int) -> list[dict]:
        by_topic = {topic: [c for c in combos if c[1] == topic] for topic in TOPICS}
        for options in by_topic.values():
            rng.shuffle(options)
        topics = list(TOPICS)
        rng.shuffle(topics)
        picked: list[tuple[str, str]] = []
        round_ = 0
        while len(picked) < n:
            added = False
            for topic in topics:
                if len(picked) < n and round_ < len(by_topic[topic]):
                    picked.append(by_topic[topic][round_])
                    added = True
            if not added:
                raise ValueError(f"only {len(picked)} combinations available, {n} asked")
            round_ += 1
        return [row(template, topic) for template, topic in picked]

    return spread(train_combos, n_train), spread(heldout_combos, n_eval)


def train_tokenizer(texts: Sequence[str], vocab_size: int = 3000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``; EOS and PAD special tokens, no BOS, nothing auto-added."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
) -> LlamaForCausalLM:
    """A randomly initialised tiny ``LlamaForCausalLM`` (tied embeddings) sized to ``tokenizer``'s vocabulary."""
    vocab_size = 64 * math.ceil(len(tokenizer) / 64)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of index batches: shuffled, length-sorted within chunks of 32 batches to limit padding."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size]


def train_model(
    model: LlamaForCausalLM,
    token_ids: Sequence[Sequence[int]],
    pad_id: int,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 30,
    seed: int = 0,
    log_every: int = 50,
) -> list[float]:
    """Train ``model`` on the tokenised documents (each ending with EOS); returns the per-step training losses.

    AdamW with linear warmup and cosine decay to 10% of ``lr``; loss is next-token cross-entropy over every
    non-pad token. Prints one compact line per ``log_every`` steps.
    """
    rng = random.Random(f"train-{seed}")
    lengths = [len(ids) for ids in token_ids]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    losses: list[float] = []
    queue: list[list[int]] = []
    start = time.time()
    for step in range(steps):
        if not queue:
            queue = _batches(lengths, batch_size, rng)
        batch = queue.pop()
        width = max(lengths[i] for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : lengths[i]] = torch.tensor(token_ids[i])
            attention_mask[row, : lengths[i]] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            window = losses[-log_every:]
            print(
                f"step {step + 1:5d}/{steps}  loss {sum(window) / len(window):.3f}  "
                f"lr {lr_at(step):.1e}  {time.time() - start:6.1f}s",
                flush=True,
            )
    model.eval()
    return losses


@torch.no_grad()
def sample_answers(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[list[str]]:
    """``num_samples`` sampled answers per prompt (pure sampling: top_k=0, top_p=1, as TRL's GRPO defaults)."""
    torch.manual_seed(seed)
    outputs = []
    for prompt in prompts:
        enc = tokenizer([prompt] * num_samples, return_tensors="pt")
        gen = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1] :]
        outputs.append(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


def write_prompt_sets(directory: Path, train_rows: Sequence[dict], eval_rows: Sequence[dict]) -> None:
    """Write ``quickstart_prompts.jsonl`` and ``quickstart_eval_prompts.jsonl`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("quickstart_prompts.jsonl", train_rows), ("quickstart_eval_prompts.jsonl", eval_rows)):
        with open(directory / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _readme(args: argparse.Namespace, model: LlamaForCausalLM, n_params: int, vocab: int, stats: dict) -> str:
    cfg = model.config
    return f"""# tiny_policy

A tiny causal LM the project owns, used as the policy of the CPU quickstart. It was trained from random
weights on a synthetic, deliberately **noisy** question/answer corpus generated by `tools/tiny_policy.py`:
in the corpus, an answer is about the question's topic only {args.on_topic_prob:.0%} of the time (otherwise it
is about a random other topic), so samples from this model mix on-topic and off-topic answers of 1-5 sentences.
That is what RL (query relevance + length rewards) is meant to improve. It knows nothing beyond
{len(TOPICS)} topics x {len(FACTS[TOPICS[0]])} hand-written facts and is not useful for anything else.

Rebuild (deterministic for a seed; about 3 minutes on 2 CPU cores):

    python -m tools.tiny_policy --out alignment/assets/tiny_policy --seed {args.seed} --steps {args.steps}

- Architecture: `LlamaForCausalLM`, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers,
  {cfg.num_attention_heads} heads ({cfg.num_key_value_heads} KV heads), intermediate {cfg.intermediate_size},
  max positions {cfg.max_position_embeddings}, tied embeddings, float32; **{n_params:,} parameters**.
- Tokenizer: byte-level BPE trained on the corpus, {vocab} tokens; EOS `{EOS_TOKEN}`, PAD `{PAD_TOKEN}`, no BOS,
  no special tokens added on encode, no chat template.
- Corpus: {args.num_docs:,} documents ({stats["corpus_tokens"]:,} tokens), seed {args.seed}, on-topic fraction
  {stats["on_topic_fraction"]:.3f}. Format: `Question: <question>\\nAnswer: <answer>{EOS_TOKEN}`.
- Training: {args.steps} steps, batch {args.batch_size}, AdamW lr {args.lr:g} (warmup + cosine to 10%),
  torch.set_num_threads({args.threads}); final training loss (mean of last 50 steps) {stats["final_loss"]:.3f}
  nats/token (the corpus is random in its choice of phrasing, answer topic, facts and length, so the loss cannot
  go to zero).

Prompt format: `Question: <question>\\nAnswer:` (no trailing space); the completion starts with a space and ends
with EOS. Quickstart prompts: `alignment/assets/quickstart_prompts.jsonl` (train) and
`alignment/assets/quickstart_eval_prompts.jsonl` (question phrasing/topic combinations never seen in training).
"""


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: build corpus, tokenizer, model and prompt sets, and save them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model/tokenizer folder")
    parser.add_argument("--prompts-dir", type=Path, default=None, help="where the JSONL prompt sets go (--out/..)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-docs", type=int, default=20000)
    parser.add_argument("--on-topic-prob", type=float, default=0.5)
    parser.add_argument("--vocab-size", type=int, default=3000, help="BPE vocabulary cap")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    t0 = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    docs = generate_corpus(args.seed, args.num_docs, args.on_topic_prob)
    tokenizer = train_tokenizer([d.text for d in docs], args.vocab_size)
    token_ids = [ids + [tokenizer.eos_token_id] for ids in tokenizer([d.text for d in docs])["input_ids"]]
    if max(len(ids) for ids in token_ids) > MAX_POSITIONS:
        raise ValueError("a document is longer than the model's context")
    on_topic = sum(d.on_topic for d in docs) / len(docs)
    n_tokens = sum(len(ids) for ids in token_ids)
    print(f"corpus: {len(docs)} docs, {n_tokens} tokens, on-topic {on_topic:.3f}; vocab {len(tokenizer)}")

    model = build_model(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters")
    losses = train_model(
        model,
        token_ids,
        tokenizer.pad_token_id,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    final_loss = sum(losses[-50:]) / len(losses[-50:])

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=64
    )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    reloaded = AutoTokenizer.from_pretrained(args.out, local_files_only=True)
    texts = [d.text for d in docs[:1000]]
    if reloaded(texts)["input_ids"] != tokenizer(texts)["input_ids"]:
        raise RuntimeError(f"AutoTokenizer reloads {args.out} as {type(reloaded).__name__}, which encodes differently")
    stats = {"corpus_tokens": n_tokens, "on_topic_fraction": on_topic, "final_loss": final_loss}
    (args.out / "README.md").write_text(_readme(args, model, n_params, len(tokenizer), stats), encoding="utf-8")

    train_rows, eval_rows = build_prompt_sets(args.seed)
    write_prompt_sets(args.prompts_dir or args.out.parent, train_rows, eval_rows)

    prompts = [r["prompt"] for r in eval_rows[:8]]
    samples = sample_answers(model, tokenizer, prompts, num_samples=4, seed=args.seed)
    hits = [mentions_topic(a, r["topic"]) for r, answers in zip(eval_rows, samples) for a in answers]
    print(f"sanity: {sum(hits)}/{len(hits)} sampled eval answers on topic; e.g. {prompts[0]!r} ->{samples[0][0]!r}")
    print(f"done in {time.time() - t0:.0f}s; saved to {args.out}")


if __name__ == "__main__":
    main()
