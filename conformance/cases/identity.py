"""Roles and identity: clinician tokens, one clinician per room, patient ids, patients see only themselves."""

from __future__ import annotations

from typing import Any

from .._context import CaseContext
from .._expect import error, patient_joined, patient_welcome, position
from .._registry import group
from ._steps import clinician_writes, leave, patient_writes, replaced_console

case = group("identity")


@case(
    "identity.wrong-token-unauthorized",
    "A clinician hello with a wrong token answers unauthorized and closes with 1008",
)
async def wrong_token(t: CaseContext) -> None:
    """A clinician says hello with another room's token: error{unauthorized} and a 1008 close."""
    room = t.room()
    x = await t.connect("X")
    await t.request(
        x,
        {"type": "hello", "role": "clinician", "room": room, "token": t.token(room + "-other")},
        ref=False,
        answer=error("unauthorized"),
        close=1008,
        title="X: clinician hello with another room's token",
    )


@case(
    "identity.clinician-replaced-4000",
    "A new clinician hello for a room closes the older connection with 4000",
)
async def clinician_replaced(t: CaseContext) -> None:
    """C is welcomed; C2 says hello for the same room: C2 is welcomed, C is closed with 4000."""
    (c,) = await t.setup()
    room = c.welcome.get("room", "")
    await t.clinician(room, "C2", events={c: replaced_console()},
                      lenient=[c])


@case(
    "identity.patient-welcome",
    "A patient hello checks in: welcome{patient, position, provider_status, "
    "patient_initiated_chat}; the clinician gets patient_joined with the name",
)
async def patient_welcome_case(t: CaseContext) -> None:
    """With C connected, A and B check in: welcomes with distinct ids, positions 1 and 2, online, true; C gets
    patient_joined{id, name, position, joined_at} for each."""
    room = t.room()
    c = await t.clinician(room)
    ids: list[str] = []
    for n, label in enumerate(("A", "B"), 1):
        conn = await t.connect(label)
        await t.request(
            conn,
            {"type": "hello", "role": "patient", "room": room, "name": t.name(label)},
            ref=False,
            answer=patient_welcome(position=n, provider_status="online", patient_initiated_chat=True),
            events={c: [patient_joined(conn, name=t.name(label), position=n)]},
            title=f"{label} checks in",
        )
        ids.append(conn.pid)
    t.check(ids[0] != ids[1], "two patients were given the same id")
    # The contract asks for at least 128 random bits in a string, of any shape. Only an id of fewer than
    # 16 bytes (in UTF-8) certainly cannot hold them; any longer id may, whatever its alphabet.
    short = [pid for pid in ids if len(pid.encode("utf-8", "surrogatepass")) < 16]
    if short:
        t.departure(
            f"a patient id of {len(short[0].encode('utf-8', 'surrogatepass'))} bytes: too short to hold the "
            "128 random bits the contract asks for"
        )


@case(
    "identity.other-patients-invisible",
    "No frame to a patient carries another patient's id or name",
    checks=("R1", "R3", "R10", "R30", "R11"),
)
async def other_patients_invisible(t: CaseContext) -> None:
    """B checks in, then A; B writes, C answers B, B leaves: A gets only position 1. No frame A received
    carries B's id or name."""
    room = t.room()
    c = await t.clinician(room)
    b = await t.patient(room, "B", clinician=c)
    a = await t.patient(room, "A", clinician=c)
    await patient_writes(t, b, c, id=1, badge=1)
    await clinician_writes(t, c, b, id=2)
    await leave(t, b, c, others={a: [position(1)]})
    secrets = {b.pid, t.name("B")}
    for frame in a.history:
        if _mentions(frame, secrets):
            t.fail(f"a {frame.get('type')} frame sent to A carries B's id or name")


def _mentions(value: Any, needles: set[str]) -> bool:
    if isinstance(value, dict):
        return any(_mentions(v, needles) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, needles) for v in value)
    return isinstance(value, str) and any(n in value for n in needles)
