"""libmelissa's handshake decoder (melissa_sa/cclient/src/handshake.c) fed
damaged welcomes and refusals by a small C harness (tests/clients/
decode_harness.c) built with AddressSanitizer and UndefinedBehaviorSanitizer:
every truncation, every byte set to 0x00 and to 0xff, inflated counts and
lengths. No read out of bounds, no undefined behaviour, and whatever the C
decoder accepts, melissa_sa.protocol decodes to the same values.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from cclient_util import missing, run

from melissa_sa.protocol import (
    ProtocolError,
    Welcome,
    decode_welcome,
    encode_refusal,
    encode_welcome,
)

SRC = Path(__file__).parents[1] / "melissa_sa" / "cclient" / "src"
HARNESS = Path(__file__).parent / "clients" / "decode_harness.c"
N_CELLS = 30
WELCOME = encode_welcome(Welcome(3, 1, 7, [(0, 10), (10, 25), (25, 30)],
                                 ["tcp://127.0.0.1:2004", "tcp://127.0.0.1:2005",
                                  "tcp://10.0.0.7:2004"], 0x89ABCDEF))


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    if missing("cc"):
        pytest.skip("needs a C compiler (cc)")
    exe = tmp_path_factory.mktemp("harness") / "decode"
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1"]
    run(["cc", *flags, "-std=gnu11", "-Wall", f"-I{SRC}", HARNESS, SRC / "handshake.c",
         "-o", exe])
    return exe


def damaged(raw: bytes) -> list[bytes]:
    cases = [raw[:n] for n in range(len(raw))]
    for i in range(len(raw)):
        for byte in (0x00, 0xFF):
            cases.append(raw[:i] + bytes([byte]) + raw[i + 1:])
    header = 8  # magic, version, kind, reserved
    for n_ranks in (0, 65536, 65537, 0xFFFFFFFF):
        cases.append(raw[:header + 8] + struct.pack("<I", n_ranks) + raw[header + 12:])
    first_endpoint = header + 16 + 16 * 3
    cases.append(raw[:first_endpoint] + struct.pack("<H", 0xFFFF) + raw[first_endpoint + 2:])
    cases.append(raw + b"x")
    return cases


def refusals() -> list[bytes]:
    ok = encode_refusal("simulation 3 is not running in this study")
    long = encode_refusal("r" * 100_000)
    return [ok, long, ok[:-1], ok[:10], ok[:8] + struct.pack("<I", 0xFFFFFFFF) + ok[12:],
            ok + b"!"]


def decode_all(harness: Path, tmp: Path, replies: list[bytes]) -> list[str]:
    path = tmp / "cases"
    path.write_bytes(b"".join(struct.pack("<QQ", N_CELLS, len(r)) + r for r in replies))
    done = subprocess.run([harness, path], capture_output=True, text=True, errors="replace",
                          timeout=120, env={"ASAN_OPTIONS": "detect_leaks=1",
                                            "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, \
        done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(replies)
    return lines


def python_view(raw: bytes) -> str | None:
    try:
        w = decode_welcome(raw)
    except ProtocolError:
        return None
    return f"0 {w.field_id} {w.member} {w.n_time_steps} {w.attempt} {len(w.endpoints)} " \
           f"{','.join(w.endpoints)} |"


def test_damaged_welcomes_never_read_out_of_bounds(harness, tmp_path):
    cases = [WELCOME, *damaged(WELCOME)]
    lines = decode_all(harness, tmp_path, cases)
    assert lines[0] == (f"0 3 1 7 {0x89ABCDEF} 3 tcp://127.0.0.1:2004,tcp://127.0.0.1:2005,"
                        "tcp://10.0.0.7:2004 |")
    accepted = 0
    for raw, line in zip(cases, lines):
        if line.startswith("0 "):
            accepted += 1
            assert line == python_view(raw), (raw, line)
        else:
            assert line.split(" | ", 1)[1], f"no reason given for {raw!r}"
    truncated = lines[1:1 + len(WELCOME)]
    assert all(line.startswith("-1 | ") for line in truncated)
    assert accepted < len(cases) // 2


def test_damaged_refusals(harness, tmp_path):
    lines = decode_all(harness, tmp_path, refusals())
    assert lines[0] == "1 | simulation 3 is not running in this study"
    assert lines[1] == "1 | " + "r" * 4000
    assert [line.split(" | ")[0] for line in lines[2:]] == ["-1"] * 4
