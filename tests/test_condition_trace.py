"""bench/condition_trace.py reads the kubelet's klog and the container runtime's log timestamps on
the host's one clock; these parsers decide every figure it prints (the real-node run itself is
too heavy for the suite: `python -m bench.condition_trace`)."""

from __future__ import annotations

from datetime import datetime, timezone

from bench.condition_trace import RELIST, parse_klog, rfc3339, summary

KLOG = """\
I1207 03:44:22.633412    4242 kubelet.go:1909] "SyncPod enter" pod="default/web-1" podUID="u1"
I1207 03:44:22.262001    4242 prober.go:120] "Probe failed" probeType="Readiness" pod="default/web-1" output=<
\tno status file at /run/katalog/status.json
 >
not a klog line
I1207 03:44:23.633500    4242 generic.go:240] "GenericPLEG: Relisting"
"""


def test_klog_entries_with_their_time_source_and_continuation_lines() -> None:
    entries = list(parse_klog(KLOG, 2026))
    assert [src for _t, src, _m in entries] == ["kubelet.go:1909", "prober.go:120", "generic.go:240"]
    start = datetime(2026, 12, 7, 3, 44, 22, 633412, tzinfo=timezone.utc).timestamp()
    assert abs(entries[0][0] - start) < 1e-6
    assert entries[1][2].endswith("output=< no status file at /run/katalog/status.json >")
    assert RELIST in entries[2][2]
    assert abs(entries[2][0] - entries[0][0] - 1.000088) < 1e-6


def test_runtime_timestamps_keep_sub_millisecond_precision() -> None:
    at = rfc3339("2026-12-07T03:44:22.123456789Z")
    assert abs(at - datetime(2026, 12, 7, 3, 44, 22, 123457, tzinfo=timezone.utc).timestamp()) < 1e-6


def test_a_pod_summary_has_conditions_and_container_readiness() -> None:
    pod = {"metadata": {"name": "web-1", "resourceVersion": "7"}, "spec": {"nodeName": "127.0.0.2"},
           "status": {"conditions": [{"type": "Ready", "status": "False"}],
                      "containerStatuses": [{"name": "web", "ready": True}, {"name": "katalog-sidecar"}]}}
    assert summary(pod) == {"name": "web-1", "rv": "7", "node": "127.0.0.2", "deleting": False,
                            "conditions": {"Ready": "False"}, "ready": {"web": True, "katalog-sidecar": False}}
