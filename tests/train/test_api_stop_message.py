"""A stop through the Python API (a notebook's interrupt button, found by a hunt) raised
Interrupted saying only the shell command to resume with; the API's own way is said too."""

import signal
from pathlib import Path

from kto.train.stop import Interrupted


def test_the_message_says_the_command_and_the_api_call():
    exc = Interrupted(signal.SIGINT, Path("run/checkpoint-3"), "kto-train --cache c --model m --out run --resume")
    assert str(exc) == (
        "stopped by SIGINT with run/checkpoint-3 saved; resume with: kto-train --cache c --model m --out run --resume "
        "(kto.train.run: the same TrainConfig with resume=True)"
    )
    assert exc.exit_code == 130 and exc.checkpoint == Path("run/checkpoint-3")
