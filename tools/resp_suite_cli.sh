#!/usr/bin/env bash
# The RESP compatibility suite through redis-cli (Debian's redis-tools): the checks of
# tools/resp_suite.py and node/tests/resp.rs, each a redis-cli reply compared with the
# one Redis Cluster gives. `redis-cli -c` follows MOVED itself; plain `redis-cli`
# shows what -c hides (MOVED, CROSSSLOT).
#
#   resp_suite_cli.sh HOST PORT basic
#       strings, TTLs, NX/XX/GET, INCR from 8 concurrent redis-cli processes, MGET/MSET
#       with hash tags, CROSSSLOT, MOVED seen plain and followed with -c.
#   resp_suite_cli.sh HOST PORT write PREFIX N
#       writes PREFIX:k{i} = i for i < N.
#   resp_suite_cli.sh HOST PORT check PREFIX N [MOVED_TO_PORT]
#       reads every PREFIX:k{i} back and writes it again through HOST:PORT with -c,
#       retrying for up to $SETTLE_SECONDS (default 30) while partitions elect; with
#       MOVED_TO_PORT, some key must be MOVED to that port.
#   resp_suite_cli.sh HOST PORT auth READ_TOKEN WRITE_TOKEN
#       against a node with --tokens-file: a read-only token's SET is refused.
set -euo pipefail

