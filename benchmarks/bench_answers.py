"""Do replies answer questions about what the person said? Prints JSON.

Scripted conversations of our own (LoCoMo is for retrieval): each persona tells facts in a first
session, the memory is closed and opened again (a restart), then the persona asks about them,
in words of its own: most questions share no content word with the fact they ask about (checked
below). Every message goes through the chat pipeline the console and Discord use
(``ChatPipeline``) with the configured responder (the template one by default) and the real
encoder. A question counts as answered when its reply contains the fact's key words.

    .venv/bin/python benchmarks/bench_answers.py [--model NAME_OR_PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import emit

from bot.pipeline import ChatPipeline
from bot.responder import build_responder
from memory import MemorySystem, load_settings
from memory.lexical import STOP_WORDS, words


@dataclass(frozen=True)
class Persona:
    name: str
    facts: tuple[str, ...]
    # (question, words its reply must hold, paraphrased: shares no content word with the fact)
    questions: tuple[tuple[str, tuple[str, ...], bool], ...]


PERSONAS = (
    Persona(
        "Maya",
        (
            "I'm allergic to peanuts",
            "My sister Ana lives in Lisbon",
            "I have a dog named Rex",
            "I work as a nurse at the city hospital",
            "I was born in Porto",
            "My favourite band is Radiohead",
            "I play the cello on weekends",
            "My husband is called Tom",
            "I'm training for a marathon in October",
            "I drive an old blue Volvo",
        ),
        (
            ("What pet do I have?", ("Rex",), True),
            ("Where does my sibling reside?", ("Lisbon",), True),
            ("Do you remember my allergy?", ("peanuts",), False),
            ("What's my job?", ("nurse",), True),
            ("Which town did I grow up in?", ("Porto",), True),
            ("What instrument do I practise?", ("cello",), True),
            ("What's my spouse's name?", ("Tom",), True),
            ("What car do I own?", ("Volvo",), True),
            ("What food must I avoid?", ("peanuts",), True),
            ("What race am I preparing for?", ("marathon",), True),
            ("Where does my sister live?", ("Lisbon",), False),
            ("What do you know about me?", ("Rex|Lisbon|peanuts|nurse|Porto|cello|Volvo",), False),
        ),
    ),
    Persona(
        "Kenji",
        (
            "I moved to Osaka last spring",
            "My daughter Hana just started school",
            "I'm a software engineer at a bank",
            "I can't eat gluten",
            "My cat Mochi sleeps all day",
            "I collect vintage film cameras",
            "My brother runs a ramen shop in Kyoto",
            "I go hiking every Sunday",
        ),
        (
            ("Which city do I live in now?", ("Osaka",), True),
            ("How is my kid doing?", ("Hana",), True),
            ("What do I do for a living?", ("engineer",), True),
            ("Is there any food I must avoid?", ("gluten",), True),
            ("What animal lives with me?", ("Mochi",), True),
            ("What's my hobby?", ("cameras|hiking",), True),
            ("What business does my sibling have?", ("ramen",), True),
            ("What do I do at the weekend?", ("hiking",), True),
            ("Do you remember my brother?", ("ramen",), False),
        ),
    ),
    Persona(
        "Lena",
        (
            "I teach chemistry at a high school",
            "My partner Sofia is a painter",
            "I'm learning Japanese for a trip next year",
            "I have two parrots called Kiwi and Mango",
            "I grew up on a farm in Bavaria",
            "I broke my wrist skiing in January",
            "My favourite dish is mushroom risotto",
        ),
        (
            ("What subject do I give lessons in?", ("chemistry",), True),
            ("Who is my girlfriend?", ("Sofia",), True),
            ("Which language am I studying?", ("Japanese",), True),
            ("What birds do I keep?", ("parrots|Kiwi",), True),
            ("Where was my childhood?", ("Bavaria",), True),
            ("How did I get injured?", ("wrist|skiing",), True),
            ("What meal do I love most?", ("risotto",), True),
            ("What are my parrots called?", ("Kiwi",), False),
        ),
    ),
    Persona(
        "Omar",
        (
            "I run a small bakery downtown",
            "My mother lives with us since her surgery",
            "I support Liverpool",
            "I'm saving money for a house",
            "My son Yusuf plays the drums",
            "I take the train to work at six",
        ),
        (
            ("What's my shop?", ("bakery",), True),
            ("Who moved in with me?", ("mother",), True),
            ("Which football club do I follow?", ("Liverpool",), True),
            ("What am I putting cash aside for?", ("house",), True),
            ("What instrument does my boy play?", ("drums",), True),
            ("How do I commute?", ("train",), True),
        ),
    ),
)


def _content(text: str) -> set[str]:
    return {w[:5] for w in words(text) if w not in STOP_WORDS}


def check_paraphrases() -> None:
    """A question marked as paraphrased must share no content word with its persona's facts' answer."""
    wrong = []
    for persona in PERSONAS:
        for question, keys, paraphrased in persona.questions:
            facts = [f for f in persona.facts if any(k.lower() in f.lower() for k in keys[0].split("|"))]
            shared = set().union(*(_content(f) & _content(question) for f in facts)) if facts else set()
            if paraphrased and shared:
                wrong.append(f"{question!r} shares {sorted(shared)} with its fact")
    if wrong:
        sys.exit("bench_answers: questions marked as paraphrased are not: " + "; ".join(wrong))


async def run(folder: Path, settings: Any) -> dict[str, Any]:
    responder = build_responder(settings)
    rows: list[dict[str, Any]] = []
    try:
        async with MemorySystem(folder, settings=settings) as memory:
            pipeline = ChatPipeline(memory, responder)
            for i, persona in enumerate(PERSONAS):
                for fact in persona.facts:
                    await pipeline.handle(f"p{i}", persona.name, fact)
        async with MemorySystem(folder, settings=settings) as memory:  # a restart
            await memory.wait_ready()  # the model loads in the background
            pipeline = ChatPipeline(memory, responder)
            for i, persona in enumerate(PERSONAS):
                for question, keys, paraphrased in persona.questions:
                    started = time.perf_counter()
                    reply = await pipeline.handle(f"p{i}", persona.name, question)
                    answered = any(k.lower() in reply.lower() for k in keys[0].split("|"))
                    rows.append(
                        {
                            "persona": persona.name,
                            "question": question,
                            "paraphrased": paraphrased,
                            "answered": answered,
                            "reply": reply,
                            "seconds": round(time.perf_counter() - started, 3),
                        }
                    )
    finally:
        await responder.close()
    para = [r for r in rows if r["paraphrased"]]
    share = sum(r["answered"] for r in rows) / len(rows)
    return {
        "model": settings.encoder.model,
        "responder": settings.bot.responder,
        "reranker": settings.retrieval.reranker,
        "questions": len(rows),
        "answered_share": round(share, 3),
        "paraphrased_questions": len(para),
        "paraphrased_answered_share": round(sum(r["answered"] for r in para) / len(para), 3),
        "target_0.85_met": share >= 0.85,
        "missed": [{k: r[k] for k in ("persona", "question", "reply")} for r in rows if not r["answered"]],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="encoder.model setting (default: the configured model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a retrieval setting")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    check_paraphrases()
    encoder = {"model": args.model} if args.model else {}
    retrieval = dict(item.split("=", 1) for item in args.set)
    settings = load_settings(overrides={"encoder": encoder, "retrieval": retrieval})
    folder = Path(tempfile.mkdtemp(prefix="bench-answers-"))
    try:
        report = await run(folder, settings)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    emit(report, args.out)


if __name__ == "__main__":
    asyncio.run(main())
