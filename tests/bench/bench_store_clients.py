"""Which S3 client: boto3 (what data/store.py uses), obstore and s3fs, side by side against
moto's S3 server on 127.0.0.1 (started and stopped here), in one run.

For each client that imports: the installed size of it and everything it pulls in, MB/s of
streaming whole objects in 1 MB reads (as a shard is read), MB/s of reading from a byte offset
to the end (as a broken read is resumed), and ms per small GET (as a manifest is read). The
server shares the machine, so compare the rows with each other, not with a real store.

    python tests/bench/bench_store_clients.py [--objects 8] [--mb 8]
    # obstore and s3fs are not dependencies; to measure them too:
    pip install --target /tmp/clients obstore s3fs && PYTHONPATH=/tmp/clients python ...

Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.bench.report import Tables, add_results_arg  # noqa: E402
from tests.storage import KEY_ID, SECRET, MotoServer, s3_env  # noqa: E402


def closure_mb(name: str) -> float | None:
    """MB on disk of distribution ``name`` and every distribution it requires (no extras)."""
    seen, todo, total = set(), [name], 0
    while todo:
        n = re.split(r"[<>=!~;\[ (]", todo.pop())[0].strip().lower().replace("_", "-")
        if not n or n in seen:
            continue
        seen.add(n)
        try:
            dist = md.distribution(n)
        except md.PackageNotFoundError:
            if n == name:
                return None
            continue
        for f in dist.files or []:
            try:
                total += os.path.getsize(dist.locate_file(f))
            except OSError:
                pass
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return total / 1e6


def clients(endpoint: str) -> dict:
    """{name: (stream(key) -> bytes read, from_offset(key, start) -> bytes, get(key) -> bytes)}
    for each client that imports."""
    out = {}
    import boto3
    c = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def b_stream(key):
        body, n = c.get_object(Bucket="bench", Key=key)["Body"], 0
        while block := body.read(1 << 20):
            n += len(block)
        return n

    def b_range(key, start):
        body, n = c.get_object(Bucket="bench", Key=key, Range=f"bytes={start}-")["Body"], 0
        while block := body.read(1 << 20):
            n += len(block)
        return n
    out["boto3"] = (b_stream, b_range, lambda k: c.get_object(Bucket="bench",
                                                              Key=k)["Body"].read())
    try:
        import obstore
        from obstore.store import S3Store
        store = S3Store("bench", endpoint=endpoint, access_key_id=KEY_ID,
                        secret_access_key=SECRET, region="us-east-1",
                        client_options={"allow_http": True})

        def o_stream(key):
            n = 0
            for chunk in obstore.get(store, key).stream(min_chunk_size=1 << 20):
                n += len(chunk)
            return n

        def o_range(key, start):
            size = obstore.head(store, key)["size"]
            return len(obstore.get_range(store, key, start=start, end=size))
        out["obstore"] = (o_stream, o_range, lambda k: bytes(obstore.get(store, k).bytes()))
    except ImportError:
        pass
    try:
        import s3fs
        fs = s3fs.S3FileSystem(key=KEY_ID, secret=SECRET,
                               client_kwargs={"endpoint_url": endpoint,
                                              "region_name": "us-east-1"})

        def f_stream(key):
            n = 0
            with fs.open(f"bench/{key}", "rb", block_size=1 << 20) as f:
                while block := f.read(1 << 20):
                    n += len(block)
            return n

        def f_range(key, start):
            n = 0
            with fs.open(f"bench/{key}", "rb", block_size=1 << 20) as f:
                f.seek(start)
                while block := f.read(1 << 20):
                    n += len(block)
            return n
        out["s3fs"] = (f_stream, f_range, lambda k: fs.cat(f"bench/{k}"))
    except ImportError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--mb", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="best of this many passes")
    add_results_arg(ap)
    args = ap.parse_args()
    moto = MotoServer()
    os.environ.update(s3_env(moto.endpoint))
    rows = {}
    try:
        moto.bucket("bench")
        c = moto.client()
        blob = os.urandom(args.mb << 20)
        keys = [f"obj{i}" for i in range(args.objects)]
        for k in keys:
            c.put_object(Bucket="bench", Key=k, Body=blob)
        c.put_object(Bucket="bench", Key="manifest.json", Body=b"{}" * 2000)
        total = len(blob) * len(keys)
        for name, (stream, ranged, get) in clients(moto.endpoint).items():
            best = {"stream": 0.0, "range": 0.0, "small_ms": 1e9}
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                assert sum(stream(k) for k in keys) == total
                best["stream"] = max(best["stream"], total / 1e6 / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                half = len(blob) // 2
                assert sum(ranged(k, half) for k in keys) == total - half * len(keys)
                best["range"] = max(best["range"], (total - half * len(keys)) / 1e6 /
                                    (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for _ in range(20):
                    get("manifest.json")
                best["small_ms"] = min(best["small_ms"], 1000 * (time.perf_counter() - t0) / 20)
            best["install_mb"] = closure_mb(name)
            rows[name] = best
            print(f"  {name}: {best}", file=sys.stderr, flush=True)
    finally:
        moto.stop()
    print(f"\nS3 clients against moto on 127.0.0.1, {args.objects} objects of {args.mb} MB, best "
          f"of {args.rounds}")
    print(f"{'client':<10} {'install MB':>11} {'stream MB/s':>12} {'from offset MB/s':>17} "
          f"{'small GET ms':>13}")
    for name, r in rows.items():
        size = f"{r['install_mb']:.1f}" if r["install_mb"] is not None else "?"
        print(f"{name:<10} {size:>11} {r['stream']:12.0f} {r['range']:17.0f} "
              f"{r['small_ms']:13.2f}")
    tables = Tables("store_clients", args.results)
    tables.add("store_clients", f"S3 clients against moto on 127.0.0.1, {args.objects} objects "
               f"of {args.mb} MB, best of {args.rounds}; installed = the client and everything "
               f"it pulls in",
               ["client", "installed MB", "stream MB/s", "from an offset MB/s", "small GET ms"],
               [[name, r["install_mb"] and round(r["install_mb"], 1), round(r["stream"]),
                 round(r["range"]), round(r["small_ms"], 2)] for name, r in rows.items()])
    tables.save()
    print(json.dumps({"bench": "store_clients", "objects": args.objects, "mb": args.mb,
                      "rows": {n: {k: v if v is None else round(v, 2) for k, v in r.items()}
                               for n, r in rows.items()}}))


if __name__ == "__main__":
    main()
