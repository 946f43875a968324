"""Secure aggregation: the server learns only the weighted sum of the sites' updates (Flower's SecAgg+).

SecAgg+ (Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020;
SecAgg, Bonawitz et al., CCS 2017) masks each site's vector with pairwise and private masks that
cancel only in the sum; shares of the masks' seeds, spread among the sites, let the server remove
the masks of a site that drops out mid-round without seeing anyone's vector.

Flower 1.42 ships the protocol for its legacy API only: ``SecAggPlusWorkflow`` runs under a
``LegacyContext`` and asks a legacy strategy for ``FitIns`` and for ``aggregate_fit``, and
``secaggplus_mod`` reads the site's reply as a ``FitRes``. This module translates at both ends, so the
federation's own loop, strategies, checkpoint and record (:mod:`.server`) and the site's training
(:mod:`.client`) run unchanged:

* the server (:class:`SecureRound`) hands the messages its strategy configured to the workflow
  through :class:`_Relay`, a legacy strategy that only relays them and collects the sum;
* the site (:func:`secure_aggregation_mod`) turns the legacy ``FitIns`` back into the round's message
  and its reply into a ``FitRes`` carrying its *update* (trained minus received weights) and its
  figures, which ``secaggplus_mod`` then masks.

The site sends its update rather than its weights: SecAgg+ clips every value to ``clipping_range``
before quantizing it, and a round's change of a weight is small where the weights themselves are not
(StyleGAN2's equalized-learning-rate weights reach hundreds). An update beyond the range is refused by
the site, never clipped. The quantization step is ``2 * clipping_range / quantization_range`` per site
(3.8e-6 with Flower's defaults), so the mean differs from the plain weighted mean by at most
:func:`quantization_bound`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["SecureRound", "quantization_bound", "secure_aggregation_mod"]

#: Key of the round's config naming the arrays in the order the legacy ``Parameters`` list them.
_NAMES = "array-names"


def quantization_bound(options: Mapping[str, Any], num_examples: Iterable[int], max_weight: float) -> float:
    """The largest difference SecAgg+'s quantization can make to one averaged value in one round.

    Each site's weighted update is stochastically rounded to a step of ``2 * clipping_range /
    quantization_range``; the sum of those errors is divided by the sum of the weights
    ``num_examples / max_weight``.
    """
    sizes = list(num_examples)
    step = 2 * float(options["clipping_range"]) / int(options["quantization_range"])
    return len(sizes) * step / (sum(sizes) / max_weight)


class SecureRound:
    """Runs one round's training messages through Flower's ``SecAggPlusWorkflow``.

    Args:
        grid: the federation's grid.
        options: the settings' ``secure_aggregation`` (``num_shares``, ``reconstruction_threshold``,
            ``clipping_range``, ``quantization_range``).
        max_weight: SecAgg+'s ``max_weight``; the largest site's number of images, so every site's
            weight is at most 1 (no overflow) and the largest gets the full quantization range.
        timeout: seconds the workflow waits for each of its four exchanges.
    """

    def __init__(self, grid: Grid, options: Mapping[str, Any], max_weight: float, timeout: float):
        self.grid, self.max_weight = _Witness(grid), float(max_weight)
        self.workflow = SecAggPlusWorkflow(**dict(options), max_weight=self.max_weight, timeout=timeout)
        base = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
        self.relay = _Relay()
        self.context = LegacyContext(base, strategy=self.relay)

    def __call__(self, server_round: int, messages: Iterable[Message]) -> tuple[
            Message | None, dict[int, dict[str, Any]], dict[int, str]]:
        """Train the sites the ``messages`` address; returns one reply standing for all of them (the
        weighted mean of their weights, as ``arrays``, and their number of images, as ``metrics``;
        ``None`` when the protocol stopped), each contributing site's figures and each failed site's error.
        """
        messages = list(messages)
        if not messages:
            return None, {}, {}
        # one order of the arrays, whatever the strategy or the checkpoint gave: the sites' stochastic
        # rounding draws array by array, so a resumed federation rounds as the uninterrupted one
        received = messages[0].content["arrays"]
        arrays = ArrayRecord({name: received[name] for name in sorted(received.keys())})
        self.grid.errors.clear()
        self.relay.start(self.grid, messages, arrays)
        self.context.state.array_records[MAIN_PARAMS_RECORD] = arrays
        self.context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        self.workflow(self.grid, self.context)
        sampled = sorted(m.metadata.dst_node_id for m in messages)
        if self.relay.update is None:  # stopped mid-protocol: name the sites that failed, else nobody answered
            failed = {node: self.grid.errors[node] for node in sampled if node in self.grid.errors}
            return None, {}, failed or dict.fromkeys(sampled, "no reply")
        failed = {node: self.grid.errors.get(node, "no reply") for node in sampled if node not in self.relay.metrics}
        mean = {name: Array((array.numpy().astype(np.float64) + delta).astype(np.float32))
                for (name, array), delta in zip(arrays.items(), self.relay.update, strict=True)}
        total = sum(int(m["num-examples"]) for m in self.relay.metrics.values())
        reply = Message(RecordDict({"arrays": ArrayRecord(mean), "metrics": MetricRecord({"num-examples": total})}),
                        dst_node_id=0, message_type=messages[0].metadata.message_type)
        return reply, dict(self.relay.metrics), failed


class _Relay(LegacyFedAvg):
    """The legacy strategy ``SecAggPlusWorkflow`` asks: it sends the messages the federation's own
    strategy configured (its sampling and per-site config, FedProx's ``proximal-mu`` included) and
    keeps the sum the workflow unmasked; the federation's strategy does the server's step."""

    def __init__(self) -> None:
        super().__init__(fraction_evaluate=0.0)
        self.instructions: list[tuple[ClientProxy, FitIns]] = []
        self.update: list[np.ndarray] | None = None
        self.metrics: dict[int, dict[str, Any]] = {}

    def start(self, grid: Grid, messages: list[Message], arrays: ArrayRecord) -> None:
        """Turn the round's ``messages`` into ``FitIns`` carrying ``arrays`` (their weights, in the order
        the sites' updates will come back in)."""
        self.update, self.metrics, self.instructions = None, {}, []
        parameters = compat.arrayrecord_to_parameters(arrays, keep_input=True)
        names = json.dumps(list(arrays.keys()))
        for message in messages:
            config = {**dict(message.content["config"]), _NAMES: names}
            proxy = GridClientProxy(message.metadata.dst_node_id, grid, grid.run.run_id)
            self.instructions.append((proxy, FitIns(parameters, config)))

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return list(self.instructions)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Any]]:
        # every FitRes carries the same unmasked mean update (the workflow's doing); the figures are each site's
        self.metrics = {proxy.node_id: {**res.metrics, "num-examples": res.num_examples} for proxy, res in results}
        if results:
            self.update = parameters_to_ndarrays(results[0][1].parameters)
        return (results[0][1].parameters if results else None), {}


