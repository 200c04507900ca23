"""The alert rules in examples/monitoring are checked and unit-tested by the real promtool.

promtool comes from scripts/provide-promtool.sh (built from the Go module proxy, cached);
scripts/test.sh exports PROMTOOL_BIN. With CI set, a missing promtool fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import errors, gate_reasons

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "monitoring" / "prometheus-rules.yaml"
CHART_RULES = ROOT / "charts" / "katalog-sidecar" / "files" / "prometheus-rules.yaml"  # prometheusRule.enabled
UNIT_TESTS = Path(__file__).resolve().parent / "alert_rules_test.yaml"
RULE_FILE_NAME = "katalog-sidecar.rules.yaml"  # what alert_rules_test.yaml names
PROVIDER = ROOT / "scripts" / "provide-promtool.sh"
# katalog_consul_errors_total's kinds, as sidecar.metrics.Metrics.consul_error names them.
CONSUL_ERROR_KINDS = {c.__name__.removeprefix("Consul").lower() for c in vars(errors).values()
                      if isinstance(c, type) and issubclass(c, errors.ConsulError) and c is not errors.ConsulError}


def _cached_promtool() -> Path:
    text = PROVIDER.read_text()
    version = re.search(r'KATALOG_PROMETHEUS_VERSION:-([0-9.]+)', text)
    recipe = re.search(r'^RECIPE=([0-9]+)$', text, re.MULTILINE)
    assert version is not None and recipe is not None
    cache = os.environ.get("KATALOG_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "katalog-sidecar")
    return Path(cache) / f"promtool-{version.group(1)}-r{recipe.group(1)}" / "promtool"


@pytest.fixture(scope="module")
def promtool() -> str:
    for candidate in (os.environ.get("PROMTOOL_BIN"), shutil.which("promtool"), str(_cached_promtool())):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "no promtool binary: run scripts/provide-promtool.sh or set PROMTOOL_BIN"
    if os.environ.get("CI"):
        pytest.fail(message + " (these tests may not be skipped in CI)")
    pytest.skip(message)


def _rule_groups() -> dict[str, Any]:
    doc = yaml.safe_load(RULES.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    return dict(doc["spec"])


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _rule_groups()["groups"] for rule in group["rules"] if "alert" in rule]


def _workdir(tmp_path: Path, groups: dict[str, Any]) -> Path:
    """The PrometheusRule's spec as a plain rule file, next to a copy of the unit tests."""
    (tmp_path / RULE_FILE_NAME).write_text(yaml.safe_dump(groups, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return tmp_path


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool: str, tmp_path: Path) -> None:
    work = _workdir(tmp_path, _rule_groups())
    result = _promtool(promtool, "check", "rules", RULE_FILE_NAME, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str, tmp_path: Path) -> None:
    work = _workdir(tmp_path, _rule_groups())
    result = _promtool(promtool, "test", "rules", UNIT_TESTS.name, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("alert", "field", "value"), [
    ("KatalogGateHeld", "for", "20m"),  # would not fire at 12 minutes
    ("KatalogGateHeld", "expr", "max by (namespace, pod) (katalog_gate_open == 0)"),  # web-b (app) would fire
    ("KatalogGateFailedOpen", "expr", "max by (namespace, pod) (katalog_gate_failed_open) >= 0"),  # web-b would fire
    ("KatalogSidecarWorkersRestarting", "expr",
     "sum by (namespace, pod, worker) (increase(katalog_worker_restarts_total[15m])) > 0"),  # one restart would fire
    ("KatalogSidecarConsulFault", "for", "1m"),  # web-b's 3-minute agent restart would fire
    ("KatalogSidecarConsulErrors", "expr",
     "sum by (namespace, pod, kind) (rate(katalog_consul_errors_total[5m])) > 0"),  # 404s would fire
])
def test_the_unit_tests_fail_for_a_broken_rule(promtool: str, tmp_path: Path, alert: str, field: str,
                                               value: str) -> None:
    """The unit tests can fail: each of these edits breaks one firing or one non-firing case."""
    groups = _rule_groups()
    rule = next(r for g in groups["groups"] for r in g["rules"] if r.get("alert") == alert)
    rule[field] = value
    result = _promtool(promtool, "test", "rules", UNIT_TESTS.name, cwd=_workdir(tmp_path, groups))
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case_and_a_runbook() -> None:
    cases: dict[str, list[int]] = {}
    for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test") or []:
            cases.setdefault(case["alertname"], []).append(len(case.get("exp_alerts") or []))
    readme = (ROOT / "README.md").read_text()
    for alert in _alerts():
        name = alert["alert"]
        assert 0 in cases.get(name, []), f"{name}: no case where it must not fire"
        assert any(cases.get(name, [])), f"{name}: no case where it fires"
        assert alert["annotations"]["runbook"] == f"README.md#{name.lower()}"
        assert re.search(rf"^#### {name}$", readme, re.M), f"README has no runbook section for {name}"


def test_the_rules_use_only_labels_the_sidecar_exports() -> None:
    """The closed reasons and error kinds in the rules are ones sidecar.gate_metrics and metrics emit."""
    text = RULES.read_text()
    reasons = {v for match in re.findall(r'reason=~"([^"]+)"', text) for v in match.split("|")}
    kinds = {v for match in re.findall(r'kind=~"([^"]+)"', text) for v in match.split("|")}
    assert reasons and reasons <= set(gate_reasons.CLOSED_REASONS), reasons - set(gate_reasons.CLOSED_REASONS)
    assert kinds and kinds <= CONSUL_ERROR_KINDS, kinds - CONSUL_ERROR_KINDS


# -- the chart's PrometheusRule (prometheusRule.enabled): the example's rules, one source ---------


def test_the_charts_rule_file_is_the_example() -> None:
    assert CHART_RULES.read_bytes() == RULES.read_bytes(), (
        "the chart's copy differs: cp examples/monitoring/prometheus-rules.yaml charts/katalog-sidecar/files/")


def test_the_chart_renders_the_examples_rules_and_promtool_passes_them(helm_bin: str, promtool: str,
                                                                       tmp_path: Path) -> None:
    """What Helm renders (not only the file it reads): the same groups, checked and unit-tested."""
    from test_kube_real_helm import render

    assert not [d for d in render(helm_bin, tmp_path) if d["kind"] == "PrometheusRule"]  # off by default
    docs = render(helm_bin, tmp_path, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=prom")
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert (rule["apiVersion"], rule["metadata"]["namespace"]) == ("monitoring.coreos.com/v1", "katalog-system")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == _rule_groups()
    work = _workdir(tmp_path, rule["spec"])
    checked = _promtool(promtool, "check", "rules", RULE_FILE_NAME, cwd=work)
    assert checked.returncode == 0 and f"SUCCESS: {len(_alerts())} rules found" in checked.stdout + checked.stderr, \
        checked.stdout + checked.stderr
    tested = _promtool(promtool, "test", "rules", UNIT_TESTS.name, cwd=work)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
