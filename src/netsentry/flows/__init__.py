"""Flow telemetry: sensors' flow records in, conversation series and signals out.

* :mod:`~netsentry.flows.schema`: the flow record (:class:`Flows`) and the ingest
  report (:class:`FlowReport`);
* :mod:`~netsentry.flows.suricata`, :mod:`~netsentry.flows.zeek`: streaming parsers of
  Suricata EVE JSON and Zeek conn.log;
* :mod:`~netsentry.flows.conversations`: per-interval measurements per conversation,
  as :class:`~netsentry.model.Batch` rows for the detectors;
* :mod:`~netsentry.flows.features`: the seed's learning features per flow;
* :mod:`~netsentry.flows.signals`: rule-based signals (new conversation, new server
  port, fan-out).
"""

from netsentry.flows.conversations import ConversationSeries, conversations
from netsentry.flows.features import flow_features
from netsentry.flows.schema import FLOW_SCHEMA, FlowReport, Flows
from netsentry.flows.signals import FlowSignals, Signal
from netsentry.flows.suricata import read_eve
from netsentry.flows.zeek import read_zeek

__all__ = [
    "FLOW_SCHEMA",
    "ConversationSeries",
    "FlowReport",
    "FlowSignals",
    "Flows",
    "Signal",
    "conversations",
    "flow_features",
    "read_eve",
    "read_zeek",
]
