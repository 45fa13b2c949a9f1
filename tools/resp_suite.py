#!/usr/bin/env python3
"""The RESP compatibility suite through redis-py's RedisCluster (PyPI's `redis` >= 5).

The same checks as node/tests/resp.rs makes with the Rust redis crate, against a dcache
cluster's RESP listeners. Every check is an assertion whose message says what a Redis
Cluster would have answered and what came back.

    resp_suite.py [HOST:PORT] basic [--protocol 2|3]
        strings, TTLs, NX/XX/GET, INCR from 8 clients, MGET/MSET with hash tags,
        CROSSSLOT and MOVED on a plain connection, MOVED followed by RedisCluster,
        reads from replicas after READONLY.
    resp_suite.py [HOST:PORT] follow --prefix P --keys N
        writes N keys P:k{i} = i with one RedisCluster, prints "written", then for every
        line read on stdin ("check LABEL") reads every key back and writes it again
        with that same client -- whose slot map is stale after a node was added or a
        leader moved, so it must follow MOVED and reconnect -- and prints "ok LABEL".
    resp_suite.py HOST:PORT auth --reader TOKEN --writer TOKEN
        against a node started with --tokens-file: no token is refused, a wrong one is
        refused, a read-only token reads but its SET is refused (NOPERM), a read-write
        token (AUTH user token) writes.

The seed HOST:PORT may also come from $DCACHE_RESP (default 127.0.0.1:6379).
"""

import argparse
import os
import sys
import threading
import time
import warnings

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    ConnectionError as RedisConnectionError,
    MovedError,
    NoPermissionError,
    RedisClusterException,
    ResponseError,
    TimeoutError as RedisTimeoutError,
)

warnings.filterwarnings("ignore", category=DeprecationWarning)

# What a partition electing a leader, or a node restarting, answers for a while
# (ClusterError: redis-py gave up after 16 redirections in a row).
TRANSIENT = (
    ClusterDownError,
    ClusterError,
    RedisConnectionError,
    RedisTimeoutError,
    MovedError,
    RedisClusterException,
)


