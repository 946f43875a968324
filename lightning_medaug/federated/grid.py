"""An in-process Flower ``Grid``: the server's messages delivered to the sites' ``ClientApp`` in one process.

Flower's simulation engine runs each ``ClientApp`` in a Ray actor; Ray adds a heavy dependency and
seconds of start-up per run, more than a two-site test of a tiny generator takes to train. This grid
is the same contract (``flwr.serverapp.Grid``) with the transport left out: the real ``ServerApp``
and ``ClientApp`` and Flower's real strategies run unchanged, each site with its own ``Context``
(node config, state) kept across rounds, one site after the other, every message and reply passed as a
copy through Flower's wire format (a site changing what it received, as ``secaggplus_mod`` pops its
stage, must not change what the next site gets, nor the server's own). A site's exception becomes an
error reply, as Flower's runtimes make it, so a site that fails mid-round reaches the strategy as a
failure. The deployment engine (SuperLink and SuperNodes, ``docs/federated.md``) runs the same apps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["InProcessGrid"]

#: Error code of a reply whose site raised (Flower's ``ErrorCode.CLIENT_APP_RAISED_EXCEPTION``).
_CLIENT_APP_RAISED = 2
#: Node ids of the sites: Flower reserves 1 for the SuperLink (the sender of the server's messages).
_FIRST_NODE_ID = 1001


class InProcessGrid(Grid):
    """Delivers messages to ``client_app`` for one node per node config (ids from 1001), in this process.

    Args:
        client_app: the sites' ``ClientApp``.
        node_configs: one Flower node config per site (``partition-id``, ``site-dir``...).
        run_config: the run config every ``Context`` holds.
    """

    def __init__(self, client_app: ClientApp, node_configs: Iterable[Mapping[str, Any]],
                 run_config: Mapping[str, Any] | None = None):
        self.client_app = client_app
        self._run = Run.create_empty(run_id=1)
        # who is sending: Flower's runtimes set this for the ServerApp's process before it builds messages
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self.contexts = {node_id: Context(run_id=1, node_id=node_id, node_config=dict(config), state=RecordDict(),
                                          run_config=dict(run_config or {}))
                         for node_id, config in enumerate(node_configs, start=_FIRST_NODE_ID)}
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's own grids number messages
            ids.append(message.metadata.message_id)
            self._replies[message.metadata.message_id] = self._deliver(message)
        return ids

    def _deliver(self, message: Message) -> Message:
        context = self.contexts.get(message.metadata.dst_node_id)
        if context is None:
            return Message(Error(_CLIENT_APP_RAISED, f"no node {message.metadata.dst_node_id}"), reply_to=message)
        try:
            return _copy(self.client_app(_copy(message), context))
        except Exception as err:  # a failing site is a failed reply, not a failed federation
            return Message(Error(_CLIENT_APP_RAISED, f"{type(err).__name__}: {err}"), reply_to=message)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _copy(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))
