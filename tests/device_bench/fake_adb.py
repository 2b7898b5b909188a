"""A stand-in for Android's `adb` program, installed on PATH as `adb` by the tests.

It answers the commands the adb target uses, on this machine: `devices` lists FAKE_ADB_DEVICES
("serial:state,serial:state"); `-s SERIAL push|pull SRC DST` copies files; `-s SERIAL shell WORDS...` joins its
words with spaces and runs them with `sh -c`, as adb hands them to the device's shell. Every call is appended to
FAKE_ADB_LOG as one JSON line, so that a test can check the order of the protocol.
"""

import json
import os
import shutil
import subprocess
import sys


def devices() -> dict[str, str]:
    pairs = [item.rsplit(":", 1) for item in os.environ.get("FAKE_ADB_DEVICES", "").split(",") if item]
    return dict(pairs)


def serve(arguments: list[str]) -> int:
    if arguments == ["devices"]:
        rows = [f"{serial}\t{state}" for serial, state in devices().items()]
        print("\n".join(["List of devices attached", *rows]) + "\n")
        return 0
    if arguments[:1] != ["-s"] or devices().get(arguments[1]) != "device":
        print(f"adb: device '{arguments[1] if len(arguments) > 1 else ''}' not found", file=sys.stderr)
        return 1
    command, rest = arguments[2], arguments[3:]
    if command in ("push", "pull"):
        try:
            shutil.copyfile(rest[0], rest[1])
        except OSError as error:
            print(f"adb: error: {error}", file=sys.stderr)
            return 1
        return 0
    if command == "shell":
        return subprocess.run(["sh", "-c", " ".join(rest)]).returncode
    print(f"fake adb: unknown command {command}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    with open(os.environ["FAKE_ADB_LOG"], "a") as log:
        log.write(json.dumps(sys.argv[1:]) + "\n")
    sys.exit(serve(sys.argv[1:]))