def log(message):
    print(f"resp_suite.py: {message}", file=sys.stderr, flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_equal(got, want, what):
    check(got == want, f"{what}: expected {want!r}, got {got!r}")


def expect_error(error_class, contains, call, what):
    """`call()` must raise `error_class` whose text contains `contains`."""
    try:
        result = call()
    except error_class as e:
        text = str(e)
        check(
            contains.lower() in text.lower(),
            f"{what}: expected an error containing {contains!r}, got {text!r}",
        )
        return e
    raise AssertionError(
        f"{what}: expected {error_class.__name__} ({contains}), got the reply {result!r}"
    )


def cluster_client(host, port, protocol=None, **kwargs):
    options = dict(
        host=host,
        port=port,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
    )
    if protocol is not None:
        options["protocol"] = protocol
    options.update(kwargs)
    return RedisCluster(**options)


def plain_client(host, port, protocol=None, **kwargs):
    options = dict(host=host, port=port, decode_responses=True, socket_timeout=10)
    if protocol is not None:
        options["protocol"] = protocol
    options.update(kwargs)
    return redis.Redis(**options)


def answers(nodes, *command):
    """What each of `nodes` answers to `command` on a plain connection."""
    out = []
    for node in nodes:
        try:
            with redis.Redis(host=node.host, port=node.port, socket_timeout=2) as one:
                reply = repr(one.execute_command(*command))
        except Exception as e:
            reply = f"{type(e).__name__}: {e}"
        out.append(f"{node.host}:{node.port} -> {reply}")
    return "; ".join(out)


# Errors `settled` retried since the last `retried_summary`: kind -> [count, first, last].
RETRIED = {}


def retried_summary():
    text = ", ".join(
        f"{kind} ×{count} over {last - first:.1f}s" for kind, (count, first, last) in RETRIED.items()
    )
    RETRIED.clear()
    return text or "none"


def settled(call, what, within=30.0, client=None, command=None):
    """`call()`, retried while the cluster answers as it does during an election or a
    restart (CLUSTERDOWN, refused connections, time-outs) for at most `within` s. The
    first error of each kind is logged, with what every node answers `command` then."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except TRANSIENT as e:
            kind = type(e).__name__
            now = time.monotonic()
            counted = RETRIED.setdefault(kind, [0, now, now])
            counted[0] += 1
            counted[2] = now
            if counted[0] == 1:
                where = ""
                if client is not None and command is not None:
                    where = f"; the nodes answer: {answers(client.get_nodes(), *command)}"
                log(f"{what}: {kind}: {e}, retrying{where}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {within:.0f}s: {e!r}")
            time.sleep(0.2)


def basic(host, port, protocol):
    rc = cluster_client(host, port, protocol)
    nodes = rc.get_nodes()
    check(
        len(nodes) >= 3,
        f"CLUSTER SLOTS should name every node of the 3-node cluster, got {nodes}",
    )
    check(rc.ping(), "PING through RedisCluster")
    prefix = f"py{protocol or 'd'}"
    # Whatever an earlier run left.
    for name in ["greeting", "session", "setex", "psetex", "blink", "lock", "nobody", "counter"]:
        rc.delete(f"{prefix}:{name}")

    # Strings, deletes, existence.
    key = f"{prefix}:greeting"
    expect_equal(rc.set(key, "hello"), True, "SET")
    expect_equal(rc.get(key), "hello", "GET after SET")
    expect_equal(rc.append(key, ", world"), 12, "APPEND returns the new length")
    expect_equal(rc.strlen(key), 12, "STRLEN")
    expect_equal(rc.type(key), "string", "TYPE")
    expect_equal(rc.exists(key), 1, "EXISTS of a key")
    expect_equal(rc.delete(key), 1, "DEL of a key")
    expect_equal(rc.get(key), None, "GET after DEL")
    expect_equal(rc.exists(key), 0, "EXISTS after DEL")
    expect_equal(rc.delete(key), 0, "DEL of a missing key")
    expect_equal(rc.type(key), "none", "TYPE of a missing key")

    # TTLs.
    session = f"{prefix}:session"
    expect_equal(rc.set(session, "s", ex=100), True, "SET EX")
    ttl = rc.ttl(session)
    check(99 <= ttl <= 100, f"TTL after SET EX 100: expected 99..100, got {ttl}")
    pttl = rc.pttl(session)
    check(98_000 <= pttl <= 100_000, f"PTTL after SET EX 100: got {pttl}")
    expiretime = rc.expiretime(session)
    now = int(time.time())
    check(
        now + 95 <= expiretime <= now + 101,
        f"EXPIRETIME: expected about {now + 100}, got {expiretime}",
    )
    expect_equal(rc.persist(session), True, "PERSIST of a key with a TTL")
    expect_equal(rc.ttl(session), -1, "TTL after PERSIST")
    expect_equal(rc.persist(session), False, "PERSIST of a key without a TTL")
    expect_equal(rc.expire(session, 50, nx=True), True, "EXPIRE NX without a TTL")
    expect_equal(rc.expire(session, 70, nx=True), False, "EXPIRE NX with a TTL")
    expect_equal(rc.expire(session, 10, gt=True), False, "EXPIRE GT with a shorter TTL")
    expect_equal(rc.expire(session, 60, gt=True), True, "EXPIRE GT with a longer TTL")
    expect_equal(rc.expire(session, 30, lt=True), True, "EXPIRE LT with a shorter TTL")
    expect_equal(rc.expire(session, 40, xx=True), True, "EXPIRE XX with a TTL")
    ttl = rc.ttl(session)
    check(39 <= ttl <= 40, f"TTL after EXPIRE XX 40: got {ttl}")
    expect_equal(rc.expire(f"{prefix}:nobody", 10), False, "EXPIRE of a missing key")
    expect_equal(rc.setex(f"{prefix}:setex", 20, "v"), True, "SETEX")
    check(19 <= rc.ttl(f"{prefix}:setex") <= 20, "TTL after SETEX 20")
    expect_equal(rc.psetex(f"{prefix}:psetex", 20_000, "v"), True, "PSETEX")
    check(19_000 <= rc.pttl(f"{prefix}:psetex") <= 20_000, "PTTL after PSETEX 20000")
    expect_equal(rc.getex(f"{prefix}:psetex", persist=True), "v", "GETEX PERSIST")
    expect_equal(rc.ttl(f"{prefix}:psetex"), -1, "TTL after GETEX PERSIST")
    blink = f"{prefix}:blink"
    expect_equal(rc.set(blink, "b", px=150), True, "SET PX 150")
    time.sleep(0.4)
    expect_equal(rc.get(blink), None, "GET 400 ms after SET PX 150")
    expect_equal(rc.ttl(blink), -2, "TTL of an expired key")
    expect_equal(rc.pttl(blink), -2, "PTTL of an expired key")

    # NX / XX / GET.
    lock = f"{prefix}:lock"
    expect_equal(rc.set(lock, "a", nx=True), True, "SET NX of a missing key")
    expect_equal(rc.set(lock, "b", nx=True), None, "SET NX of a present key")
    expect_equal(rc.set(f"{prefix}:nobody", "x", xx=True), None, "SET XX of a missing key")
    expect_equal(rc.set(lock, "a2", xx=True), True, "SET XX of a present key")
    expect_equal(rc.set(lock, "c", get=True), "a2", "SET GET returns the former value")
    expect_equal(rc.setnx(lock, "d"), False, "SETNX of a present key")
    expect_equal(rc.getdel(lock), "c", "GETDEL")
    expect_equal(rc.get(lock), None, "GET after GETDEL")
    expect_equal(rc.set(lock, "e", keepttl=True), True, "SET KEEPTTL")

    # INCR from 8 clients at once, each with its own RedisCluster, ends at the total.
    counter = f"{prefix}:counter"
    clients, each = 8, 50
    failures = []

    def incr_loop():
        try:
            mine = cluster_client(host, port, protocol)
            for _ in range(each):
                mine.incr(counter)
            mine.close()
        except Exception as e:  # reported below, with its thread's error
            failures.append(repr(e))

    threads = [threading.Thread(target=incr_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    check(not failures, f"INCR from {clients} clients failed: {failures}")
    expect_equal(rc.get(counter), str(clients * each), f"the counter after {clients}×{each} INCR")
    expect_equal(rc.incrby(counter, 10), clients * each + 10, "INCRBY")
    expect_equal(rc.decrby(counter, 10), clients * each, "DECRBY")
    expect_equal(rc.decr(counter), clients * each - 1, "DECR")
    expect_equal(rc.incrbyfloat(counter, 1.5), clients * each + 0.5, "INCRBYFLOAT")
    expect_error(ResponseError, "not an integer", lambda: rc.incr(session), "INCR of a non-number")

    # Several keys of one slot, by hash tag.
    tag = "{user:7}"
    expect_equal(
        rc.mset({f"{tag}:name": "Ada", f"{tag}:lang": "en"}), True, "MSET of {tag} keys"
    )
    expect_equal(
        rc.mget([f"{tag}:name", f"{tag}:lang", f"{tag}:none"]),
        ["Ada", "en", None],
        "MGET of {tag} keys",
    )
    expect_equal(
        rc.msetnx({f"{tag}:name": "Bob", f"{tag}:new": "x"}), False, "MSETNX with one present"
    )
    expect_equal(rc.get(f"{tag}:new"), None, "MSETNX set nothing")
    expect_equal(
        rc.exists(f"{tag}:name", f"{tag}:lang", f"{tag}:none"), 2, "EXISTS of {tag} keys"
    )
    expect_equal(
        rc.delete(f"{tag}:name", f"{tag}:lang", f"{tag}:none"), 2, "DEL of {tag} keys"
    )
    # redis-py splits keys of several slots itself.
    spread = {f"{prefix}:spread{i}": str(i) for i in range(10)}
    rc.mset_nonatomic(spread)
    expect_equal(rc.mget_nonatomic(list(spread)), list(spread.values()), "MGET over slots")

    # What RedisCluster hides: keys across slots, and the redirect itself.
    plain = plain_client(host, port, protocol)
    expect_error(
        ClusterCrossSlotError, "", lambda: plain.mget("a", "b"), "MGET a b on one connection"
    )
    expect_equal(
        plain.execute_command("CLUSTER", "KEYSLOT", "foo"), 12182, "CLUSTER KEYSLOT foo"
    )
    expect_equal(rc.keyslot("foo"), 12182, "redis-py's own slot of foo")
    info = plain.execute_command("CLUSTER", "INFO")
    if isinstance(info, dict):
        state = info.get("cluster_state")
    else:
        state = dict(
            line.split(":", 1) for line in info.splitlines() if ":" in line
        ).get("cluster_state")
    expect_equal(state, "ok", "CLUSTER INFO's cluster_state")
    server = plain.info("server")
    check("redis_version" in server, f"INFO server names a redis_version: {server}")
    check(plain.dbsize() >= 0, "DBSIZE")

    moved = 0
    for i in range(32):
        key = f"{prefix}:probe{i}"
        try:
            plain.set(key, "v")
            expect_equal(rc.get(key), "v", f"{key} set on the seed, read by RedisCluster")
        except MovedError as e:
            moved += 1
            expect_equal(e.slot_id, rc.keyslot(key), f"the slot of MOVED for {key}")
            there = plain_client(e.host, e.port, protocol)
            expect_equal(there.set(key, str(i)), True, f"SET {key} where MOVED points")
            expect_equal(rc.get(key), str(i), f"{key} read by RedisCluster after MOVED")
            there.close()
    check(moved > 0, "a third of the keys are led elsewhere: some SET must be MOVED")

    # After READONLY, any replica serves reads (redis-py's read_from_replicas).
    replicas = cluster_client(host, port, protocol, read_from_replicas=True)
    for i in range(10):
        key = f"{prefix}:spread{i}"
        value = None
        for _ in range(20):
            value = replicas.get(key)
            if value == str(i):
                break
            time.sleep(0.1)
        expect_equal(value, str(i), f"{key} read from a replica")
    expect_error(
        ResponseError,
        "",
        lambda: plain.execute_command("SELECT", "1"),
        "SELECT 1 in cluster mode",
    )
    for client in (replicas, plain, rc):
        client.close()
    log(f"basic checks passed (protocol {protocol or 'default'}, {moved} MOVED followed)")


def follow(host, port, protocol, prefix, keys):
    """Writes keys with one client, then checks them again on every line of stdin."""
    rc = cluster_client(host, port, protocol, cluster_error_retry_attempts=10)
    for i in range(keys):
        key = f"{prefix}:k{i}"
        settled(lambda: rc.set(key, str(i)), f"SET {key}", client=rc, command=("GET", key))
    log(f"{keys} keys written; errors retried: {retried_summary()}")
    print("written", flush=True)
    for line in sys.stdin:
        label = line.strip() or "check"
        started = time.monotonic()
        for i in range(keys):
            key = f"{prefix}:k{i}"
            got = settled(
                lambda: rc.get(key), f"GET {key} ({label})", client=rc, command=("GET", key)
            )
            expect_equal(got, str(i), f"{key} written before, read back ({label})")
            settled(
                lambda: rc.set(key, str(i)),
                f"SET {key} ({label})",
                client=rc,
                command=("GET", key),
            )
        log(f"{label}: {keys} keys read back and written again in "
            f"{time.monotonic() - started:.1f}s; errors retried: {retried_summary()}")
        print(f"ok {label}", flush=True)


def auth(host, port, protocol, reader, writer):
    anonymous = plain_client(host, port, protocol)
    expect_error(AuthenticationError, "", lambda: anonymous.get("k"), "GET without AUTH")
    expect_error(
        AuthenticationError,
        "",
        lambda: plain_client(host, port, protocol, password="nope").get("k"),
        "a wrong token",
    )
    writing = plain_client(host, port, protocol, username="default", password=writer)
    writing.delete("py:auth")
    reading = plain_client(host, port, protocol, password=reader)
    expect_equal(reading.get("py:auth"), None, "GET with a read-only token")
    expect_error(
        NoPermissionError,
        "permission",
        lambda: reading.set("py:auth", "v"),
        "SET with a read-only token",
    )
    expect_equal(writing.set("py:auth", "v"), True, "SET with a read-write token")
    expect_equal(reading.get("py:auth"), "v", "the allowed SET is seen by the reader")
    for client in (anonymous, reading, writing):
        client.close()
    log(f"auth checks passed (protocol {protocol or 'default'})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seed", nargs="?", default=os.environ.get("DCACHE_RESP", "127.0.0.1:6379"))
    parser.add_argument("phase", nargs="?", default="basic", choices=["basic", "follow", "auth"])
    parser.add_argument("--protocol", type=int, choices=[2, 3], default=None)
    parser.add_argument("--prefix", default="follow")
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--reader")
    parser.add_argument("--writer")
    args = parser.parse_args()
    host, _, port = args.seed.rpartition(":")
    port = int(port)
    log(f"redis-py {redis.__version__} against {host}:{port}: {args.phase}")
    try:
        if args.phase == "basic":
            basic(host, port, args.protocol)
        elif args.phase == "follow":
            follow(host, port, args.protocol, args.prefix, args.keys)
        else:
            check(args.reader and args.writer, "auth needs --reader and --writer tokens")
            auth(host, port, args.protocol, args.reader, args.writer)
    except AssertionError as e:
        print(f"resp_suite.py: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
