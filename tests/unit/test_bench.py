"""The benchmark runs and reports (its numbers are not asserted: machines are noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def test_quick_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "sockwork", "bench", "--quick", "--workloads", "short,udp",
         "--implementations", "legacy,pool,prefork", "--warmup", "0.2", "--duration", "0.2", "--json", str(out)],
        capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout
    for row in ("socketserver.ThreadingTCPServer", "sockwork.socketserver.ThreadingUDPServer",
                "sockwork `pool`", "sockwork `prefork`", "sockwork Server (thread)"):
        assert f"| {row} |" in table, table
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["workload"], r["implementation"]) for r in rows] == [
        (w, i) for w in ("short", "udp") for i in ("stdlib", "legacy", "pool", "prefork")]
    for row in rows:
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["cpu_us_per_request"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert set(report["shutdown_ms"]) == {"stdlib", "sockwork"}
