"""`python tests/probe_train.py ARGS...`: `python -m segframe.train ARGS...` with test probes, for tests
that kill, signal and resume real training processes.

PROBE_LOG=FILE         one JSON line per training batch: epoch, batch index, global step before the
                       batch, and a hash of every image in it (written and flushed before the step)
PROBE_STEP_SLEEP=S     sleep S seconds in every training step (room to kill inside an epoch)
PROBE_STALL_SAVE=N     the N-th checkpoint write stalls forever after writing its bytes, before
                       fsync and rename (a writer killed mid-save)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from segframe.engine import checkpointing  # noqa: E402
from segframe.engine.module import SegModule  # noqa: E402

_training_step = SegModule.training_step
_log = open(os.environ["PROBE_LOG"], "a") if os.environ.get("PROBE_LOG") else None
_sleep = float(os.environ.get("PROBE_STEP_SLEEP", "0"))


def training_step(self, batch, batch_idx):
    if _log is not None:
        images = batch[0].cpu().numpy()
        _log.write(json.dumps({"epoch": self.current_epoch, "batch": batch_idx, "step": self.global_step, "t": time.time(),
                               "images": [hashlib.sha1(im.tobytes()).hexdigest()[:16] for im in images]}) + "\n")
        _log.flush()
    if _sleep:
        time.sleep(_sleep)
    return _training_step(self, batch, batch_idx)


SegModule.training_step = training_step

if os.environ.get("PROBE_STALL_SAVE"):
    _stall_at, _fsync, _calls = int(os.environ["PROBE_STALL_SAVE"]), os.fsync, [0]

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".partial"):
            _calls[0] += 1
            if _calls[0] == _stall_at:
                print(f"PROBE: stalling checkpoint write {_calls[0]}", file=sys.stderr, flush=True)
                time.sleep(3600)
        _fsync(fd)

    checkpointing.os.fsync = fsync  # the os module itself: this process only

if __name__ == "__main__":
    from segframe.train import main

    sys.argv = ["segframe.train", *sys.argv[1:]]
    main()
