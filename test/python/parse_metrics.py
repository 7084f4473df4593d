"""Parses a Prometheus text exposition from stdin with the official Python client's parser
(Debian python3-prometheus-client), so the service's /metrics is read by Prometheus' own rules,
not by the service's code. Prints one JSON object per family: name, type and its samples."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    out.append({
        "name": family.name,
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    })
json.dump(out, sys.stdout)
