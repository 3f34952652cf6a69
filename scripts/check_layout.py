#!/usr/bin/env python3
"""CI layout checks (issue 10): run from the repository root; exits 1 on any finding.

- No tokio in the pure layers: src/protocol, src/sql, src/fanout, the session's
  decisions (src/session/machine) and the shard router
  (src/shard/route*, ring, key) neither `use tokio` nor name `tokio::`.
- No SQLSTATE written inline: outside src/protocol/sqlstate.rs and test code, no string
  literal equals a code of that table (use `sqlstate::NAME`).
- No source file over 600 lines (src/, testkit/, integration-tests/src).
- No function over 100 lines: clippy's `too_many_lines` is on in the crate roots with the
  threshold in clippy.toml (CI denies warnings).
"""
import pathlib
import re
import sys

root = pathlib.Path(".")
problems = []

pure = [root / "src/protocol", root / "src/sql", root / "src/fanout", root / "src/session/machine"]
pure_files = [p for d in pure for p in d.rglob("*.rs")]
pure_files += [root / "src/shard/route.rs", root / "src/shard/ring.rs", root / "src/shard/key.rs"]
pure_files += list((root / "src/shard/route").rglob("*.rs"))
for p in pure_files:
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("//", 1)[0]
        if re.search(r"\btokio(::|\b\s*;)", code) or re.match(r"\s*use\s+tokio", code):
            problems.append(f"{p}:{n}: tokio in a pure layer")

table = root / "src/protocol/sqlstate.rs"
codes = set(re.findall(r'"([0-9A-Z]{5})";', table.read_text(encoding="utf-8")))
for p in (root / "src").rglob("*.rs"):
    if p == table or "tests" in p.parts or p.name.endswith("_tests.rs") or p.name == "tests.rs":
        continue
    text = p.read_text(encoding="utf-8")
    cut = text.find("#[cfg(test)]\nmod tests")
    if cut >= 0:
        text = text[:cut]
    for n, line in enumerate(text.splitlines(), 1):
        for c in re.findall(r'"([0-9A-Z]{5})"', line.split("//", 1)[0]):
            if c in codes and re.search(r"\d", c):
                problems.append(f"{p}:{n}: SQLSTATE \"{c}\" written inline; use sqlstate::")

for d in ["src", "testkit/src", "integration-tests/src"]:
    for p in (root / d).rglob("*.rs"):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > 600:
            problems.append(f"{p}: {n} lines (over 600)")

# Functions over 100 lines fail clippy (`too_many_lines`, threshold in clippy.toml), which
# the product's crate roots turn on.
for f in ["src/lib.rs", "src/main.rs"]:
    if "#![warn(clippy::too_many_lines)]" not in (root / f).read_text(encoding="utf-8"):
        problems.append(f"{f}: missing #![warn(clippy::too_many_lines)]")
if "too-many-lines-threshold = 100" not in (root / "clippy.toml").read_text(encoding="utf-8"):
    problems.append("clippy.toml: missing too-many-lines-threshold = 100")

for line in problems:
    print(line)
sys.exit(1 if problems else 0)
