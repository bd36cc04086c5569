"""Benchmark of screening: build time, memory and per-title latency against N patterns.

Why: screening sits in the checkout's critical path, and the number of findings only grows.
This prints, for each pattern count, the build time, the resident memory the matcher adds,
and p50/p99 of `Matcher.screen` per title (normalisation included), then the ratio
p99@largest / p99@previous that shows whether latency stays flat as patterns grow.

Each size runs in a fresh process so that one size's memory does not blur the next one's.
Workloads are synthetic and seeded: brand-like names built from syllables, multi-word
patterns (brand + line, brand + model code, coded phrases), and titles of 40-120
characters from a listing vocabulary, some carrying a (sometimes disguised) pattern.

    .venv/bin/python bench/screening.py [--sizes 10000,100000,1000000] [--titles 100000]

`--serve-workers SIZE` measures the served system instead: `escrow serve --workers 2` over a
SQLite database holding SIZE patterns. It prints the time from a finding change made over HTTP
(create, confirm, dismiss) to `POST /v1/screen` reflecting it (target < 1 s) with the large base
in place, then while the gunicorn master rebuilds the base (forced by a bulk insert past the
overlay's bound; the workers keep serving from their overlay), then after the master replaced
the workers by forks sharing the new base; and the RSS, shared and private memory of the master
and each worker (/proc/PID/smaps_rollup) at start and after that roll (target: <= 1 GB per
process, the matcher shared rather than private).

    .venv/bin/python bench/screening.py --serve-workers 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from escrow.screening import FindingRule, Matcher  # importable only after the path fix above

SEED = 20_260_101
PATTERNS_PER_FINDING = 50
TITLE_CHARS_MIN, TITLE_CHARS_MAX = 40, 120
TITLES_WITH_PATTERN = 0.05
TARGET_P99_US = 100.0
TARGET_RATIO = 1.25
TARGET_BUILD_S = 15.0
TARGET_RSS_MB = 1024.0

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ve",
    "ra",
    "zu",
    "to",
    "ne",
    "bel",
    "dor",
    "fin",
    "gra",
    "mon",
    "tex",
    "vo",
    "li",
    "an",
    "el",
    "ar",
    "is",
    "os",
    "ul",
    "sa",
    "ri",
    "co",
    "ta",
    "pe",
    "du",
    "ga",
    "ni",
    "fe",
    "ro",
    "ba",
    "le",
    "ci",
    "mo",
    "tu",
    "re",
    "na",
    "si",
    "vi",
    "za",
    "qua",
    "tri",
    "bra",
    "cle",
    "stel",
    "mar",
    "val",
    "ten",
    "lux",
    "nor",
    "ves",
    "kel",
    "dra",
    "pri",
    "sol",
]
LINES = ["classic", "sport", "pro", "max", "lite", "air", "ultra", "prime", "elite", "street"]
VOCABULARY = [
    "new",
    "used",
    "vintage",
    "genuine",
    "leather",
    "cotton",
    "wool",
    "silk",
    "handbag",
    "wallet",
    "belt",
    "scarf",
    "watch",
    "sneakers",
    "shoes",
    "boots",
    "jacket",
    "coat",
    "dress",
    "shirt",
    "jeans",
    "cap",
    "hat",
    "sunglasses",
    "earbuds",
    "charger",
    "cable",
    "case",
    "cover",
    "mug",
    "lamp",
    "chair",
    "table",
    "rug",
    "blanket",
    "pillow",
    "black",
    "white",
    "red",
    "blue",
    "green",
    "brown",
    "grey",
    "pink",
    "small",
    "medium",
    "large",
    "size",
    "38",
    "40",
    "42",
    "xl",
    "for",
    "men",
    "women",
    "kids",
    "with",
    "box",
    "gift",
    "free",
    "shipping",
    "fast",
    "delivery",
    "2",
    "pack",
    "set",
    "of",
    "3",
    "original",
    "edition",
    "limited",
    "sale",
]

VOCABULARY_SET = frozenset(VOCABULARY)


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def brand_name(rnd: random.Random) -> str:
    """A made-up brand word; never a listing word, as no IP team registers `sale`."""
    while True:
        name = "".join(rnd.choice(SYLLABLES) for _ in range(rnd.randint(2, 4)))
        if name not in VOCABULARY_SET:
            return name


def make_rules(size: int, rnd: random.Random) -> tuple[list[FindingRule], list[str]]:
    """`size` distinct patterns in findings of PATTERNS_PER_FINDING, and a sample of them."""
    rules: list[FindingRule] = []
    seen: set[str] = set()
    sample: list[str] = []
    finding = 0
    while len(seen) < size:
        brand = brand_name(rnd)
        patterns: list[str] = []
        for _ in range(PATTERNS_PER_FINDING * 4):
            if len(patterns) == PATTERNS_PER_FINDING or len(seen) == size:
                break
            shape = rnd.random()
            if shape < 0.2:
                pattern = brand_name(rnd)
            elif shape < 0.6:
                pattern = f"{brand} {rnd.choice(LINES)} {brand_name(rnd)}"
            elif shape < 0.9:
                pattern = f"{brand} {rnd.choice('abcdefghkmnprstvxz')}{rnd.randint(10, 99999)}"
            else:
                pattern = f"{brand_name(rnd)} {brand_name(rnd)}"
            if pattern in seen:
                continue
            seen.add(pattern)
            patterns.append(pattern)
            if rnd.random() < 0.01:
                sample.append(pattern)
        if patterns:
            status = "confirmed" if finding % 3 else "suspected"
            rules.append(FindingRule(f"fnd_{finding:08d}", "keyword", brand.title(), status, tuple(patterns)))
            finding += 1
    return rules, sample


def disguise(pattern: str, rnd: random.Random) -> str:
    """Obfuscate a pattern the way the issue describes, sometimes."""
    choice = rnd.random()
    if choice < 0.3:
        return pattern
    if choice < 0.5:
        return pattern.replace("o", "0").replace("e", "3")
    if choice < 0.65:
        return "".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in pattern)
    if choice < 0.8:
        return "\u200b".join(pattern)
    return ".".join(pattern).upper()


def make_titles(count: int, sample: list[str], rnd: random.Random) -> list[str]:
    titles: list[str] = []
    for _ in range(count):
        target = rnd.randint(TITLE_CHARS_MIN, TITLE_CHARS_MAX)
        words: list[str] = []
        if sample and rnd.random() < TITLES_WITH_PATTERN:
            words.append(disguise(rnd.choice(sample), rnd))
        while sum(map(len, words)) + len(words) < target:
            words.append(rnd.choice(VOCABULARY))
        rnd.shuffle(words)
        titles.append(" ".join(words)[:TITLE_CHARS_MAX])
    return titles


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def fork_sharing(matcher: Matcher, titles: list[str]) -> dict[str, float]:
    """Screen in a forked child and report how much of the parent's memory it shares."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: screen, then report smaps_rollup
        os.close(read_end)
        for title in titles:
            matcher.screen(title)
        fields: dict[str, float] = {}
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) / 1024
        os.write(write_end, json.dumps(fields).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        fields = json.loads(reader.read())
    os.waitpid(pid, 0)
    return {k: fields.get(k, 0.0) for k in ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Dirty")}


def run_size(size: int, title_count: int, fork_check: bool) -> dict[str, object]:
    """Build one matcher of `size` patterns and screen `title_count` titles against it."""
    rnd = random.Random(SEED + size)
    rules, sample = make_rules(size, rnd)
    titles = make_titles(title_count, sample, rnd)
    gc.collect()
    rss_before = rss_mb()
    started = time.perf_counter()
    matcher = Matcher.build(rules)
    build_s = time.perf_counter() - started
    gc.collect()
    rss_after = rss_mb()
    for title in titles[:2_000]:  # warm the folding table and caches
        matcher.screen(title)
    timings: list[float] = []
    matched_titles = 0
    clock = time.perf_counter_ns
    gc.disable()  # a collection pause is not screening's latency
    for title in titles:
        begin = clock()
        found = matcher.screen(title)
        timings.append((clock() - begin) / 1_000)
        matched_titles += bool(found)
    gc.enable()
    timings.sort()
    result: dict[str, object] = {
        "size": size,
        "patterns": matcher.pattern_count,
        "typo_variants": matcher.typo_variant_count,
        "build_s": build_s,
        "rss_delta_mb": rss_after - rss_before,
        "p50_us": percentile(timings, 0.50),
        "p99_us": percentile(timings, 0.99),
        "mean_us": statistics.fmean(timings),
        "matched_titles": matched_titles,
        "titles": len(titles),
    }
    if fork_check:
        result["fork"] = fork_sharing(matcher, titles[:20_000])
    return result


def smaps(pid: int) -> dict[str, float]:
    """Rss, Pss, shared and private memory of a process, in MiB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[name] = int(rest.split()[0]) / 1024
    shared = fields.get("Shared_Clean", 0.0) + fields.get("Shared_Dirty", 0.0)
    private = fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)
    return {"rss": fields.get("Rss", 0.0), "pss": fields.get("Pss", 0.0), "shared": shared, "private": private}


def insert_findings(url: str, rules: list[FindingRule], *, migrate_first: bool = False) -> None:
    """Write `rules` as findings rows straight into the table, with one revision bump, as a bulk
    import would (no audit records: a benchmark fixture)."""
    from datetime import UTC, datetime

    from escrow.persistence import migrate
    from escrow.persistence.db import make_engine
    from escrow.persistence.tables import findings
    from escrow.service.findings import bump_revision

    if migrate_first:
        make_engine(url, pool_size=1).dispose()
        migrate.upgrade(url)
    engine = make_engine(url, pool_size=1)
    now = datetime.now(UTC)
    blank: dict[str, Any] = dict.fromkeys(
        ("rights_holder_id", "jurisdiction", "severity", "evidence_url", "expires_at")
    )
    rows = [
        {
            **blank,
            "id": r.finding_id,
            "kind": r.kind,
            "status": r.status,
            "brand": r.brand,
            "patterns": list(r.patterns),
            "seller_ids": list(r.seller_ids),
            "listing_ids": list(r.listing_ids),
            "created_by": "bench",
            "created_at": now,
            "updated_at": now,
        }
        for r in rules
    ]
    with engine.begin() as conn:
        for start in range(0, len(rows), 2_000):
            conn.execute(findings.insert(), rows[start : start + 2_000])
        bump_revision(conn)
    engine.dispose()


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (the gunicorn master's workers), from /proc/*/stat."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


class ServeLog:
    """The served processes' JSON log lines (stdout, at info), read as they come."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self.seen: list[tuple[float, str]] = []  # (the line's own timestamp, as epoch seconds; event)

    def read(self) -> None:
        from datetime import datetime

        with self._path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk.rpartition(b"\n")[0]
        self._offset += len(complete) + (1 if complete else 0)
        for line in complete.splitlines():
            try:
                record = json.loads(line)
                at = datetime.fromisoformat(record["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):  # gunicorn's own plain-text lines
                continue
            self.seen.append((at, str(record.get("event", ""))))

    def when(self, event: str, timeout_s: float = 0.0) -> float:
        """When `event` was first logged (epoch seconds), waiting up to `timeout_s` for it (NaN if never)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.read()
            for at, seen in self.seen:
                if seen == event:
                    return at
            if time.monotonic() >= deadline:
                return float("nan")
            time.sleep(0.05)


def serve_workers(size: int) -> None:
    """The served system at `size` patterns: worker memory, change-to-visible latency, and the master's
    base rebuild followed by the roll of the workers."""
    import signal
    import socket
    import tempfile

    import httpx

    from escrow.screening.registry import OVERLAY_FINDINGS_MAX

    rnd = random.Random(SEED + size)
    rules, _ = make_rules(size, rnd)
    titles = make_titles(2_000, [], rnd)
    build_wait_s = 30 + 60 * size / 1_000_000  # a build of 1M patterns takes ~14 s of a core; slack for a busy box
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/escrow.db"
        started = time.perf_counter()
        insert_findings(url, rules, migrate_first=True)
        print(f"seeded {len(rules):,} findings / {size:,} patterns in {time.perf_counter() - started:.1f} s")
        del rules
        env = {**os.environ, "ESCROW_DATABASE_URL": url, "ESCROW_LOG_LEVEL": "info"}
        escrow = [sys.executable, "-m", "escrow"]
        made = subprocess.run([*escrow, "keys", "create", "--role", "ip_staff", "--name", "bench"],  # noqa: S603
                              env=env, capture_output=True, text=True, check=True)  # fmt: skip
        headers = {"Authorization": f"Bearer {made.stdout.split()[-1]}"}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        log_path = Path(tmp) / "serve.log"
        started = time.perf_counter()
        with log_path.open("wb") as log_file:
            server = subprocess.Popen(  # noqa: S603
                [*escrow, "serve", "--port", str(port), "--workers", "2"], env=env, stdout=log_file, stderr=log_file
            )
        log = ServeLog(log_path)
        try:
            client = httpx.Client(base_url=base, timeout=30, headers=headers)
            while True:
                try:
                    if client.get("/readyz").status_code == 200 and len(children_of(server.pid)) == 2:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"escrow serve exited:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            print(f"serve --workers 2 ready in {time.perf_counter() - started:.1f} s (one build, in the master)")

            def screen(title: str) -> dict[str, Any]:
                got = client.post("/v1/screen", json={"title": title}, headers={"Connection": "close"})
                got.raise_for_status()
                return got.json()  # type: ignore[no-any-return]

            def memory(label: str) -> list[dict[str, float]]:
                for title in titles:  # touch the matcher from every worker
                    screen(title)
                workers = children_of(server.pid)
                print(f"memory {label} (MB):")
                print(f"  {'process':>10} {'pid':>8} {'RSS':>7} {'PSS':>7} {'shared':>7} {'private':>7}")
                figures: list[dict[str, float]] = []
                for name, pid in [("master", server.pid)] + [(f"worker {i}", p) for i, p in enumerate(workers, 1)]:
                    m = smaps(pid)
                    figures.append(m)
                    print(f"  {name:>10} {pid:>8} {m['rss']:>7.0f} {m['pss']:>7.0f} {m['shared']:>7.0f} "
                          f"{m['private']:>7.0f}")  # fmt: skip
                return figures  # the master's first

            requests_ms: dict[str, int] = {}  # of the last lifecycle: how long each change's own request took

            def visible(what: str, change: Any, decision: str, title: str) -> float:
                began = time.perf_counter()
                change()
                requests_ms[what] = round((time.perf_counter() - began) * 1000)
                while time.perf_counter() - began < 30:
                    if screen(title)["decision"] == decision:
                        break
                    time.sleep(0.01)
                return time.perf_counter() - began  # 30 s or more: never seen

            def lifecycle(brand: str) -> dict[str, int]:
                """Milliseconds from sending each change to the first screen that reflects it."""
                body = {"kind": "keyword", "brand": brand, "patterns": [brand]}
                ids: list[str] = []
                title = f"new {brand} bag"
                reason = {"reason": "bench"}

                def create() -> None:
                    ids.append(client.post("/v1/findings", json=body).json()["id"])

                out = {"create": visible("create", create, "review", title)}
                out["confirm"] = visible(
                    "confirm", lambda: client.post(f"/v1/findings/{ids[0]}/confirm", json=reason), "hold", title
                )
                out["dismiss"] = visible(
                    "dismiss", lambda: client.post(f"/v1/findings/{ids[0]}/dismiss", json=reason), "pass", title
                )
                return {k: round(v * 1000) for k, v in out.items()}

            before_workers = memory("at start, the base built in the master before forking")
            worst: list[int] = []
            print("change -> visible on POST /v1/screen, ms (target < 1000):")
            before = lifecycle("zorblatt")
            worst.extend(before.values())
            print(f"  large base, no rebuild:  {before}  (of which the change's own request: {requests_ms})")

            old_workers = children_of(server.pid)
            filler = [
                FindingRule(f"fnd_fill{i:06d}", "listing", "Fill", "suspected", listing_ids=(f"l-{i}",))
                for i in range(OVERLAY_FINDINGS_MAX + 1)
            ]
            inserted = time.time()
            insert_findings(url, filler)  # over the overlay's bound: the master's next check builds a base
            due = log.when("findings_master_base_due", 10)
            during: list[dict[str, int]] = []
            slowest = 0.0
            screens = 0
            deadline = time.perf_counter() + build_wait_s
            while math.isnan(log.when("findings_master_base_built")) and time.perf_counter() < deadline:
                during.append(lifecycle(f"quintrel{len(during)}"))
                for title in titles[:50]:
                    began = time.perf_counter()
                    screen(title)
                    slowest = max(slowest, time.perf_counter() - began)
                    screens += 1
            for values in during:
                worst.extend(values.values())
            built = log.when("findings_master_base_built")
            print(f"  during the master's base build (due {due - inserted:.1f} s after the bulk insert, "
                  f"built {built - due:.1f} s later): {during or 'none'}")  # fmt: skip
            if not during:
                print("    (the build ended before a lifecycle could start: run a larger SIZE to see one)")
            print(f"    slowest of {screens} screens during the build: {slowest * 1000:.0f} ms")
            rolled = log.when("findings_workers_rolled", build_wait_s)
            while set(children_of(server.pid)) & set(old_workers) and time.time() < rolled + 30:
                time.sleep(0.05)  # the retired workers finish their requests and exit
            exited = time.time()
            new_workers = children_of(server.pid)
            replaced = not set(new_workers) & set(old_workers)
            print(f"  roll: workers {old_workers} -> {new_workers} ({'all replaced' if replaced else 'NOT replaced'}); "
                  f"fresh ones up {rolled - built:.1f} s after the build, old ones gone "
                  f"{exited - rolled:.1f} s later")  # fmt: skip
            after = lifecycle("vexmoral")
            worst.extend(after.values())
            print(f"  after the roll:          {after}  (of which the change's own request: {requests_ms})")
            after_all = memory("after the roll, the new base built in the master")
            after_workers, before_workers = after_all[1:], before_workers[1:]
            rss_max = max(m["rss"] for m in after_all)
            shared_ok = all(m["shared"] > m["private"] for m in after_workers)
            worst_ms = max(worst)
            print("targets:")
            print(f"  change -> visible, worst of all phases: {worst_ms} ms (< 1000): "
                  f"{'met' if worst_ms < 1000 else 'MISSED'}")  # fmt: skip
            print(f"  largest RSS of master and workers after the roll: {rss_max:.0f} MB (<= {TARGET_RSS_MB:.0f}): "
                  f"{'met' if rss_max <= TARGET_RSS_MB else 'MISSED'}")  # fmt: skip
            private_after = ", ".join(f"{m['private']:.0f}" for m in after_workers)
            private_before = ", ".join(f"{m['private']:.0f}" for m in before_workers)
            verdict = "met" if shared_ok else "MISSED"
            print(f"  each worker's memory shared rather than private after the roll: {verdict} "
                  f"(private {private_after} MB; {private_before} MB at start)")  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--titles", type=int, default=100_000)
    parser.add_argument("--fork-check", action="store_true", help="measure fork sharing at the largest size")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, JSON out
    parser.add_argument("--serve-workers", type=int, metavar="SIZE", help="measure escrow serve --workers 2 instead")
    args = parser.parse_args()
    if args.serve_workers is not None:
        serve_workers(args.serve_workers)
        return
    if args.one is not None:
        print(json.dumps(run_size(args.one, args.titles, args.fork_check)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results: list[dict[str, Any]] = []
    for size in sizes:
        command = [sys.executable, __file__, "--one", str(size), "--titles", str(args.titles)]
        if args.fork_check and size == sizes[-1]:
            command.append("--fork-check")
        # S603: the command is this script with integer arguments, not outside input
        done = subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  done {size:>9,} patterns", file=sys.stderr)
    print(
        f"{'patterns':>10} {'build s':>8} {'RSS +MB':>8} {'p50 us':>7} {'p99 us':>7} {'mean us':>8} {'hit titles':>10}"
    )
    for r in results:
        print(
            f"{r['patterns']:>10,} {r['build_s']:>8.2f} {r['rss_delta_mb']:>8.0f} "
            f"{r['p50_us']:>7.1f} {r['p99_us']:>7.1f} {r['mean_us']:>8.1f} "
            f"{r['matched_titles']:>10,}"
        )
    if len(results) >= 2:
        last, previous = results[-1], results[-2]
        ratio = last["p99_us"] / previous["p99_us"]
        print(f"p99 ratio {last['size']:,} / {previous['size']:,} = {ratio:.2f} (target <= {TARGET_RATIO})")
    last = results[-1]
    print(
        f"targets at {last['size']:,}: p99 {last['p99_us']:.1f} us (<= {TARGET_P99_US}), "
        f"build {last['build_s']:.1f} s (<= {TARGET_BUILD_S}), "
        f"RSS +{last['rss_delta_mb']:.0f} MB (<= {TARGET_RSS_MB:.0f})"
    )
    if "fork" in last:
        print(f"forked child after screening 20k titles (MB): {last['fork']}")


if __name__ == "__main__":
    main()
