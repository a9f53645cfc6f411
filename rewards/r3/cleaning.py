"""Text cleaning for R^3: the retrieval query of a prompt (chat markup, system prompt and role tags stripped)
and the response cut at the first stop string."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

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
