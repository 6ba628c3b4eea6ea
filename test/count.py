#!/usr/bin/env python3
"""Sums doctest's test-case counts over meson testlog.json files; prints 'PASSED FAILED'.

A test binary that ended without doctest's summary line (crash, timeout, abort) counts as one
failed test case on top of whatever it reported. The end of each failed binary's output goes to
stderr, so that a failure in CI can be read from its log."""
import json
import re
import sys

SUMMARY = re.compile(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed")
TAIL_LINES = 60

passed = failed = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            out = rec.get("stdout", "") or ""
            m = SUMMARY.findall(out)
            reported = 0  # failed test cases in doctest's summary
            if m:
                _, p, reported = map(int, m[-1])
                passed += p
                failed += reported
            elif rec.get("result") == "OK":
                passed += 1
            bad_exit = rec.get("result") not in ("OK", "SKIP", "EXPECTEDFAIL")
            if bad_exit and reported == 0:
                failed += 1
            if bad_exit or reported > 0:
                tail = "\n".join(out.splitlines()[-TAIL_LINES:])
                err = "\n".join((rec.get("stderr", "") or "").splitlines()[-TAIL_LINES:])
                print(f"---- {rec.get('name')} ({path}): {rec.get('result')}, "
                      f"exit {rec.get('returncode')}, last lines:\n{tail}\n{err}".rstrip(),
                      file=sys.stderr)
print(passed, failed)
