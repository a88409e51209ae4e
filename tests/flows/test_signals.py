"""Rule-based signals: the Slips port-scan logs raise fan-out, hand-made flows the rest."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from flowdata import DATA, flow, make_flows

from netsentry.detect.base import StateMismatchError
from netsentry.flows.schema import Flows
from netsentry.flows.signals import FlowSignals, Signal
from netsentry.flows.zeek import read_zeek
from netsentry.store.sqlite import decode_state, encode_state


def log(name: str) -> Flows:
    return Flows.concat(list(read_zeek(DATA / name)))


def kinds(signals: list[Signal]) -> Counter[str]:
    return Counter(s.kind for s in signals)


def fan_outs(signals: list[Signal]) -> list[Signal]:
    return [s for s in signals if s.kind.startswith("fan_out")]


def test_horizontal_scan_fans_out_to_many_destinations():
    signals = FlowSignals().update(log("slips-portscan-horizontal.conn.log"))
    [hit] = fan_outs(signals)
    assert hit.kind == "fan_out_destinations"
    assert hit.tags == {"src": "10.0.2.112", "proto": "tcp", "dstp": "80"}
    assert hit.explanation["shape"] == "horizontal scan"
    assert hit.explanation["distinct"] == 24 and hit.explanation["threshold"] == 20
    assert hit.explanation["window_start"] == 900 * 10**9  # ts 928.9 s .. 960.9 s
    assert len(hit.explanation["examples"]) == 5
    # the 20th distinct destination of that window, first contacted at ts 958.115731
    assert hit.time == 958_115_731_000


def test_vertical_scan_fans_out_to_many_ports():
    signals = FlowSignals().update(log("slips-portscan-vertical.conn.log"))
    [hit] = fan_outs(signals)
    assert hit.kind == "fan_out_ports"
    assert hit.tags == {"src": "192.168.1.9", "proto": "tcp", "dst": "45.33.32.156"}
    assert hit.explanation["shape"] == "vertical scan"
    assert hit.explanation["distinct"] == 44
    assert hit.explanation["examples"][:2] == ["80", "443"]


@pytest.mark.parametrize(("threshold", "hits"), [(24, 1), (25, 0)])
def test_thresholds_are_configurable(threshold, hits):
    signals = FlowSignals(max_destinations=threshold).update(
        log("slips-portscan-horizontal.conn.log")
    )
    assert len(fan_outs(signals)) == hits


def test_the_remcos_capture_has_no_scan_and_unanswered_only_spares_clients():
    assert fan_outs(FlowSignals().update(log("slips-test18.conn.log.labeled"))) == []
    # of the horizontal scan's 24 destinations only 9 went unanswered
    quiet = FlowSignals(unanswered_only=True)
    assert fan_outs(quiet.update(log("slips-portscan-horizontal.conn.log"))) == []
    loud = FlowSignals(unanswered_only=True, max_destinations=9)
    assert len(fan_outs(loud.update(log("slips-portscan-horizontal.conn.log")))) == 1


def test_unordered_chunks_give_the_same_fan_out():
    flows = log("slips-portscan-vertical.conn.log").frame
    rows = list(range(flows.height))
    random.Random(7).shuffle(rows)
    signals = FlowSignals(lateness_s=60)
    out = []
    for i in range(0, len(rows), 7):
        out += signals.update(Flows(flows[rows[i : i + 7]]))
    [hit] = fan_outs(out)
    assert hit.kind == "fan_out_ports" and hit.explanation["distinct"] >= 20
    assert signals.late_ == 0


def test_flows_for_a_closed_window_are_late():
    signals = FlowSignals(window_s=60, lateness_s=30, max_ports=2)
    signals.update(make_flows([flow(0, dstp=1), flow(200, dstp=2)]))
    assert signals.update(make_flows([flow(10, dstp=3)])) == []  # window [0, 60) closed
    assert signals.late_ == 1
    hit = signals.update(make_flows([flow(210, dstp=3)]))
    assert [s.kind for s in hit] == ["fan_out_ports"]


def test_new_conversations_after_the_baseline():
    signals = FlowSignals(baseline_s=100)
    assert signals.update(make_flows([flow(0), flow(50, dst="10.0.0.3")])) == []
    got = signals.update(
        make_flows([flow(150), flow(160, dst="10.0.0.4"), flow(170, dst="10.0.0.4")])
    )
    assert [(s.kind, s.time, s.tags["dst"]) for s in got] == [
        ("new_conversation", 160 * 10**9, "10.0.0.4")
    ]
    assert got[0].tags == {"src": "10.0.0.1", "dst": "10.0.0.4", "dstp": "443", "proto": "tcp"}
    assert got[0].explanation["flows"] == 2
    # a service the sensor could not tell first is the same conversation here
    assert signals.update(make_flows([flow(180, dst="10.0.0.4", service="")])) == []


def test_new_server_port_on_a_known_server():
    signals = FlowSignals(baseline_s=0)
    first = signals.update(make_flows([flow(0, dstp=443), flow(5, dstp=22, state="REJ")]))
    assert kinds(first) == {"new_conversation": 2}  # a refused port is not served
    got = signals.update(
        make_flows([flow(10, src="10.0.0.7", dstp=8443), flow(20, dst="10.0.0.8", dstp=80)])
    )
    [port] = [s for s in got if s.kind == "new_server_port"]
    assert port.tags == {"dst": "10.0.0.2", "dstp": "8443", "proto": "tcp"}
    assert port.time == 10 * 10**9
    assert port.explanation["client"] == "10.0.0.7"
    assert port.explanation["known_ports"] == ["443/tcp"]
    # 10.0.0.8 is a new server altogether: a new conversation, no new port
    assert kinds(got) == {"new_conversation": 2, "new_server_port": 1}


def test_state_round_trip():
    rows = log("slips-portscan-vertical.conn.log").frame.sort("start")
    whole = FlowSignals(baseline_s=0, lateness_s=1)
    expected = whole.update(Flows(rows[:25])) + whole.update(Flows(rows[25:]))
    first = FlowSignals(baseline_s=0, lateness_s=1)
    got = first.update(Flows(rows[:25]))
    second = FlowSignals(baseline_s=0, lateness_s=1)
    second.load_state(decode_state(encode_state(first.state_dict())))
    got += second.update(Flows(rows[25:]))
    assert got == expected and kinds(got)["fan_out_ports"] == 1
    with pytest.raises(StateMismatchError):
        FlowSignals(max_ports=5).load_state(first.state_dict())


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="at least 2"):
        FlowSignals(max_ports=1)
    with pytest.raises(ValueError, match="window_s"):
        FlowSignals(window_s=0)


def storms(signals: list[Signal]) -> list[Signal]:
    return [s for s in signals if s.kind == "unanswered_storm"]


def test_the_remcos_command_and_control_retries_are_an_unanswered_storm():
    found = storms(FlowSignals().update(log("slips-test18.conn.log.labeled")))
    assert {(s.tags["src"], s.tags["dst"], s.tags["dstp"]) for s in found} == {
        ("192.168.1.107", "66.63.168.35", "5888")
    }
    assert len(found) == 9  # one per minute of the 8.3-minute capture
    assert sum(s.explanation["unanswered"] for s in found) == 719  # every labelled C2 flow
    for name in (
        "iot23-honeypot-4-1.conn.log.labeled",
        "slips-portscan-horizontal.conn.log",
        "slips-portscan-vertical.conn.log",
    ):
        assert storms(FlowSignals().update(log(name))) == [], name


def test_answered_flows_never_make_a_storm_and_the_threshold_is_exact():
    refused = [flow(i, state="S0", packets_in=0, bytes_in=0) for i in range(30)]
    answered = [flow(i + 0.5) for i in range(100)]
    assert len(storms(FlowSignals().update(make_flows(refused[:29] + answered)))) == 0
    hit = storms(FlowSignals().update(make_flows(refused + answered)))
    assert len(hit) == 1 and hit[0].explanation["unanswered"] == 30 and hit[0].time == 0
    with pytest.raises(ValueError, match="at least 2"):
        FlowSignals(max_unanswered=1)