[ $# -ge 3 ] || { sed -n '2,17p' "$0" >&2; exit 2; }
HOST=$1 PORT=$2 PHASE=$3
shift 3
SETTLE_SECONDS=${SETTLE_SECONDS:-30}

fail() {
  echo "resp_suite_cli.sh: FAILED: $*" >&2
  exit 1
}
# Follows MOVED (-c); replies as redis-cli shows them on a terminal (--no-raw):
# "OK", "\"text\"", "(integer) 1", "(nil)", "(error) ...".
cli() { redis-cli --no-raw -c -h "$HOST" -p "$PORT" "$@" 2>&1; }
plain() { redis-cli --no-raw -h "$HOST" -p "$PORT" "$@" 2>&1; }

# expect WHAT WANT ARGS...: `cli ARGS` must print exactly WANT.
expect() {
  local what=$1 want=$2 got
  shift 2
  got=$(cli "$@")
  [ "$got" = "$want" ] || fail "$what ($*): expected '$want', got '$got'"
}
# expect_match WHAT EXTENDED_REGEX ARGS...: `cli ARGS` must match the regex.
expect_match() {
  local what=$1 pattern=$2 got
  shift 2
  got=$(cli "$@")
  [[ $got =~ $pattern ]] || fail "$what ($*): expected /$pattern/, got '$got'"
}

basic() {
  local p=cli i
  expect "PING" "PONG" PING
  # Whatever an earlier run left.
  for key in greeting session setex blink lock nobody counter; do cli DEL "$p:$key" >/dev/null; done

  # Strings, deletes, existence.
  expect "SET" "OK" SET $p:greeting hello
  expect "GET after SET" '"hello"' GET $p:greeting
  expect "APPEND returns the new length" "(integer) 12" APPEND $p:greeting ", world"
  expect "STRLEN" "(integer) 12" STRLEN $p:greeting
  expect "TYPE" "string" TYPE $p:greeting
  expect "EXISTS" "(integer) 1" EXISTS $p:greeting
  expect "DEL" "(integer) 1" DEL $p:greeting
  expect "GET after DEL" "(nil)" GET $p:greeting
  expect "EXISTS after DEL" "(integer) 0" EXISTS $p:greeting

  # TTLs.
  expect "SET EX" "OK" SET $p:session s EX 100
  expect_match "TTL after SET EX 100" '^\(integer\) (99|100)$' TTL $p:session
  expect_match "PTTL after SET EX 100" '^\(integer\) (9[89][0-9]{3}|100000)$' PTTL $p:session
  expect "PERSIST" "(integer) 1" PERSIST $p:session
  expect "TTL after PERSIST" "(integer) -1" TTL $p:session
  expect "EXPIRE NX without a TTL" "(integer) 1" EXPIRE $p:session 50 NX
  expect "EXPIRE NX with a TTL" "(integer) 0" EXPIRE $p:session 70 NX
  expect "EXPIRE GT with a shorter TTL" "(integer) 0" EXPIRE $p:session 10 GT
  expect "EXPIRE GT with a longer TTL" "(integer) 1" EXPIRE $p:session 60 GT
  expect "EXPIRE LT with a shorter TTL" "(integer) 1" EXPIRE $p:session 30 LT
  expect_match "TTL after EXPIRE LT 30" '^\(integer\) (29|30)$' TTL $p:session
  expect "SETEX" "OK" SETEX $p:setex 20 v
  expect_match "TTL after SETEX 20" '^\(integer\) (19|20)$' TTL $p:setex
  expect "SET PX 150" "OK" SET $p:blink b PX 150
  sleep 0.4
  expect "GET after the TTL" "(nil)" GET $p:blink
  expect "TTL of an expired key" "(integer) -2" TTL $p:blink

  # NX / XX / GET.
  expect "SET NX of a missing key" "OK" SET $p:lock a NX
  expect "SET NX of a present key" "(nil)" SET $p:lock b NX
  expect "SET XX of a missing key" "(nil)" SET $p:nobody x XX
  expect "SET GET returns the former value" '"a"' SET $p:lock c GET
  expect "SETNX of a present key" "(integer) 0" SETNX $p:lock d
  expect "GETDEL" '"c"' GETDEL $p:lock
  expect "GET after GETDEL" "(nil)" GET $p:lock

  # INCR from 8 redis-cli processes at once ends at the exact total.
  local clients=8 each=50 dir
  dir=$(mktemp -d)
  for i in $(seq "$clients"); do
    yes "INCR $p:counter" | head -n "$each" | cli >"$dir/$i.out" &
  done
  wait
  for i in $(seq "$clients"); do
    local replies
    replies=$(grep -cE '^\(integer\) [0-9]+$' "$dir/$i.out" || true)
    [ "$replies" = "$each" ] ||
      fail "INCR client $i: $replies of $each replies were integers: $(grep -v integer "$dir/$i.out" | head -3)"
  done
  rm -rf "$dir"
  expect "the counter after $clients×$each INCR" "\"$((clients * each))\"" GET $p:counter
  expect "INCRBY" "(integer) $((clients * each + 10))" INCRBY $p:counter 10
  expect "DECR" "(integer) $((clients * each + 9))" DECR $p:counter
  expect "INCRBYFLOAT" "\"$((clients * each + 9)).5\"" INCRBYFLOAT $p:counter 0.5
  expect "INCR of a non-number" "(error) ERR value is not an integer or out of range" \
    INCR $p:session

  # Several keys of one slot, by hash tag.
  expect "MSET of {tag} keys" "OK" MSET "{cli:7}:name" Ada "{cli:7}:lang" en
  expect "MGET of {tag} keys" $'1) "Ada"\n2) "en"\n3) (nil)' \
    MGET "{cli:7}:name" "{cli:7}:lang" "{cli:7}:none"
  expect "DEL of {tag} keys" "(integer) 2" DEL "{cli:7}:name" "{cli:7}:lang" "{cli:7}:none"

  # Keys across slots, and the redirect itself.
  expect_match "MGET a b" '^\(error\) CROSSSLOT ' MGET a b
  expect "CLUSTER KEYSLOT foo" "(integer) 12182" CLUSTER KEYSLOT foo
  expect_match "CLUSTER INFO" 'cluster_state:ok' CLUSTER INFO
  local moved=0 got host port
  for i in $(seq 0 31); do
    got=$(plain SET "$p:probe$i" "$i")
    if [[ $got =~ ^\(error\)\ MOVED\ ([0-9]+)\ (.+):([0-9]+)$ ]]; then
      moved=$((moved + 1))
      host=${BASH_REMATCH[2]} port=${BASH_REMATCH[3]}
      expect "CLUSTER KEYSLOT $p:probe$i" "(integer) ${BASH_REMATCH[1]}" \
        CLUSTER KEYSLOT "$p:probe$i"
      got=$(redis-cli --no-raw -h "$host" -p "$port" SET "$p:probe$i" "$i" 2>&1)
      [ "$got" = OK ] || fail "SET $p:probe$i on $host:$port where MOVED points: '$got'"
    else
      [ "$got" = OK ] || fail "SET $p:probe$i without -c: expected OK or MOVED, got '$got'"
    fi
    expect "$p:probe$i read with -c" "\"$i\"" GET "$p:probe$i"
  done
  [ "$moved" -gt 0 ] || fail "a third of the keys are led elsewhere: some SET must be MOVED"
  echo "resp_suite_cli.sh: basic checks passed ($moved MOVED followed)" >&2
}

# run_batch FILE: the commands of FILE through one `redis-cli -c`, one reply a line;
# the "-> Redirected to slot ..." lines it prints when it follows MOVED are counted in
# $REDIRECTS and left out.
REDIRECTS=$(mktemp)
trap 'rm -f "$REDIRECTS"' EXIT
run_batch() {
  local out status=0
  out=$(cli <"$1") || status=$?
  grep -c '^-> Redirected' <<<"$out" >"$REDIRECTS" || true
  grep -v '^-> Redirected' <<<"$out" || true
  return $status
}

write_keys() {
  local prefix=$1 n=$2 batch got
  batch=$(mktemp)
  for i in $(seq 0 $((n - 1))); do echo "SET $prefix:k$i $i"; done >"$batch"
  got=$(run_batch "$batch")
  rm -f "$batch"
  [ "$(grep -cx OK <<<"$got")" = "$n" ] || fail "SET of $n keys: $(grep -vx OK <<<"$got" | head -3)"
}

check_keys() {
  local prefix=$1 n=$2 moved_to=${3:-} reads writes want got deadline
  reads=$(mktemp) writes=$(mktemp) want=$(mktemp)
  for i in $(seq 0 $((n - 1))); do
    echo "GET $prefix:k$i" >>"$reads"
    echo "SET $prefix:k$i $i" >>"$writes"
    echo "\"$i\"" >>"$want"
  done
  deadline=$((SECONDS + SETTLE_SECONDS))
  # A partition electing answers CLUSTERDOWN, a node restarting refuses connections:
  # the whole batch is tried again until it comes back right.
  until got=$(run_batch "$reads") && [ "$got" = "$(cat "$want")" ]; do
    [ $SECONDS -lt $deadline ] ||
      fail "$prefix keys read back: $(diff <(echo "$got") "$want" | head -5)"
    sleep 0.5
  done
  until got=$(run_batch "$writes") && [ "$(grep -cx OK <<<"$got")" = "$n" ]; do
    [ $SECONDS -lt $deadline ] || fail "$prefix keys written again: $(grep -vx OK <<<"$got" | head -3)"
    sleep 0.5
  done
  if [ -n "$moved_to" ]; then
    local seen=0
    for i in $(seq 0 $((n - 1))); do
      if [[ $(plain GET "$prefix:k$i") =~ ^\(error\)\ MOVED\ [0-9]+\ .+:$moved_to$ ]]; then
        seen=1
        break
      fi
    done
    [ $seen = 1 ] || fail "no $prefix key is MOVED to port $moved_to, the new node"
  fi
  rm -f "$reads" "$writes" "$want"
  echo "resp_suite_cli.sh: $n $prefix keys read back and written again" \
    "(redis-cli followed $(cat "$REDIRECTS") MOVED in the last batch)" >&2
}

auth() {
  local reader=$1 writer=$2 got
  plain --user default --pass "$writer" --no-auth-warning DEL cli:auth >/dev/null
  expect_match "GET without AUTH" '^\(error\) NOAUTH' GET cli:auth
  got=$(plain -a wrong-token --no-auth-warning GET cli:auth)
  [[ $got =~ WRONGPASS ]] || fail "a wrong token: expected WRONGPASS, got '$got'"
  got=$(plain -a "$reader" --no-auth-warning GET cli:auth)
  [ "$got" = "(nil)" ] || fail "GET with a read-only token: expected (nil), got '$got'"
  got=$(plain -a "$reader" --no-auth-warning SET cli:auth v)
  [[ $got =~ ^\(error\)\ NOPERM ]] || fail "SET with a read-only token: expected NOPERM, got '$got'"
  got=$(plain --user default --pass "$writer" --no-auth-warning SET cli:auth v)
  [ "$got" = OK ] || fail "SET with a read-write token: expected OK, got '$got'"
  got=$(plain -a "$reader" --no-auth-warning GET cli:auth)
  [ "$got" = '"v"' ] || fail "the allowed SET seen by the reader: got '$got'"
  echo "resp_suite_cli.sh: auth checks passed" >&2
}

echo "resp_suite_cli.sh: $(redis-cli -v) against $HOST:$PORT: $PHASE" >&2
case $PHASE in
  basic) basic ;;
  write) write_keys "$@" ;;
  check) check_keys "$@" ;;
  auth) auth "$@" ;;
  *) fail "unknown phase $PHASE" ;;
esac
