"""mimo_synapse: asyncio client of the Synapse gateway (Phoenix Channels V2).

    async with MimoSynapse("ws://127.0.0.1:4000", api_key=KEY) as syn:
        handle = syn.query("what do I know about the sky?")
        async for thought in handle:
            print(thought.type, thought.content)
        print((await handle.result()).data)
"""
from .client import MimoSynapse, Subscription
from .errors import (AuthenticationError, ClientClosedError, ConnectError, DisconnectedError, RateLimitedError,
                     ReplyError, RequestTimeout, RunError, RunInterrupted, SynapseError)
from .handles import AttachedRun, QueryHandle, RunEvent, RunHandle, ToolHandle
from .models import Message, Progress, Result, RunInfo, Snapshot, Thought, Token, ToolInfo
from .presence import PresenceState, sync_diff, sync_state
from .worker import AgentError, AgentRun, AgentWorker, Final, ProgressUpdate

__version__ = "0.1.0"

__all__ = [
    "MimoSynapse", "Subscription", "QueryHandle", "ToolHandle", "RunHandle", "AttachedRun", "RunEvent",
    "Thought", "Progress", "Token", "Snapshot", "RunInfo", "Result", "Message", "ToolInfo", "PresenceState", "sync_state", "sync_diff",
    "SynapseError", "ConnectError", "AuthenticationError", "ReplyError", "RateLimitedError", "RunError",
    "RunInterrupted", "DisconnectedError", "RequestTimeout", "ClientClosedError", "__version__",
    "AgentWorker", "AgentRun", "AgentError", "Final", "ProgressUpdate",
]
