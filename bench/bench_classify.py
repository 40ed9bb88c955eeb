"""Classification speed with 1,000 rules: median and p99 microseconds per alert.

Builds a realistic rule set in a temporary directory (most rules select one alertname by
equality plus another label, some select alertnames by regex, a few select by other labels
only, a few continue), loads it through the normal loader, and classifies a stream of
alerts: mostly known alertnames, some only a regex rule knows, some no rule knows. Run it as
``.venv/bin/python bench/bench_classify.py``. Target: median below 50 us on one core.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from responder.classify import Classifier, load_classifier
from responder.yamlfile import load_text

RULES = 1000
ALERTS = 20_000
SEED = 7
SEVERITIES = ["critical", "warning", "info"]
TEAMS = [f"team{i}" for i in range(20)]
NAMESPACES = ["prod-shop", "prod-pay", "staging-shop", "kube-system", "monitoring"]


def build_rules(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """YAML for RULES rules; also the alertnames and regex prefixes used."""
    lines = ["rules:"]
    names = [f"Service{i}Alert" for i in range(420)]
    prefixes = [f"Legacy{i}" for i in range(60)]
    count = 0

    def rule(matchers: list[str], extra: str) -> None:
        nonlocal count
        lines.append(f"  - name: rule-{count}")
        lines.append("    matchers:")
        lines.extend(f"      - '{m}'" for m in matchers)
        lines.append(extra)
        count += 1

    for name in names:  # 840 rules: a critical and a general variant per alertname
        other = rng.choice(
            ['namespace=~"prod-.*"', f'team="{rng.choice(TEAMS)}"', 'env!="staging"']
        )
        rule([f'alertname="{name}"', 'severity="critical"', other], "    severity: P1")
        rule([f'alertname="{name}"'], "    impact: low\n    urgency: high")
    for prefix in prefixes:  # 120 regex rules on alertname
        rule([f'alertname=~"{prefix}.*"', 'severity=~"critical|error"'], "    severity: P0")
        rule([f'alertname=~"{prefix}(Down|Failed)"'], "    severity: P2")
    for i in range(20):  # continue rules that tag
        rule(
            [f'team="{TEAMS[i]}"'],
            f"    labels: {{owner: {TEAMS[i]}}}\n    continue: true",
        )
    while count < RULES:  # label-only rules
        rule(
            [f'team="{rng.choice(TEAMS)}"', f'job=~"job{rng.randrange(50)}|exporter.*"'],
            "    category: performance",
        )
    return "\n".join(lines) + "\n", names, prefixes


def build_alerts(rng: random.Random, names: list[str], prefixes: list[str]) -> list[dict[str, str]]:
    alerts = []
    for _ in range(ALERTS):
        roll = rng.random()
        if roll < 0.8:
            alertname = rng.choice(names)
        elif roll < 0.9:
            alertname = rng.choice(prefixes) + rng.choice(["Down", "Failed", "Slow"])
        else:
            alertname = f"Unknown{rng.randrange(200)}"
        alerts.append(
            {
                "alertname": alertname,
                "severity": rng.choice(SEVERITIES),
                "team": rng.choice(TEAMS),
                "namespace": rng.choice(NAMESPACES),
                "job": f"job{rng.randrange(60)}",
                "instance": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}:9100",
                "env": rng.choice(["prod", "staging"]),
            }
        )
    return alerts


def measure(classifier: Classifier, alerts: list[dict[str, str]]) -> list[float]:
    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    clock = time.perf_counter_ns
    samples = []
    for labels in alerts:
        started = clock()
        classifier.classify(labels, now)
        samples.append((clock() - started) / 1000)
    return samples


def report(title: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(
        f"{title}: median {statistics.median(ordered):.1f} us, p99 {p99:.1f} us "
        f"({len(ordered)} alerts)"
    )


def main() -> int:
    # No options; argparse answers --help and refuses anything else before a long run.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None).parse_args()
    rng = random.Random(SEED)
    text, names, prefixes = build_rules(rng)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rules").mkdir()
        (Path(tmp) / "rules" / "bench.yaml").write_text(text, encoding="utf-8")
        started = time.perf_counter()
        classifier = load_classifier(load_text("{}", "config.yaml"), Path(tmp))
        loaded = time.perf_counter() - started
    print(f"loaded {classifier.rule_count} rules in {loaded * 1000:.0f} ms")
    alerts = build_alerts(rng, names, prefixes)
    measure(classifier, alerts[:2000])  # warm up: the per-alertname memo fills
    report("classify (steady state)", measure(classifier, alerts))
    # Worst case: every alert carries an alertname never seen before (a memo miss each).
    fresh = [dict(a, alertname=f"{a['alertname']}-{i}") for i, a in enumerate(alerts[:5000])]
    report("classify (new alertname every time)", measure(classifier, fresh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
