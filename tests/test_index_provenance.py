"""The index proves it belongs to this database: rebuilt when it does not, and verify says so."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from memory import MemorySystem
from tests.admin_fixtures import Cli, build_folder, hashing_settings
from tests.test_admin import verify_json


def test_a_database_rebuilt_from_the_snapshot_never_reuses_the_old_vectors(tmp_path: Path) -> None:
    """The database is lost and rebuilt from the snapshot; its ids start again at 1, so without
    a database id the old file would lend alice's vectors to zoe's new memories."""
    folder = build_folder(tmp_path / "data")
    (folder / "memory.db").unlink()
    for suffix in ("-wal", "-shm"):
        (folder / f"memory.db{suffix}").unlink(missing_ok=True)

    async def reuse_ids() -> tuple[str, list[tuple[str, float | None]]]:
        async with MemorySystem(folder, settings=hashing_settings()) as ms:
            assert await ms.wait_ready(60)  # the index opens with the model when none is stored
            report = ms.report
            texts = [f"zoe plays the oboe, entry {n}" for n in range(8)]
            for text in texts:
                await ms.save_memory("zoe", text)
            found = [await ms.retrieve_memory("zoe", text, 1) for text in texts]
            assert report is not None
            return str(report.index_action), [(f[0].memory.text, f[0].dense_score) for f in found]

    action, found = asyncio.run(reuse_ids())
    assert "another database" in action
    for n, (text, dense) in enumerate(found):
        assert text == f"zoe plays the oboe, entry {n}"
        assert dense is not None and dense > 0.999  # its own vector, not an old one of the same id


def test_verify_fails_an_index_copied_from_another_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = build_folder(tmp_path / "mine")
    other = build_folder(tmp_path / "other")
    for name in ("vectors.faiss", "vectors.faiss.watermark.json"):
        shutil.copy(other / name, mine / name)
    config = tmp_path / "admin.toml"
    config.write_text('[encoder]\nkind = "hashing"\n')
    code, checks = verify_json(Cli(mine, config, capsys))
    assert code == 1
    assert checks["index"]["status"] == "fail" and "another database" in checks["index"]["detail"]
