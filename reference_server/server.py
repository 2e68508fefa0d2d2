"""The Trio + trio-websocket server. Importing this module imports Trio."""

from ._logging import configure_logging, get_logger
from ._shell import QueueChatServer, ServerStatistics, new_patient_id

__all__ = ["QueueChatServer", "ServerStatistics", "configure_logging", "get_logger", "new_patient_id"]