class _Witness(Grid):
    """The federation's grid, noting each node's last error reply: the workflow keeps errors without
    saying whose, and the record names the sites that dropped out."""

    def __init__(self, grid: Grid):
        self.inner, self.errors = grid, {}

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._note(self.inner.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self._note(self.inner.send_and_receive(messages, timeout=timeout))

    def _note(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        self.errors.update({r.metadata.src_node_id: r.error.reason for r in replies if r.has_error()})
        return replies


def secure_aggregation_mod(message: Message, context: Context, call_next: Any) -> Message:
    """The site's Flower mod: SecAgg+ messages go through ``secaggplus_mod``, the site's training seeing
    the round's usual message; every other message passes untouched."""
    if RECORD_KEY_CONFIGS not in message.content.config_records:
        return call_next(message, context)
    return secaggplus_mod(message, context, lambda msg, ctx: _train_update(msg, ctx, call_next))


def _train_update(message: Message, context: Context, call_next: Any) -> Message:
    """Stage "collect masked vectors": train as any round, reply with the update as a ``FitRes``."""
    config = message.content.config_records["fitins.config"]
    names = json.loads(str(config[_NAMES]))
    received = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
        message.content.array_records["fitins.parameters"], keep_input=True))
    received = dict(zip(names, received, strict=True))
    settings = json.loads(str(config["federation"]))
    message.content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in received.items()}),
                                  "config": ConfigRecord({k: v for k, v in config.items() if k != _NAMES})})
    reply = call_next(message, context)
    trained = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    if set(trained) != set(names):
        raise ValueError(f"the site's weights hold {sorted(set(trained) ^ set(names))[:3]} where the server's do not: "
                         "every site must run the federation's generator settings")
    update = [trained[k].astype(np.float64) - received[k].astype(np.float64) for k in names]
    _check_range(names, update, float(settings["secure_aggregation"]["clipping_range"]))
    figures = dict(reply.content["metrics"])
    reply.content = compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update),
                                                       int(figures["num-examples"]), figures), keep_input=False)
    return reply


def _check_range(names: list[str], update: list[np.ndarray], clipping_range: float) -> None:
    """Refuse an update SecAgg+ would clip (or could not quantize): a silently damaged global model is worse."""
    for name, values in zip(names, update, strict=True):
        if not np.isfinite(values).all():
            raise ValueError(f"the site's update of {name} is not finite: its training diverged")
        largest = float(np.abs(values).max(initial=0.0))
        if largest > clipping_range:
            raise ValueError(f"the site's update of {name} reaches {largest:.3g}, beyond secure_aggregation's "
                             f"clipping_range {clipping_range:g}: raise clipping_range or lower the learning rate")
