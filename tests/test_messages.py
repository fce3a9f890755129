"""The typed launcher <-> server control messages: round trip and validation."""

import pytest

from melissa_sa import exit_codes
from melissa_sa.messages import (
    LAUNCHER_TO_SERVER,
    SERVER_TO_LAUNCHER,
    JobState,
    Kill,
    MessageError,
    Ping,
    Progress,
    ServerHello,
    Stop,
    StopRequest,
    Submit,
    decode,
    encode,
)

EXAMPLES = [ServerHello(pid=12, groups_total=10, groups_done=3, group_size=5,
                  connection="tcp://127.0.0.1:2003"),
            Ping(), Progress(4, 10, 2), Progress(4, 10), Submit(1, [5, 6], ["a.sh", "b.sh"]),
            Kill([3]), Stop(0, "done"), JobState(7, 1, "failed", -9), JobState(7, None, "running"),
            StopRequest("SIGINT"), Progress(250, 260, 7, ci_width=0.0831, ci_target=0.05,
                                            ci_min_groups=200),
            Progress(3, 1000, ci_target=0.05, ci_min_groups=200),
            Progress(3, 10, checkpoint_error="checkpoint failed in /o/checkpoint: rank 1: "
                                             "OSError: [Errno 28] No space left on device")]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.type)
def test_round_trip(msg):
    assert decode(encode(msg), accept=(type(msg),)) == msg


def test_each_direction_accepts_only_its_own_types():
    with pytest.raises(MessageError, match="unexpected message type 'submit'"):
        decode(encode(Submit(1, [1], ["x"])), accept=LAUNCHER_TO_SERVER)
    with pytest.raises(MessageError, match="unexpected message type 'job'"):
        decode(encode(JobState(1, 0, "done", 0)), accept=SERVER_TO_LAUNCHER)
    # a name that is no message at all, e.g. an internal handler's
    with pytest.raises(MessageError, match="server_failure"):
        decode(b'{"type": "server_failure"}', accept=SERVER_TO_LAUNCHER)


@pytest.mark.parametrize("raw, match", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"type": 3}', "not a JSON object with a type"),
    (b'{"type": "progress", "groups_done": 3, "groups_total": 4, "checkpoint_error": 28}',
     "progress.checkpoint_error must be a string"),
    (b'{"type": "progress", "groups_done": "3", "groups_total": 4}',
     "groups_done must be an integer"),
    (b'{"type": "progress", "groups_done": true, "groups_total": 4}',
     "groups_done must be an integer"),
    (b'{"type": "progress", "groups_total": 4}', "groups_done"),
    (b'{"type": "kill", "sim_ids": [1, "2"]}', r"sim_ids\[1\] must be an integer"),
    (b'{"type": "kill", "sim_ids": 3}', "sim_ids must be a list"),
    (b'{"type": "ping", "extra": 1}', "unknown field"),
    (b'{"type": "progress", "groups_done": 3, "groups_total": 4, "ci_width": "0.1", '
     b'"ci_target": 0.05}', "ci_width must be a number"),
    (b'{"type": "progress", "groups_done": 3, "groups_total": 4, "ci_width": NaN, '
     b'"ci_target": 0.05}', "ci_width must be a finite number"),
    (b'{"type": "progress", "groups_done": 3, "groups_total": 4, "ci_width": 0.1}',
     "ci_width needs progress.ci_target"),
    (b'{"type": "submit", "group_id": 1, "sim_ids": [1, 2], "scripts": ["a"]}', "2 sim_ids but 1"),
])
def test_malformed_messages_are_refused_with_a_reason(raw, match):
    with pytest.raises(MessageError, match=match):
        decode(raw, accept=SERVER_TO_LAUNCHER + LAUNCHER_TO_SERVER)


def test_exit_codes_follow_the_shell_convention():
    assert exit_codes.INTERRUPTED == 130 and exit_codes.TERMINATED == 143
    assert exit_codes.for_signal(9) == 137
