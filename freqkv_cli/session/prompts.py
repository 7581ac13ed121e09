"""Prompt pieces around a document, from the model's own chat template.

A document is streamed between two pieces of a chat turn. To get them without knowing
the template, render it once with a marker as the user's message and split at the marker.
"""

from __future__ import annotations

from dataclasses import dataclass

_MARKER = "\u0000FREQKV-SPLIT\u0000"

SUMMARIZE_INSTRUCTION = "Summarize the following document. Cover its main points in a few paragraphs."
SUMMARIZE_REMINDER = "Write the summary of the document above now."
# The summary asked as a new turn, of a document read in an earlier one (a saved conversation).
SUMMARIZE_TURN = SUMMARIZE_INSTRUCTION.replace("the following document", "the document above")
QA_INSTRUCTION = "Answer the question about the document below, using only the document."
PASSAGES_HEADING = "Passages of the document that match the question:"


@dataclass
class TurnTemplate:
    """``first_before`` / ``before`` + user text + ``after`` is one user turn and the assistant's cue.

    ``before`` (later turns) starts by closing the assistant's previous answer, e.g.
    ``<|im_end|>\n<|im_start|>user\n``; when that answer already ended with the end-of-turn
    token, the session drops the duplicate.
    """

    first_before: str
    before: str
    after: str


def turn_template(tokenizer: object, system: str | None = None) -> TurnTemplate:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        # A base model: a plain transcript.
        first = f"{system}\n\n" if system else ""
        return TurnTemplate(first + "User: ", "\nUser: ", "\nAssistant:")
    apply = tokenizer.apply_chat_template  # type: ignore[attr-defined]
    messages = [{"role": "user", "content": _MARKER}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    first = apply(messages, tokenize=False, add_generation_prompt=True)
    first_before, after = first.split(_MARKER)
    answer = "\u0001ANSWER\u0001"
    two = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": _MARKER}]
    rendered = apply(two, tokenize=False, add_generation_prompt=True)
    before = rendered.split(answer, 1)[1].split(_MARKER)[0]
    return TurnTemplate(first_before=first_before, before=before, after=after)


def document_prompt(
    task: str, question: str | None = None, passages: list[str] | None = None
) -> tuple[str, str]:
    """(text before the document, text after it) inside one user message. ``passages``
    (qa only): parts of the document quoted again just before the question."""
    if task == "qa":
        assert question is not None
        quoted = ""
        if passages:
            lines = "\n".join(f"- ...{' '.join(p.split())}..." for p in passages)
            quoted = f"{PASSAGES_HEADING}\n{lines}\n"
        return (
            f"{QA_INSTRUCTION}\nQuestion: {question}\n\nDocument:\n",
            f"\n\n(End of document.)\n{quoted}Question: {question}\nAnswer briefly.",
        )
    if task == "summarize":
        return f"{SUMMARIZE_INSTRUCTION}\n\nDocument:\n", f"\n\n(End of document.)\n{SUMMARIZE_REMINDER}"
    if task == "read":
        return (
            "Read the following document; questions about it will follow.\n\nDocument:\n",
            "\n\n(End of document.)",
        )
    raise ValueError(f"unknown task {task!r}")
