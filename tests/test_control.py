"""The owner's control channel: owner-only, and a change sent there goes through its locks."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from memory import ControlChannelError, MemorySystem, RemoteError, control
from tests.conftest import PYTHON


async def test_the_socket_is_the_owners_alone(ms: MemorySystem) -> None:
    path = control.control_path(ms.data_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another user may not connect (run as "nobody"; skipped where the tests cannot switch).
    probe = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
        "else:\n    print('connected')\n"
    )
    if os.getuid() != 0:
        pytest.skip("switching to another user needs root")
    out = subprocess.run([PYTHON, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "refused"


async def test_changes_sent_on_the_channel_run_in_the_owner(ms: MemorySystem) -> None:
    await ms.update_context("zed", "I love tea", "Noted!")
    await ms.update_context("zed", "again", "ok")
    ctx = await control.call(ms.data_dir, "rollback", {"user_id": "zed", "version": 1, "actor": "admin"})
    assert ctx["version"] == 3 and ctx["conversations_count"] == 1
    assert (await ms.get_user_context("zed")).version == 3  # the owner's own state moved
    with pytest.raises(RemoteError, match="no version 9"):
        await control.call(ms.data_dir, "rollback", {"user_id": "zed", "version": 9})
    with pytest.raises(RemoteError, match="must be one of"):
        await control.call(ms.data_dir, "drop_everything", {})
    assert (await control.call(ms.data_dir, "forget_user", {"user_id": "zed"}))["known"] is True
    assert "zed" not in await ms.list_users()
    assert [r.actor for r in await ms.erasures("zed")] == ["admin"]


async def test_the_socket_goes_with_the_owner(ms: MemorySystem) -> None:
    path = control.control_path(ms.data_dir)
    assert path.exists()
    await ms.close()
    assert not path.exists()
    with pytest.raises(ControlChannelError, match="does not answer"):
        await control.call(ms.data_dir, "forget_user", {"user_id": "x"})
