#!/usr/bin/env python3
"""Checks Weir's alert rules and runs their promtool unit tests.

    run_tests.py [--promtool PATH] [--sources DIR ...]

- `promtool check rules` on every *.rules.yml here;
- every alert has a severity, a description and a runbook annotation, the last two without templates (so
  a test case states only what depends on its input: the labels and the summary; this script fills in the
  rest from the rule before handing the tests to `promtool test rules`);
- every alert fires in some test case and is expected silent again in a later case of the same test;
- every `weir_*` metric a rule uses is one Weir exports: a name the Swift sources under --sources register
  (histograms also as _bucket, _sum and _count).
Exit status 0 when all of it holds.
"""
import argparse
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

HERE = pathlib.Path(__file__).resolve().parent
DURATION = re.compile(r"(\d+)([smhdwy])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(text):
    return sum(int(n) * SECONDS[unit] for n, unit in DURATION.findall(str(text)))


def load_rules():
    rules = {}
    for path in sorted(HERE.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[rule["alert"]] = rule
    return rules


def exported_metrics(source_dirs):
    """Metric names registered in the Swift sources (string literals that are whole metric names)."""
    names = set()
    literal = re.compile(r'"(weir_[a-z0-9_]+)"')
    for directory in source_dirs:
        for path in pathlib.Path(directory).rglob("*.swift"):
            names.update(literal.findall(path.read_text(errors="replace")))
    return names


def check_rules(rules, exported):
    problems = []
    used = re.compile(r"\b(weir_[a-z0-9_]+)")
    for name, rule in rules.items():
        annotations = rule.get("annotations", {})
        if "severity" not in rule.get("labels", {}):
            problems.append(f"{name}: no severity label")
        for key in ("summary", "description", "runbook"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key} annotation")
        for key in ("description", "runbook"):
            if "{{" in annotations.get(key, ""):
                problems.append(f"{name}: the {key} annotation must not use templates (put what varies in the summary)")
        if exported is not None:
            for metric in used.findall(rule["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if metric not in exported and base not in exported:
                    problems.append(f"{name}: {metric} is not a metric Weir exports")
    return problems


def prepared_tests(rules, directory):
    """The test files with each expected alert's static annotations and severity filled in, and which
    alerts fired and resolved in them."""
    fired, resolved, problems, written = set(), set(), [], []
    for path in sorted((HERE / "tests").glob("*.test.yml")):
        document = yaml.safe_load(path.read_text())
        document["rule_files"] = [str((path.parent / f).resolve()) for f in document["rule_files"]]
        for test in document["tests"]:
            firing = set()
            for case in sorted(test.get("alert_rule_test", []), key=lambda c: seconds(c["eval_time"])):
                name = case["alertname"]
                rule = rules.get(name)
                if rule is None:
                    problems.append(f"{path.name}: no alert named {name}")
                    continue
                if case.get("exp_alerts"):
                    firing.add(name)
                    fired.add(name)
                    for alert in case["exp_alerts"]:
                        alert.setdefault("exp_labels", {}).setdefault("severity", rule["labels"]["severity"])
                        annotations = alert.setdefault("exp_annotations", {})
                        for key in ("description", "runbook"):
                            annotations.setdefault(key, rule["annotations"][key])
                elif name in firing:
                    resolved.add(name)
        target = directory / path.name
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        written.append(target)
    return written, fired, resolved, problems


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--promtool", default="promtool")
    parser.add_argument("--sources", nargs="*", default=None, help="Swift source folders for the exported-metric check")
    args = parser.parse_args()

    rules = load_rules()
    exported = exported_metrics(args.sources) if args.sources else None
    problems = check_rules(rules, exported)

    check = subprocess.run([args.promtool, "check", "rules", *map(str, sorted(HERE.glob("*.rules.yml")))],
                           capture_output=True, text=True)
    if check.returncode != 0:
        problems.append("promtool check rules failed:\n" + check.stdout + check.stderr)

    with tempfile.TemporaryDirectory() as temporary:
        written, fired, resolved, test_problems = prepared_tests(rules, pathlib.Path(temporary))
        problems += test_problems
        for name in sorted(rules):
            if name not in fired:
                problems.append(f"{name}: no test case where it fires")
            elif name not in resolved:
                problems.append(f"{name}: no test case where it resolves after firing")
        run = subprocess.run([args.promtool, "test", "rules", *map(str, written)], capture_output=True, text=True)
        if run.returncode != 0:
            problems.append("promtool test rules failed:\n" + run.stdout + run.stderr)

    if problems:
        print("\n".join(problems))
        return 1
    print(f"{len(rules)} alerts: checked, each fires and resolves in {len(written)} promtool test files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
