#!/usr/bin/env python3
"""Sums doctest's test-case counts over a meson testlog.json; prints 'PASSED FAILED'.

A test binary that ended without doctest's summary line (crash, timeout, abort) counts as one
failed test case on top of whatever it reported."""
import json
import re
import sys

SUMMARY = re.compile(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed")

passed = failed = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            m = SUMMARY.findall(rec.get("stdout", "") or "")
            if m:
                _, p, fl = map(int, m[-1])
                passed += p
                failed += fl
            elif rec.get("result") == "OK":
                passed += 1
            if rec.get("result") not in ("OK", "SKIP", "EXPECTEDFAIL") and (not m or int(m[-1][2]) == 0):
                failed += 1
print(passed, failed)
