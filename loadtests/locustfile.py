"""The queue-chat load test, for Locust.

    locust -f loadtests/locustfile.py --host ws://127.0.0.1:8765/v1/ws

with the web UI, or headless (``--headless -u 10 -r 10 -t 30s``). Each user
is one waiting room: a clinician and its patients (``--qc-patients``), all
in this process so that both ends of a message are timed on one clock.
Messages go out on a schedule (``--qc-rate`` per user, open model). See
``locust --help`` for every ``--qc-*`` option, and the README's "Load tests"
section for ``queuechat load``, which runs this file against the reference
server and gates on SLOs.
"""

import loadtests._plugin  # noqa: F401  # registers the options and event listeners
from loadtests._users import QueueChatUser, RoomClient, RoomUser

__all__ = ["QueueChatUser", "RoomClient", "RoomUser"]
