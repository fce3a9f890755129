"""Run by every Python process started with this directory on ``PYTHONPATH``
(``checkpoint_pause.env``): with ``TEST_CHECKPOINT_PAUSE`` set, checkpoint
writes pause where it says, with ``TEST_CHECKPOINT_FAIL`` they fail there as
on a full disk (``tests/checkpoint_pause.py``); with ``TEST_RESULTS_FAIL`` the
first results writes fail as on a full disk (``tests/results_fail.py``)."""

import os
import sys

if os.environ.get("TEST_CHECKPOINT_PAUSE") or os.environ.get("TEST_CHECKPOINT_FAIL"):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import checkpoint_pause

    checkpoint_pause.install()

if os.environ.get("TEST_RESULTS_FAIL"):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import results_fail

    results_fail.install()
