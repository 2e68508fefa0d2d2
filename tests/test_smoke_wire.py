"""A first round trip over a real socket: message, badge and notify (R1, R3, R10)."""

from wire import LiveServer, frame_types


async def test_R1_patient_message_reaches_clinician_with_badge_and_notify(
    live: LiveServer, room: str
) -> None:
    async with live.clinician(room) as clinician, live.patient(room) as patient:
        joined = await clinician.recv()
        assert joined["type"] == "patient_joined"
        _, ok = await patient.ok({"type": "send", "text": "hello there", "client_ts": 12.5})
        events = await clinician.barrier()
        assert frame_types(events) == ["message", "unread", "notify"]
        message = events[0]
        assert message["id"] == ok["id"] == 1
        assert message["text"] == "hello there"
        assert message["client_ts"] == 12.5
        assert message["from"] == "patient"
        assert events[1] == {"type": "unread", "patient": patient.patient_id, "count": 1}
