"""`marketfeed top` on a real terminal: run in a detached tmux session, its screen read back."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.polling import poll
from tests.support.questdb import REPO


def top_screen(config_path: Path, expected: tuple[str, ...], env: dict | None = None, timeout: float = 20.0) -> str:
    """The first whole screen showing every expected text; top is then quit with q, as a user would."""
    tmux = shutil.which("tmux")
    assert tmux, "tmux missing: bin/test-deps installs it"
    session = f"mf{uuid.uuid4().hex[:8]}"
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "140", "-y", "40",
                    f"{sys.executable} -m cli.main top -c {config_path}"],
                   cwd=REPO, env={**os.environ, **(env or {}), "TERM": "xterm-256color"}, check=True)
    try:
        def screen():  # polled whole: a capture can catch a screen half redrawn
            out = subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            return out if all(text in out for text in expected) else None

        shown = poll(screen, timeout, f"top showing {', '.join(expected)}")
        subprocess.run([tmux, "send-keys", "-t", session, "q"], check=True)
        poll(lambda: subprocess.run([tmux, "has-session", "-t", session], capture_output=True).returncode != 0,
             10, "top to quit on q")
        return shown
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)
