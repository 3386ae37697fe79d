"""Coverage-guided fuzzing (atheris) of the cursor parser and the tar header walker.

Run: pip install '.[fuzz]' && python tests/fuzz_atheris.py TARGET [CORPUS_DIR] -atheris_runs=N
with TARGET one of cursor (a valid cursor with fields dropped and replaced), cursor-bytes (raw
msgpack bytes; a corpus holding a valid cursor's bytes makes it explore damaged cursors) and tar
(a corpus directory holding a valid shard lets mutations reach past the first header).

Not part of pytest (coverage-guided runs are open-ended); the hypothesis fuzz tests in
test_cursor.py and test_fuzz_shards.py run in CI. Any exception other than the package's own
error types (or msgpack refusing its input) is a finding and stops the run.
"""

from __future__ import annotations

import contextlib
import sys

import atheris
import msgpack
import torch  # noqa: F401  (imported uninstrumented: only our own code is instrumented)

from resumable_loader.errors import ResumableLoaderError
from resumable_loader.index import tar_headers
from resumable_loader.index.tar_headers import TarDamage
from resumable_loader.loader import cursor

# The editable install imports through a custom loader that atheris cannot instrument, so the
# code under test is instrumented function by function (module globals, so inner calls count).
for module, names in (
    (cursor, ("parse_cursor", "_field", "_checksum")),
    (tar_headers, ("walk", "_parse_header", "_pax_records", "_text")),
):
    for name in names:
        setattr(module, name, atheris.instrument_func(getattr(module, name)))
make_cursor, parse_cursor, walk = cursor.make_cursor, cursor.parse_cursor, tar_headers.walk

FINGERPRINT = {"dataset": "", "order": "shuffled", "length": 100, "drop_last": 0}


def fuzz_cursor(data: bytes) -> None:
    """Mutate a valid cursor: drop keys, replace values with fuzzed ints, strings, lists."""
    fuzzed = atheris.FuzzedDataProvider(data)
    state = make_cursor(seed=7, epoch=1, position=40, fingerprint=FINGERPRINT)
    for key in list(state):
        choice = fuzzed.ConsumeIntInRange(0, 5)
        if choice == 1:
            del state[key]
        elif choice == 2:
            state[key] = fuzzed.ConsumeInt(9)
        elif choice == 3:
            state[key] = fuzzed.ConsumeUnicodeNoSurrogates(8)
        elif choice == 4:
            state[key] = {fuzzed.ConsumeUnicodeNoSurrogates(4): fuzzed.ConsumeInt(4)}
        elif choice == 5:
            state[key] = [fuzzed.ConsumeInt(2)]
    try:
        state = msgpack.unpackb(msgpack.packb(state), strict_map_key=False)
    except (ValueError, TypeError, OverflowError):
        return  # msgpack cannot carry it, so no saved state can hold it
    with contextlib.suppress(ResumableLoaderError):
        parse_cursor(state, fingerprint=FINGERPRINT, seed=None)


def fuzz_cursor_bytes(data: bytes) -> None:
    """Raw bytes as a saved msgpack cursor: refused by msgpack, or by parse_cursor."""
    try:
        state = msgpack.unpackb(data, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return  # msgpack itself refused the bytes
    with contextlib.suppress(ResumableLoaderError):
        parsed = parse_cursor(state, fingerprint=FINGERPRINT, seed=None)
        assert parsed == make_cursor(
            seed=parsed["seed"],
            epoch=parsed["epoch"],
            position=parsed["position"],
            fingerprint=FINGERPRINT,
        )  # anything accepted is a cursor state_dict() could have written


def fuzz_tar(data: bytes) -> None:
    try:
        for member in walk(
            lambda offset, count: data[offset : offset + count], len(data), archive=True
        ):
            assert member.offset_data >= 0 and member.offset_data + member.size <= len(data)
    except TarDamage:
        pass


def main() -> None:
    targets = {"cursor": fuzz_cursor, "cursor-bytes": fuzz_cursor_bytes, "tar": fuzz_tar}
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(targets)}}} [atheris options]")
    target = targets[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
