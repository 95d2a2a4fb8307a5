"""Inputs a person or an operator can send never surface as storage errors or tracebacks."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.actions import MemoryActions
from bot.console import ConsoleChat, ConsoleUser
from bot.pipeline import ChatPipeline
from bot.responder import TemplateResponder
from memory import InvalidInputError, MemorySystem, StorageError
from memory.lexical import MAX_QUERY_TERMS, informative_terms, query_terms, words
from memory.recovery import DB_NAME
from memory.storage.sqlite import SqliteStore
from tests.conftest import ROOT, subprocess_env
from tests.test_console import chat

pytestmark = pytest.mark.both_backends  # one behaviour suite, both storage backends


def longest_message_of_unique_words(length: int) -> str:
    """Exactly ``length`` characters of distinct words: "1 2 3 ..." and one filler word."""
    text, n = "1", 1
    while len(text) + len(f" {n + 1}") <= length - 2:
        n += 1
        text += f" {n}"
    text += " " + "q" * (length - len(text) - 1)
    found = words(text)
    assert len(text) == length and len(set(found)) == len(found)
    return text


def test_informative_terms_drop_terms_nobody_holds_then_keep_the_rarest_in_order() -> None:
    terms = ["a", "b", "c", "d", "e"]
    assert informative_terms(terms, [0, 5, 1, 3, 0], limit=10) == ["b", "c", "d"]
    assert informative_terms(terms, [0, 5, 1, 3, 0], limit=2) == ["c", "d"]
    assert informative_terms(terms, [2, 2, 2, 2, 2], limit=3) == ["a", "b", "c"]  # ties: earlier word
    assert informative_terms(terms, [0, 0, 0, 0, 0], limit=3) == []


async def test_the_longest_message_of_unique_words_is_retrieved_not_a_storage_error(
    ms: MemorySystem,
) -> None:
    limit = ms.settings.limits.max_text_length
    query = longest_message_of_unique_words(limit)
    assert len(query_terms("alice", query)) > 500  # past SQLite's compound SELECT limit
    lucky = await ms.save_memory("alice", "777 is my lucky number")
    await ms.save_memory("alice", "a memory with none of those words")
    results = await ms.retrieve_memory("alice", query, 2)
    assert results[0].memory == lucky
    assert "lexical" in results[0].rankers


@pytest.mark.sqlite_only("SQLite's own files and store")
async def test_a_long_query_scores_exactly_as_the_terms_the_user_holds(
    make_system: Callable[..., MemorySystem], tmp_path: Path
) -> None:
    # 70 memories hold "common" and one word each of the query; the query has those 70 words,
    # "common" and 600 words nobody holds: the search keeps the 64 rarest held terms. (No
    # sessions: a memory would also hold its previous turn's words.)
    folder = tmp_path / "data"
    async with make_system(folder, retrieval={"session_gap_minutes": 0}) as ms:
        for i in range(70):
            await ms.save_memory("alice", f"common word{i}")
    query = "common " + " ".join(f"word{i}" for i in range(70)) + " " + " ".join(f"x{i}" for i in range(600))
    terms = query_terms("alice", query)
    store = SqliteStore(folder / DB_NAME, readonly=True)
    await store.open(integrity_check=False)
    try:
        bounded = await store.lexical_search("alice", terms, 100)
        expected = await store.lexical_search("alice", terms[1 : 1 + MAX_QUERY_TERMS], 100)
        assert bounded == expected and len(bounded) == MAX_QUERY_TERMS
        # With no more held terms than the bound, dropping the rest changes nothing.
        assert await store.lexical_search("alice", terms[:30] + terms[71:], 100) == (
            await store.lexical_search("alice", terms[:30], 100)
        )
    finally:
        await store.close()


async def test_the_longest_message_of_unique_words_gets_a_reply_through_the_pipeline(
    ms: MemorySystem,
) -> None:
    await ms.save_memory("alice", "777 is my lucky number")
    message = longest_message_of_unique_words(ms.settings.limits.max_text_length)
    reply = await ChatPipeline(ms, TemplateResponder()).handle("alice", "Alice", message)
    assert reply and "went wrong" not in reply
    context = await ms.get_user_context("alice")
    assert context.conversations_count == 1
    assert context.recent[-1].message == message


@pytest.mark.parametrize(("message", "response"), [("", "ok"), ("hi", ""), ("  \n", "ok"), ("hi", "\t")])
async def test_update_context_rejects_an_empty_message_or_response_and_changes_nothing(
    ms: MemorySystem, message: str, response: str
) -> None:
    await ms.update_context("alice", "hello", "hi there")
    before = await ms.get_user_context("alice")
    field = "message" if not message.strip() else "response"
    with pytest.raises(InvalidInputError, match=f"invalid {field}: must not be empty"):
        await ms.update_context("alice", message, response)
    assert await ms.get_user_context("alice") is before
    assert len(await ms.get_memories("alice")) == 1


def _blocked_folders(tmp_path: Path) -> list[tuple[Path, Path]]:
    """(data folder, the file in the way): a file in its place, and a file as its parent."""
    in_place = tmp_path / "in-place"
    in_place.write_text("not a folder")
    parent = tmp_path / "parent"
    parent.write_text("not a folder")
    return [(in_place, in_place), (parent / "missing" / "data", parent)]


@pytest.mark.sqlite_only("SQLite's own files and store")
async def test_a_data_folder_that_cannot_be_created_is_one_clear_storage_error(
    make_system: Callable[..., MemorySystem], tmp_path: Path
) -> None:
    for data_dir, blocker in _blocked_folders(tmp_path):
        ms = make_system(data_dir)
        with pytest.raises(StorageError) as caught:
            await ms.start()
        message = str(caught.value)
        assert message == (
            f"cannot create the data folder {data_dir}: {blocker} is a file, not a folder; "
            "move it aside, or choose another one (--data-dir or storage.data_dir)"
        )
        assert caught.value.path == data_dir
        with pytest.raises(Exception, match="closed"):
            await ms.get_user_context("alice")
    fresh = tmp_path / "new" / "nested" / "data"  # a missing parent that can be made is made
    async with make_system(fresh) as ms:
        await ms.update_context("alice", "hello", "hi")
    assert (fresh / DB_NAME).is_file()


@pytest.mark.parametrize("program", ["bot", "memory.admin"])
def test_the_bot_and_the_admin_cli_report_an_uncreatable_folder_in_one_line(
    tmp_path: Path, program: str
) -> None:
    for data_dir, blocker in _blocked_folders(tmp_path):
        args = ["--console", "--user", "7:Kim"] if program == "bot" else ["rebuild-index", "--yes"]
        result = subprocess.run(
            [sys.executable, "-m", program, "--data-dir", str(data_dir), *args],
            input="hello\n",
            capture_output=True,
            text=True,
            env=subprocess_env() | {"MEMORY_BOT_ENCODER_KIND": "hashing"},
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        [line] = result.stderr.splitlines()
        if program == "bot":
            expected = f"memory-bot: cannot create the data folder {data_dir}: {blocker} is a file"
            assert line.startswith(expected)
        else:  # the admin CLI never creates a folder: it looks for the database first
            assert line == (
                f"memory-admin: error: no database at {data_dir / DB_NAME}; "
                "check --data-dir (default: storage.data_dir)"
            )


@pytest.mark.parametrize("target", ["folder", "missing"])
async def test_a_bad_export_path_is_one_line_and_the_console_goes_on(
    ms: MemorySystem, tmp_path: Path, target: str
) -> None:
    out = io.StringIO()
    chat = ConsoleChat(ChatPipeline(ms, TemplateResponder()), MemoryActions(ms), ConsoleUser("7", "Kim"), out)
    assert await chat.handle("I love jazz")
    path = tmp_path if target == "folder" else tmp_path / "no-such-folder" / "me.json"
    out.truncate(0)
    out.seek(0)
    assert await chat.handle(f"/export {path}")
    [line] = out.getvalue().splitlines()
    problem = "that is a folder" if target == "folder" else f"the folder {path.parent} does not exist"
    assert line.startswith(f"bot> I couldn't write your data to {path}: {problem}")
    good = tmp_path / "me.json"
    assert await chat.handle(f"/export {good}")  # the console still answers, and the export works
    assert "Your data is in" in out.getvalue().splitlines()[-1]
    assert b'"user_id": "7"' in good.read_bytes()


def test_the_console_process_survives_a_bad_export(tmp_path: Path) -> None:
    out = chat(tmp_path / "data", "I love jazz", f"/export {tmp_path}", "/profile")  # exits 0
    assert f"bot> I couldn't write your data to {tmp_path}: that is a folder" in out
    assert "Conversations: 1" in out  # the next command was still answered
    assert "Traceback" not in out
