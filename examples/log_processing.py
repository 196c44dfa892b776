"""Log processing: parse raw access-log lines, then per-host traffic and error rates.

Raw logs (one JSON object per line: ts, host, path, status, bytes) are read, cleaned with SQL,
repartitioned by host, aggregated per partition, and written as Parquet. A Python step tags slow
hosts. Run: python examples/log_processing.py [logs_dir] [output_dir]
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile

import smallpond

LOG_SCHEMA = {"ts": "timestamp", "host": "varchar", "path": "varchar", "status": "integer", "bytes": "bigint", "ms": "double"}


def make_logs(directory: str, nfiles: int = 4, lines: int = 5000, seed: int = 7) -> None:
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    hosts = [f"web{i:02d}.example.com" for i in range(12)]
    for f in range(nfiles):
        with open(os.path.join(directory, f"access-{f}.jsonl"), "w") as out:
            for i in range(lines):
                host = rng.choice(hosts)
                out.write(
                    json.dumps(
                        {
                            "ts": f"2026-11-{1 + (i % 28):02d} {i % 24:02d}:{i % 60:02d}:00",
                            "host": host.upper() if rng.random() < 0.1 else host,  # dirty input
                            "path": rng.choice(["/", "/api/v1/items", "/login", "/static/app.js"]),
                            "status": rng.choice([200] * 17 + [404, 500, 503]),
                            "bytes": rng.randint(100, 50_000),
                            "ms": round(rng.expovariate(1 / 40.0), 2),
                        }
                    )
                    + "\n"
                )


def process_logs(sp, logs_dir: str, output_dir: str, npartitions: int = 4):
    logs = sp.read_json(os.path.join(logs_dir, "*.jsonl"), schema=LOG_SCHEMA)
    clean = logs.map("lower(host) AS host, path, status, bytes, ms")
    by_host = clean.repartition(npartitions, hash_by="host")
    stats = sp.partial_sql(
        """
        SELECT host,
               count(*) AS requests,
               CAST(sum(bytes) AS BIGINT) AS bytes,
               avg(CASE WHEN status >= 500 THEN 1.0 ELSE 0.0 END) AS error_rate,
               quantile_cont(ms, 0.95) AS p95_ms
        FROM {0} GROUP BY host
        """,
        by_host,
    )
    tagged = stats.map(lambda r: dict(r, slow=r["p95_ms"] > 125.0))
    tagged.write_parquet(output_dir)
    return tagged.to_pandas().sort_values("host").reset_index(drop=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        logs_path, out_path = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "log_stats/"
    else:
        tmp = tempfile.mkdtemp(prefix="smallpond-logs-")
        logs_path, out_path = os.path.join(tmp, "logs"), os.path.join(tmp, "stats")
        make_logs(logs_path)
    session = smallpond.init()
    print(process_logs(session, logs_path, out_path))
    session.shutdown()
