"""A scenario's leftover-process check waits a bounded grace for helpers that exit after their pod."""

from __future__ import annotations

import subprocess
import threading

from kondense.localcluster.scenarios import _leftovers


def test_a_process_that_exits_within_the_grace_is_not_left_over() -> None:
    late = subprocess.Popen(["sleep", "1"], start_new_session=True)
    stuck = subprocess.Popen(["sleep", "60"], start_new_session=True)
    threading.Thread(target=late.wait, daemon=True).start()  # reaped as the kubelet reaps its pods
    try:
        assert _leftovers([late.pid], grace_s=10.0) == []
        assert _leftovers([stuck.pid], grace_s=0.5) == [stuck.pid]
    finally:
        stuck.kill()
        late.wait()
        stuck.wait()
