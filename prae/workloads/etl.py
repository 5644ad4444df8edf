"""Built-in ``etl``: a pyarrow ETL over generated, skewed Parquet partitions.

Phases (progress range), each with its own resource signature:

    generate  0.00–0.21  synthesise orders (Zipf-skewed customer keys, skewed partition sizes)
                         and a customer dimension; write zstd Parquet, fsync, drop from cache
                         → CPU + disk write
    scan      0.21–0.41  read every partition back from disk, parse coupon codes and user
                         agents (regex), filter, derive revenue
                         → disk read + CPU, memory grows with the scanned data
    join      0.41–0.71  hash-join each chunk with customers, then a data-dependent second join:
                         only customers whose order count is in the top decile ("loyal", a set
                         whose size depends on the skew) against their own per-customer stats
                         → memory peak
    aggregate 0.71–0.78  map-side partial group-bys per chunk, merged; exact distinct counts over
                         all rows at once; top customers by revenue → CPU, memory peak
    write     0.78–1.00  sort by region and time, write one Parquet file per region
                         → disk write

A shadow (``fraction`` f) runs the same code on f × rows (at least 100 per partition) and
f × customers, in its own data directory. Sizes: ``params`` (see ``kinds.PARAMS["etl"]``);
about 6.5 s and 260 MB of peak RSS per million rows on one idle core here, so the default 8 M
rows take ~55 s and ~2 GB.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prae.workloads.context import WorkloadContext
from prae.workloads.phases import PhasePlan, flush_and_drop

# Weights ~ each phase's share of the run time here, so progress grows ~linearly in time.
PHASES = [("generate", 0.21), ("scan", 0.20), ("join", 0.30), ("aggregate", 0.07), ("write", 0.22)]
REGIONS = [
    "na-east",
    "na-west",
    "eu-central",
    "eu-west",
    "apac-north",
    "apac-south",
    "latam",
    "africa",
]
SEGMENTS = ["consumer", "smb", "enterprise", "public"]
CATEGORIES = [f"cat-{i:02d}" for i in range(24)]
_DEVICES = [
    "Windows NT 10.0; Win64; x64",
    "Macintosh; Intel Mac OS X 13_4",
    "iPhone; CPU iPhone OS 16_5 Mobile",
    "Linux; Android 13; Pixel 7 Mobile",
    "X11; Linux x86_64",
    "iPad; CPU OS 16_5 Mobile",
]


def _string_pools(rng: np.random.Generator) -> tuple[pa.Array, pa.Array]:
    """Coupon codes (with the discount in the text) and user agents, to be parsed in ``scan``."""
    seasons = ["SPRING", "SUMMER", "FALL", "WINTER", "FLASH", "VIP", "WELCOME", "LOYAL"]
    coupons = [
        f"{seasons[i % 8]}-{2020 + i % 5}-{REGIONS[i % 8].upper()}-{5 + (i * 7) % 40}"
        for i in range(4000)
    ]
    agents = [
        f"Mozilla/5.0 ({_DEVICES[i % 6]}) AppleWebKit/{500 + i % 80}.36 (KHTML, like Gecko) Chrome/{90 + i % 30}.0.{i}"
        for i in range(3000)
    ]
    return pa.array(coupons), pa.array(agents)


def run(ctx: WorkloadContext) -> dict[str, Any]:
    p = ctx.params
    pa.set_cpu_count(int(p["threads"]))
    pa.set_io_thread_count(int(p["threads"]))
    plan = PhasePlan(ctx, PHASES)
    parts = int(p["partitions"])
    rows = max(parts * 100, int(p["rows"] * ctx.fraction))
    n_customers = max(100, int(p["customers"] * ctx.fraction))
    rng = np.random.default_rng(ctx.seed)
    data = ctx.data_dir / "etl"
    shutil.rmtree(data, ignore_errors=True)
    (data / "orders").mkdir(parents=True)
    (data / "out").mkdir()
    timings: dict[str, float] = {}
    try:
        t = time.perf_counter()
        files, cust_path = _generate(plan, rng, data, parts, rows, n_customers, float(p["skew"]))
        timings["generate"] = time.perf_counter() - t

        t = time.perf_counter()
        scanned = _scan(plan, files)
        timings["scan"] = time.perf_counter() - t

        t = time.perf_counter()
        customers = pq.read_table(cust_path)
        enriched, loyal = _join(plan, scanned, customers)
        del scanned
        timings["join"] = time.perf_counter() - t

        t = time.perf_counter()
        by_group, top = _aggregate(plan, enriched)
        timings["aggregate"] = time.perf_counter() - t

        t = time.perf_counter()
        written = _write(plan, enriched, by_group, data / "out")
        timings["write"] = time.perf_counter() - t
        return {
            "rows": rows,
            "rows_joined": sum(c.num_rows for c in enriched),
            "customers": n_customers,
            "loyal_orders": loyal,
            "groups": by_group.num_rows,
            "top_customer_revenue": float(top["revenue"][0].as_py()) if top.num_rows else 0.0,
            "bytes_written": written,
            "phase_seconds": timings,
        }
    finally:
        if not p["keep_data"]:
            shutil.rmtree(data, ignore_errors=True)


def _partition_sizes(rng: np.random.Generator, parts: int, rows: int) -> np.ndarray:
    """Skewed partition sizes: weights ~ 1/sqrt(rank), shuffled, summing to ``rows``."""
    w = 1.0 / np.sqrt(np.arange(1, parts + 1))
    rng.shuffle(w)
    sizes = np.maximum(100, (w / w.sum() * rows).astype(np.int64))
    return sizes


def _generate(
    plan: PhasePlan,
    rng: np.random.Generator,
    data: Any,
    parts: int,
    rows: int,
    n_customers: int,
    skew: float,
) -> tuple[list[str], str]:
    sizes = _partition_sizes(rng, parts, rows)
    cust = pa.table(
        {
            "customer_id": pa.array(np.arange(n_customers, dtype=np.int64)),
            "region": pa.DictionaryArray.from_arrays(
                pa.array(rng.integers(0, len(REGIONS), n_customers).astype(np.int32)),
                pa.array(REGIONS),
            ),
            "segment": pa.DictionaryArray.from_arrays(
                pa.array(rng.integers(0, len(SEGMENTS), n_customers).astype(np.int32)),
                pa.array(SEGMENTS),
            ),
            "credit_limit": pa.array(rng.lognormal(8.0, 1.0, n_customers)),
        }
    )
    cust_path = str(data / "customers.parquet")
    pq.write_table(cust, cust_path, compression="zstd")
    flush_and_drop(cust_path)
    coupons, agents = _string_pools(rng)
    files = []
    order_id = 0
    for i, n in enumerate(sizes):
        n = int(n)
        # Zipf keys: a few customers place most orders, which skews joins and group sizes.
        keys = (rng.zipf(skew, n) - 1) % n_customers
        table = pa.table(
            {
                "order_id": pa.array(np.arange(order_id, order_id + n, dtype=np.int64)),
                "customer_id": pa.array(keys.astype(np.int64)),
                "product_id": pa.array(rng.integers(0, 20_000, n).astype(np.int32)),
                "category": pa.DictionaryArray.from_arrays(
                    pa.array(rng.integers(0, len(CATEGORIES), n).astype(np.int32)),
                    pa.array(CATEGORIES),
                ),
                "quantity": pa.array(rng.poisson(3.0, n).astype(np.int32)),
                "price": pa.array(np.round(rng.lognormal(3.0, 0.8, n), 2)),
                "ts": pa.array(
                    np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 86_400 * 30, n))
                ),
                # 70 % of orders carry a coupon; the discount is only in its text.
                "coupon": pc.if_else(
                    pa.array(rng.random(n) < 0.3),
                    pa.scalar(None, pa.string()),
                    coupons.take(pa.array(rng.integers(0, len(coupons), n))),
                ),
                "user_agent": agents.take(pa.array(rng.integers(0, len(agents), n))),
            }
        )
        order_id += n
        path = str(data / "orders" / f"part-{i:05d}.parquet")
        pq.write_table(table, path, compression="zstd", row_group_size=64_000)
        flush_and_drop(path)
        files.append(path)
        plan.step("generate", i + 1, len(sizes))
    return files, cust_path


def _scan(plan: PhasePlan, files: list[str]) -> list[pa.Table]:
    out = []
    for i, path in enumerate(files):
        t = pq.read_table(path)
        t = t.filter(pc.greater(t["quantity"], 0))
        pct = pc.struct_field(pc.extract_regex(t["coupon"], r"-(?P<pct>\d+)$"), [0])
        discount = pc.fill_null(pc.divide(pc.cast(pct, pa.float64()), 100.0), 0.0)
        gross = pc.multiply(pc.cast(t["quantity"], pa.float64()), t["price"])
        t = t.append_column("revenue", pc.multiply(gross, pc.subtract(1.0, discount)))
        t = t.append_column("mobile", pc.match_substring(t["user_agent"], "Mobile"))
        t = t.append_column(
            "chrome_major",
            pc.cast(
                pc.struct_field(pc.extract_regex(t["user_agent"], r"Chrome/(?P<v>\d+)"), [0]),
                pa.int16(),
            ),
        )
        t = t.drop_columns(["user_agent"])
        t = t.append_column("day", pc.cast(pc.divide(t["ts"], 86_400), pa.int32()))
        out.append(t)
        plan.step("scan", i + 1, len(files))
    return out


def _join(
    plan: PhasePlan, scanned: list[pa.Table], customers: pa.Table
) -> tuple[list[pa.Table], int]:
    enriched: list[pa.Table] = []
    steps = len(scanned) + 2
    for i, chunk in enumerate(scanned):
        enriched.append(chunk.join(customers, keys="customer_id", join_type="inner"))
        plan.step("join", i + 1, steps)
    # Data-dependent: who is "loyal" depends on the key skew, and so does this join's size.
    counts = (
        pa.concat_tables([c.select(["customer_id", "revenue"]) for c in enriched])
        .group_by("customer_id")
        .aggregate([("revenue", "count"), ("revenue", "mean")])
    )
    threshold = float(np.quantile(counts["revenue_count"].to_numpy(), 0.9))
    loyal = counts.filter(pc.greater_equal(counts["revenue_count"], threshold))
    plan.step("join", len(scanned) + 1, steps)
    loyal_orders = 0
    for chunk in enriched:
        joined = chunk.join(loyal, keys="customer_id", join_type="inner")
        above = pc.greater(joined["revenue"], joined["revenue_mean"])
        loyal_orders += int(pc.sum(pc.cast(above, pa.int64())).as_py() or 0)
    plan.step("join", steps, steps)
    return enriched, loyal_orders


def _aggregate(plan: PhasePlan, enriched: list[pa.Table]) -> tuple[pa.Table, pa.Table]:
    partials = []
    per_customer = []
    for i, chunk in enumerate(enriched):
        partials.append(
            chunk.group_by(["region", "category", "day"])
            .aggregate(
                [
                    ("revenue", "sum"),
                    ("quantity", "sum"),
                    ("order_id", "count"),
                    ("mobile", "sum"),
                    ("price", "tdigest"),
                ]
            )
            .drop_columns(["price_tdigest"])
        )
        per_customer.append(chunk.group_by("customer_id").aggregate([("revenue", "sum")]))
        plan.step("aggregate", i + 1, len(enriched) + 1)
    merged = (
        pa.concat_tables(partials)
        .group_by(["region", "category", "day"])
        .aggregate([("revenue_sum", "sum"), ("quantity_sum", "sum"), ("order_id_count", "sum")])
    )
    # Exact distinct customers per region and segment needs all rows at once: the memory peak.
    everything = pa.concat_tables(
        [c.select(["region", "segment", "customer_id", "coupon"]) for c in enriched]
    )
    everything.group_by(["region", "segment"]).aggregate(
        [("customer_id", "count_distinct"), ("coupon", "count_distinct")]
    )
    del everything
    top = pa.concat_tables(per_customer).group_by("customer_id").aggregate([("revenue_sum", "sum")])
    top = (
        top.rename_columns(["customer_id", "revenue"])
        .sort_by([("revenue", "descending")])
        .slice(0, 100)
    )
    plan.step("aggregate", 1, 1)
    return merged, top


def _write(plan: PhasePlan, enriched: list[pa.Table], by_group: pa.Table, out: Any) -> int:
    written = 0
    regions = REGIONS
    for i, region in enumerate(regions):
        pieces = [c.filter(pc.equal(pc.cast(c["region"], pa.string()), region)) for c in enriched]
        table = pa.concat_tables(pieces).sort_by([("ts", "ascending")])
        path = str(out / f"region={region}.parquet")
        pq.write_table(table, path, compression="zstd")
        flush_and_drop(path)
        written += table.nbytes
        plan.step("write", i + 1, len(regions) + 1)
    path = str(out / "summary.parquet")
    pq.write_table(by_group, path)
    flush_and_drop(path)
    plan.step("write", 1, 1)
    return written
