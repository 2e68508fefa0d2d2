"""Long fuzz run: seeded hostile frames at the reference server over real sockets.

    .venv/bin/python -m benchmarks.fuzz                          # 1,000,000 frames, seed 1
    .venv/bin/python -m benchmarks.fuzz --frames 20000 --seed 7 --json out.json

The server runs in a process of its own (``tests/support/server_runner.py``) with the
request rate limit off (R43 would otherwise answer most frames
``rate_limited``). One clinician and one patient share a room; batches of
frames from ``tests/support/fuzzgen.py`` go to one of them, then a ``ping``
barrier. The oracle, per connection:

- every message that is not meant to close gets exactly one ``ok`` or
  ``error``, in order, carrying the request's ``ref`` when it had a valid one,
  with a code from the contract's list (and ``field`` for ``invalid``);
- a text frame that is not UTF-8 is closed with 1007, a frame over 64 KiB with
  1009, a broken frame with 1002 (after the answers to the frames before it);
  a patient's ``leave`` (or the clinician's ``end_call``) closes with 1000;
  a clinician replaced by a newer one gets 4000; nothing else closes;
- events the other side's requests caused arrive (no ``ref``).

Now and then a fresh connection is sent one fuzzed first frame (the hello
phase: ``welcome``, or an error and a close with 1008), and the clinician is
replaced (R12). A read that waits more than ``--hang-s`` is a hang. A crash
is the server process dying, a close with 1011, or an internal error counted
by the server or logged. At the end a clean chat round trip must work, the
server must shut down cleanly, and the figures are printed (and written to
``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reference_server.protocol import DEVELOPMENT_SECRET, ERROR_CODES, clinician_token
from reference_server.wscodec import OP_CLOSE, OP_TEXT
from tests.support.fuzzgen import FrameGenerator, Item
from tests.support.rawws import SyncClient, WsError, WsTimeout, json_frame
from tests.support.server_process import ServerProcess, load_average

BARRIER = "~barrier-"


class Failure(Exception):
    """The server broke the contract (not a crash or a hang)."""


@dataclass
class Report:
    seed: int
    frames_target: int
    frames_sent: int = 0
    messages_sent: int = 0
    answers: int = 0
    events: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    answer_codes: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    unanswered_before_close: int = 0  # answers lost when a broken frame failed the connection
    hello_probes: int = 0
    clinician_replacements: int = 0
    reconnects: int = 0
    hangs: int = 0
    crashes: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    internal_errors: int = 0
    server_exit_code: int | None = None
    round_trip_ok: bool = False
    duration_s: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    server_rss_mib_end: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("by_kind", "answer_codes", "closes"):
            out[key] = dict(sorted(out[key].items()))
        out["frames_per_s"] = round(self.frames_sent / self.duration_s) if self.duration_s else 0
        return out


class Fuzzer:
    def __init__(self, server: ServerProcess, seed: int, report: Report, hang_s: float, batch: int) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.gen = FrameGenerator(seed)
        self.report = report
        self.hang_s = hang_s
        self.batch = batch
        self.barriers = 0
        self.room_no = 0
        self.room = ""
        self.clinician: SyncClient | None = None
        self.patient: SyncClient | None = None
        self.patient_id = ""
        self.known_ids: list[str] = []

    # ------------------------------------------------------------------ sessions

    def connect(self) -> SyncClient:
        return SyncClient(self.server.url, timeout=self.hang_s)

    def new_room(self) -> None:
        self.close_all()
        self.room_no += 1
        self.room = f"fuzz-{self.room_no}"
        self.known_ids = []
        self.clinician = self.connect()
        self.clinician.hello({"type": "hello", "role": "clinician", "room": self.room,
                              "token": clinician_token(DEVELOPMENT_SECRET, self.room)})
        self.new_patient()

    def new_patient(self) -> None:
        self.patient = self.connect()
        welcome = self.patient.hello({"type": "hello", "role": "patient", "room": self.room, "name": "Fuzz"})
        self.patient_id = welcome["patient"]
        self.known_ids = [*self.known_ids[-5:], self.patient_id]
        self.report.reconnects += 1

    def replace_clinician(self) -> None:
        old = self.clinician
        assert old is not None
        fresh = self.connect()
        fresh.hello({"type": "hello", "role": "clinician", "room": self.room,
                     "token": clinician_token(DEVELOPMENT_SECRET, self.room)})
        code, frames = self._read_to_close(old)
        kinds = [f.get("type") for f in frames]
        # Events already on their way (a hello probe's patient_joined...) may come first; then
        # the refresh's erasures (R12), then 4000. Never an answer: nothing was asked.
        erasures = kinds[kinds.index("erased"):] if "erased" in kinds else []
        if code != 4000 or "ok" in kinds or "error" in kinds or any(k != "erased" for k in erasures):
            raise Failure(f"replaced clinician: close {code}, last frames {kinds[-10:]}")
        self.report.events += len(frames)
        old.close()
        self.clinician = fresh
        self.report.clinician_replacements += 1
        self.report.closes["4000"] += 1

    def close_all(self) -> None:
        for client in (self.clinician, self.patient):
            if client is not None:
                client.close()
        self.clinician = self.patient = None

    def _read_to_close(self, client: SyncClient) -> tuple[int | None, list[dict[str, Any]]]:
        frames: list[dict[str, Any]] = []
        while True:
            frame = client.recv(self.hang_s)
            if frame.opcode == OP_CLOSE:
                return frame.close_code, frames
            if frame.opcode == OP_TEXT:
                frames.append(frame.json())

    # ------------------------------------------------------------------ one batch

    def barrier_frame(self) -> tuple[bytes, str]:
        self.barriers += 1
        ref = f"{BARRIER}{self.barriers}"
        return json_frame({"type": "ping", "ref": ref}), ref

    def run_batch(self, role: str) -> None:
        client = self.clinician if role == "clinician" else self.patient
        assert client is not None
        ids = [*self.known_ids, self.patient_id] if role == "clinician" else []
        items: list[Item] = []
        for _ in range(self.rng.randint(1, self.batch)):
            item = self.gen.item(role, ids)
            items.append(item)
            self.report.by_kind[item.kind] += 1
            if item.expect == "close":
                break
        wire = b"".join(item.wire for item in items)
        barrier_ref = None
        if items[-1].expect != "close":
            barrier, barrier_ref = self.barrier_frame()
            wire += barrier
        client.send_bytes(wire)
        self.report.messages_sent += len(items)
        self.report.frames_sent += len(items)
        self.read_answers(role, client, items, barrier_ref)

    def read_answers(self, role: str, client: SyncClient, items: list[Item], barrier_ref: str | None) -> None:
        index = 0
        closing_ok = False  # a leave (patient) was answered ok: a close with 1000 follows
        while True:
            frame = client.recv(self.hang_s)
            if frame.opcode == OP_CLOSE:
                code = frame.close_code
                self.report.closes[str(code)] += 1
                if code == 1011:
                    self.report.crashes += 1
                    raise Failure("close 1011 (internal error)")
                last = items[-1]
                if closing_ok and code == 1000:
                    pass
                elif last.expect == "close":
                    # RFC 6455 7.1.7: a connection failed for a broken frame is closed at once;
                    # answers still queued for the frames before it may be lost with it.
                    if code != last.close_code:
                        raise Failure(f"{last.kind}: closed with {code}, expected {last.close_code}"
                                      f" ({role}, {index} of {len(items) - 1} answered,"
                                      f" {sum(len(i.wire) for i in items)} bytes)")
                    self.report.unanswered_before_close += len(items) - 1 - index
                else:
                    raise Failure(f"{role} closed with {code} after {index} of {len(items)} answers")
                self.reopen(role)
                return
            if frame.opcode != OP_TEXT:
                raise Failure(f"{role} got a frame with opcode {frame.opcode}")
            obj = frame.json()
            kind = obj.get("type")
            if kind not in ("ok", "error"):
                self.report.events += 1
                if role == "patient" and kind == "call" and obj.get("state") == "ended":
                    closing_ok = True  # the clinician's end_call: close 1000 follows
                continue
            if barrier_ref is not None and obj.get("ref") == barrier_ref:
                if kind != "ok" or index != len(items):
                    raise Failure(f"{role}: barrier after {index} answers for {len(items)} messages")
                return
            if index >= len(items) or closing_ok:
                raise Failure(f"{role}: an answer more than messages sent ({kind} {obj.get('code')})")
            item = items[index]
            index += 1
            self.report.answers += 1
            self.check_answer(role, item, obj)
            if kind == "ok" and item.type == "leave" and role == "patient":
                closing_ok = True
            if kind == "ok" and item.type == "end_call" and role == "clinician":
                self.drain_patient_after_end_call()

    def check_answer(self, role: str, item: Item, obj: dict[str, Any]) -> None:
        if item.expect != "answer":
            raise Failure(f"{item.kind}: answered {obj.get('type')} where a close was due")
        if obj["type"] == "error":
            code = obj.get("code")
            self.report.answer_codes[str(code)] += 1
            if code not in ERROR_CODES or not isinstance(obj.get("message"), str):
                raise Failure(f"error code {code!r} not in the contract")
            if (code == "invalid") != isinstance(obj.get("field"), str):
                raise Failure("invalid without field, or field without invalid")
            if code in ("capacity", "unauthorized", "hello_required"):
                raise Failure(f"{code} after welcome")
        else:
            self.report.answer_codes["ok"] += 1
        if obj.get("ref") != item.ref:
            raise Failure(f"{role}: answer ref {obj.get('ref')!r}, request ref {item.ref!r} ({item.kind})")

    def drain_patient_after_end_call(self) -> None:
        patient = self.patient
        assert patient is not None
        code, frames = self._read_to_close(patient)
        self.report.events += len(frames)
        if code != 1000 or not any(f.get("type") == "call" and f.get("state") == "ended" for f in frames):
            raise Failure(f"end_call: patient closed with {code} after {[f.get('type') for f in frames]}")
        self.report.closes["1000"] += 1
        patient.close()
        self.new_patient()

    def reopen(self, role: str) -> None:
        if role == "patient":
            assert self.patient is not None
            self.patient.close()
            self.new_patient()
        else:
            # The clinician's connection ended: a refresh (R12). A new one takes the room.
            assert self.clinician is not None
            self.clinician.close()
            self.clinician = self.connect()
            self.clinician.hello({"type": "hello", "role": "clinician", "room": self.room,
                                  "token": clinician_token(DEVELOPMENT_SECRET, self.room)})
            self.report.reconnects += 1

    def drain(self, role: str) -> None:
        """A barrier on the other connection: only events may come before it."""
        client = self.clinician if role == "clinician" else self.patient
        assert client is not None
        barrier, ref = self.barrier_frame()
        client.send_bytes(barrier)
        while True:
            frame = client.recv(self.hang_s)
            if frame.opcode == OP_CLOSE:
                code = frame.close_code
                raise Failure(f"{role} closed with {code} while idle")
            obj = frame.json()
            if obj.get("ref") == ref:
                return
            if obj.get("type") in ("ok", "error"):
                raise Failure(f"{role}: an answer nobody asked for")
            self.report.events += 1
            if role == "patient" and obj.get("type") == "call" and obj.get("state") == "ended":
                code, _ = self._read_to_close(client)
                if code != 1000:
                    raise Failure(f"after call ended the patient was closed with {code}")
                self.report.closes["1000"] += 1
                self.reopen("patient")
                return

    # ------------------------------------------------------------------ hello phase

    def hello_probe(self) -> None:
        """A fresh connection whose first frame is fuzzed: welcome, or error and a close."""
        client = self.connect()
        try:
            r = self.rng
            if r.random() < 0.5:
                item = self.gen.item("patient", [])
                wire = item.wire
            else:
                hello: dict[str, Any] = {
                    "type": "hello", "role": r.choice(["patient", "clinician", "x"]),
                    "room": r.choice([self.room, "Bad Room", "", "x" * 65, self.room + "-b"]),
                    "name": r.choice(["P", "", "x" * 65, 5]), "token": r.choice(["0" * 64, 1]),
                }
                obj = self.gen.mutate(hello) if r.random() < 0.7 else hello
                item = Item(json_frame(obj) if not isinstance(obj, float) else json_frame(str(obj)), "answer")
                wire = item.wire
            client.send_bytes(wire)
            self.report.frames_sent += 1
            self.report.hello_probes += 1
            frame = client.recv(self.hang_s)
            if frame.opcode == OP_CLOSE:
                if item.expect != "close" or frame.close_code != item.close_code:
                    raise Failure(f"hello probe closed with {frame.close_code} ({item.kind})")
                self.report.closes[str(frame.close_code)] += 1
                return
            obj = frame.json()
            if obj.get("type") == "welcome":
                return
            if obj.get("type") != "error":
                raise Failure(f"hello probe answered {obj.get('type')}")
            code, _ = self._read_to_close(client)
            expected = 1013 if obj.get("code") == "capacity" else 1008
            if code != expected:
                raise Failure(f"hello error {obj.get('code')} closed with {code}")
            self.report.closes[str(code)] += 1
        finally:
            client.close()

    # ------------------------------------------------------------------ the run

    def step(self, n: int) -> None:
        role = "patient" if self.rng.random() < 0.5 else "clinician"
        self.run_batch(role)
        self.drain("clinician" if role == "patient" else "patient")
        if n % 200 == 199:
            self.hello_probe()
        if n % 500 == 499:
            self.replace_clinician()
        if n % 2000 == 1999:
            self.new_room()


def round_trip(server: ServerProcess) -> bool:
    """A clean chat both ways in a fresh room."""
    room = "fuzz-round-trip"
    clinician = SyncClient(server.url)
    patient = SyncClient(server.url)
    try:
        clinician.hello({"type": "hello", "role": "clinician", "room": room,
                         "token": clinician_token(DEVELOPMENT_SECRET, room)})
        welcome = patient.hello({"type": "hello", "role": "patient", "room": room, "name": "Round Trip"})
        patient.ok({"type": "send", "text": "hello after the fuzz"})
        events = clinician.barrier()
        got = [e for e in events if e.get("type") == "message"]
        clinician.ok({"type": "send", "patient": welcome["patient"], "text": "reply after the fuzz"})
        back = [e for e in patient.barrier() if e.get("type") == "message"]
        return (len(got) == 1 and got[0]["text"] == "hello after the fuzz"
                and len(back) == 1 and back[0]["text"] == "reply after the fuzz")
    finally:
        clinician.close()
        patient.close()


def run(frames: int, seed: int, *, hang_s: float = 10.0, batch: int = 48, quiet: bool = False,
        keep: Path | None = None) -> Report:
    report = Report(seed=seed, frames_target=frames, load_before=load_average())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qc-fuzz-") as tmp:
        server = ServerProcess(limits={"rate_per_s": None, "rate_burst": None}, log_level="info",
                               workdir=(keep or Path(tmp)) / "server")
        with server:
            fuzzer = Fuzzer(server, seed, report, hang_s, batch)
            fuzzer.new_room()
            step, last_print = 0, time.monotonic()
            while report.frames_sent < frames:
                if not server.alive():
                    report.crashes += 1
                    break
                try:
                    fuzzer.step(step)
                except WsTimeout:
                    report.hangs += 1
                    fuzzer.new_room()
                except (Failure, WsError, OSError, ValueError, KeyError) as error:
                    report.failures += 1
                    if len(report.failure_samples) < 20:
                        report.failure_samples.append(f"{type(error).__name__}: {error}"[:300])
                    if not server.alive():
                        report.crashes += 1
                        break
                    fuzzer.new_room()
                step += 1
                if not quiet and time.monotonic() - last_print > 10:
                    last_print = time.monotonic()
                    rate = report.frames_sent / (last_print - started)
                    print(f"  {report.frames_sent:>9} frames  {rate:7.0f}/s  failures {report.failures}"
                          f"  hangs {report.hangs}", flush=True)
            fuzzer.close_all()
            if server.alive():
                stats = server.stats()
                report.internal_errors = int(stats["internal_errors"])
                report.server_rss_mib_end = round(stats["rss"] / 2**20, 1)
                report.round_trip_ok = round_trip(server)
            report.server_exit_code = server.stop()
        assert server.stderr_path is not None
        log = server.stderr_path.read_text(errors="replace")
        logged_errors = log.count("internal_error") + log.count("Traceback")
        report.crashes += report.internal_errors + (logged_errors if report.internal_errors == 0 else 0)
        if report.server_exit_code not in (0, None):
            report.crashes += 1
    report.duration_s = round(time.monotonic() - started, 1)
    report.load_after = load_average()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=48, help="most frames in one batch before a barrier")
    parser.add_argument("--hang-s", type=float, default=10.0, help="a read waiting longer is a hang")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="keep the server's logs in this directory")
    args = parser.parse_args()
    report = run(args.frames, args.seed, hang_s=args.hang_s, batch=args.batch, quiet=args.quiet,
                 keep=args.keep)
    figures = report.as_dict()
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    clean = report.crashes == 0 and report.hangs == 0 and report.failures == 0 and report.round_trip_ok
    return 0 if clean else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
