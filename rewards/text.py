"""Plain-text views of TRL prompts and completions (standard strings or conversational message lists)."""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def message_content(message: Message) -> str:
    """Text of one chat message; list-of-parts content keeps only its text parts."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def prompt_text(prompt: str | list[Message]) -> str:
    """The user's question of a prompt: a standard prompt as is, a conversation's last user turn.

    System prompts and role tags are dropped, as R^3 (Kim & Seo, 2024) does when it builds the retrieval query.
    """
    if isinstance(prompt, str):
        return prompt
    user_turns = [m for m in prompt if m.get("role") == "user"]
    if user_turns:
        return message_content(user_turns[-1])
    return " ".join(message_content(m) for m in prompt if m.get("role") != "system")


def completion_text(completion: str | list[Message]) -> str:
    """The generated text of a completion: a string as is, a conversation's assistant turns joined."""
    if isinstance(completion, str):
        return completion
    return "\n".join(message_content(m) for m in completion if m.get("role", "assistant") == "assistant")
