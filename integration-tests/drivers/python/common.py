"""What the Python driver workloads share: settings from the environment, the names of the
objects they create, the per-client result checks and the final report."""
import os
import sys

PREFIX = os.environ["DRIVER_TABLE"]
CLIENTS = int(os.environ.get("DRIVER_CLIENTS", "20"))
ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "8"))
DEFAULT_PATH = '"$user", public'
TABLE = f"public.{PREFIX}_items"
MARK = "SELECT v, pg_backend_pid() FROM marker"
SHOW = "SHOW search_path"


def schema(i):
    """The schema client `i` puts on its search_path."""
    return f"{PREFIX}_s{i}"


def marker(i):
    """The value in client `i`'s marker table."""
    return f"{PREFIX}-client-{i}"


class Check:
    """Expected state of one client; each check takes one result row (or None)."""

    def __init__(self, i):
        self.i = i
        self.count = 0
        self.sum = 0
        self.pids = set()

    def inserted(self, v):
        self.count += 1
        self.sum += v

    def totals(self, row):
        got = (row[0], int(row[1] or 0)) if row is not None else None
        if got != (self.count, self.sum):
            raise AssertionError(f"count/sum {got}, expected {(self.count, self.sum)}")

    def marker(self, row):
        if row is None or row[0] != marker(self.i):
            raise AssertionError(
                f"SELECT v FROM marker gave {tuple(row) if row else row!r}, expected "
                f"{marker(self.i)!r} (another client's search_path, or ours lost)"
            )
        self.pids.add(row[1])

    def path(self, row, expected):
        if row is None or row[0] != expected:
            raise AssertionError(
                f"SHOW search_path gave {tuple(row) if row else row!r}, expected {expected!r}"
            )


def report(name, version, errors, checks):
    """Prints the outcome; exits 1 listing every failure."""
    if errors:
        print(f"{name}: {len(errors)} failure(s):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit(1)
    pids = [len(chk.pids) for chk in checks]
    print(
        f"{name} {version}: OK, {CLIENTS} clients x {ROUNDS} rounds; "
        f"server backends seen per client: min {min(pids)}, max {max(pids)}"
    )
