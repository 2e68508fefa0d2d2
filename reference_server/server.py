"""The Trio + trio-websocket server. Importing this module imports Trio."""

from ._shell import QueueChatServer, ServerStatistics, new_patient_id

__all__ = ["QueueChatServer", "ServerStatistics", "new_patient_id"]
