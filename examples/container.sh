#!/usr/bin/env bash
# Devmem TCP for a container, end to end on the emulated NIC, from the CLI alone.
#
# The netkit story of the drv-net nk_devmem.py selftest, on any Linux machine
# with network namespaces (root):
#
#   peer ns  [p0 10.X.1.2]----veth----[eth-phys 10.X.1.1]  host ns  (emulated devmem NIC)
#            [p1 10.X.3.2]----veth----[eth-none 10.X.3.1]           (netmem TX NONE)
#                                     [nk-host  10.X.2.1]  netkit primary (forwarding)
#                                          |  veth = emulated netkit pair
#   ctr ns                            [nk-ctr   10.X.2.2]  netkit guest (NO_DMA)
#
# 1. queue 3 of eth-phys is leased to nk-ctr (queue-create); every refusal of
#    queue-create is shown with its errno and extack;
# 2. inside ctr, `devmemtcp recv --ifname nk-ctr --no-nic-config` binds the
#    leased queue and receives a validated stream from the peer;
# 3. inside ctr, `devmemtcp send` binds nk-ctr for TX (the DMA device is
#    eth-phys) and sends a validated stream to the peer;
# 4. with the host's route to the peer through eth-none (netmem TX NONE), the
#    same send is dropped by validate_xmit_unreadable_skb and counted;
# 5. everything is undone: `devmemtcp restore eth-phys` replays the undo
#    journal (the lease, then header split, RSS and the rule), then the
#    namespaces go.
#
# Environment: DEVMEMTCP (the command, default `devmemtcp`), KEEP=1 leaves the
# namespaces for inspection. Exit status 0 when every step gave what it must.
set -euo pipefail

DMT=${DEVMEMTCP:-devmemtcp}
ID=${CONTAINER_SH_ID:-$$}
N=$(( ID % 200 + 20 ))
PEER=dmtpeer$ID HOST=dmthost$ID CTR=dmtctr$ID
NET=10.$N
PORT_RX=5201 PORT_TX=5202 PORT_DROP=5203 PORT_BUSY=5204
WORK=$(mktemp -d)
export DEVMEMTCP_EMU_DIR=${DEVMEMTCP_EMU_DIR:-$WORK/emu} DEVMEMTCP_JOURNAL_DIR=${DEVMEMTCP_JOURNAL_DIR:-$WORK/journal}
FAILED=0

say() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
bad() { printf 'FAIL: %s\n' "$*"; FAILED=1; }
dmt() { $DMT "$@"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

cleanup() {
    set +e
    if [[ -z ${KEEP:-} ]]; then
        jobs -p | xargs -r kill 2>/dev/null
        ip netns del "$PEER" 2>/dev/null; ip netns del "$HOST" 2>/dev/null; ip netns del "$CTR" 2>/dev/null
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# a plain TCP sender of ncdevmem's pattern (period 7) and a validating receiver
send_pattern() {  # ns addr port bytes
    in_ns "$1" python3 - "$2" "$3" "$4" <<'EOF'
import socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = bytes((i % 7 + 1) if i % 7 != 6 else 10 for i in range(7 * 9362))
for _ in range(100):
    try:
        s = socket.create_connection((addr, port), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
left = n
while left:
    chunk = block[: min(left, len(block))]
    s.sendall(chunk)
    left -= len(chunk)
s.close()
EOF
}
recv_pattern() {  # ns addr port -> prints bytes received, exits 1 on a mismatch
    in_ns "$1" python3 - "$2" "$3" <<'EOF'
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((addr, port)); ls.listen(1); ls.settimeout(60)
c, _ = ls.accept(); c.settimeout(30)
off = 0
try:
    while True:
        data = c.recv(1 << 20)
        if not data:
            break
        for j, b in enumerate(data):
            i = off + j
            want = 10 if i % 7 == 6 else i % 7 + 1
            if b != want:
                print(f"mismatch at {i}: {b} != {want}"); sys.exit(1)
        off += len(data)
except TimeoutError:
    pass
print(off)
EOF
}

say "namespaces: peer $PEER, host $HOST, container $CTR"
for ns in "$PEER" "$HOST" "$CTR"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add p0 netns "$PEER" type veth peer name eth-phys netns "$HOST"
ip link add p1 netns "$PEER" type veth peer name eth-none netns "$HOST"
ip link add nk-host netns "$HOST" type veth peer name nk-ctr netns "$CTR"
ip -n "$PEER" addr add "$NET.1.2/24" dev p0; ip -n "$PEER" link set p0 up
ip -n "$PEER" addr add "$NET.3.2/24" dev p1; ip -n "$PEER" link set p1 up
ip -n "$HOST" addr add "$NET.1.1/24" dev eth-phys; ip -n "$HOST" link set eth-phys up
ip -n "$HOST" addr add "$NET.3.1/24" dev eth-none; ip -n "$HOST" link set eth-none up
ip -n "$HOST" addr add "$NET.2.1/24" dev nk-host; ip -n "$HOST" link set nk-host up
ip -n "$CTR" addr add "$NET.2.2/24" dev nk-ctr; ip -n "$CTR" link set nk-ctr up
ip -n "$CTR" route add default via "$NET.2.1"
ip -n "$PEER" route add "$NET.2.0/24" via "$NET.1.1"
in_ns "$HOST" sysctl -qw net.ipv4.ip_forward=1

say "emulated netkit pair nk-host (primary, $HOST) / nk-ctr (guest, $CTR); eth-phys, eth-none emulated devmem NICs"
dmt emulate netkit --netns "$HOST" --primary nk-host --guest nk-ctr --guest-netns "$CTR"
dmt emulate nic eth-none --netns "$HOST" --netmem-tx dma

say "host: set up eth-phys for the container's flow (header split, RSS over 0..2, rule -> queue 3)"
dmt setup eth-phys --netns "$HOST" --backend emulated --listen "$NET.2.2" --port $PORT_RX --queues 3:1

say "host: a devmem receiver holding queue 2 of eth-phys (for the memory-provider refusal)"
in_ns "$HOST" $DMT recv --listen "$NET.1.1" --port $PORT_BUSY --ifname eth-phys --queues 2:1 \
    --no-nic-config --backend emulated --json >"$WORK/busy.json" 2>"$WORK/busy.err" &
BUSY=$!
for _ in $(seq 100); do
    in_ns "$HOST" ss -ltn | grep -q ":$PORT_BUSY " && break; sleep 0.1
done

refuse() {  # expected-errno expected-extack -- lease args...
    local want_errno=$1 want_text=$2; shift 2
    local out rc=0
    out=$(in_ns "$HOST" $DMT lease --backend emulated "$@" 2>&1) || rc=$?
    if [[ $rc -eq 2 && $out == *"$want_errno"* && $out == *"$want_text"* ]]; then
        ok "lease $* -> $want_errno${want_text:+ \"$want_text\"}"
        printf '    %s\n' "$(grep -m1 'error:' <<<"$out")"
    else
        bad "lease $*: expected $want_errno $want_text, got (rc $rc): $out"
    fi
}

say "queue-create refusals (errno and extack as netdev_nl_queue_create_doit gives them)"
refuse EINVAL "Lease ifindex cannot be the same as queue creation ifindex" --guest eth-phys --phys eth-phys --queue 3
refuse EINVAL "Device is not a virtual device" --guest eth-none --phys eth-phys --queue 3
refuse EINVAL "Lease device is a virtual device" --guest nk-ctr --netns "$CTR" --phys nk-host --queue 0
dmt emulate nic eth-none --netns "$HOST" --queue-mgmt off >/dev/null
refuse EINVAL "Lease device does not support queue management operations" --guest nk-ctr --netns "$CTR" --phys eth-none --queue 0
dmt emulate nic eth-none --netns "$HOST" --queue-mgmt on >/dev/null
refuse ERANGE "" --guest nk-ctr --netns "$CTR" --phys eth-phys --queue 99
refuse EBUSY "Lease device queue in use by memory provider" --guest nk-ctr --netns "$CTR" --phys eth-phys --queue 2
dmt emulate nic eth-phys --netns "$HOST" --xsk 1 >/dev/null
refuse EBUSY "Lease device queue in use by AF_XDP" --guest nk-ctr --netns "$CTR" --phys eth-phys --queue 1
dmt emulate nic eth-phys --netns "$HOST" --xsk '' >/dev/null
refuse EOPNOTSUPP "Device is unable to create a new queue" --guest nk-host --phys eth-phys --queue 3

say "lease: queue 3 of eth-phys to nk-ctr"
in_ns "$HOST" $DMT lease --backend emulated --guest nk-ctr --phys eth-phys --queue 3 --netns "$CTR"
refuse EBUSY "Lease device queue is already leased" --guest nk-ctr --netns "$CTR" --phys eth-phys --queue 3
refuse EOPNOTSUPP "Leasing multiple queues from different devices not supported" --guest nk-ctr --netns "$CTR" --phys eth-none --queue 0
refuse EINVAL "Device is unable to create a new queue" --guest nk-ctr --netns "$CTR" --phys eth-phys --queue 0

send_pattern "$HOST" "$NET.1.1" $PORT_BUSY 4096 || true
wait $BUSY || bad "the receiver holding queue 2 failed: $(cat "$WORK/busy.err")"

say "info: the lease on both sides (queue-get's lease nest)"
dmt info --backend emulated --netns "$HOST" eth-phys
dmt info --backend emulated --netns "$CTR" nk-ctr

say "RX: inside $CTR, recv on nk-ctr (the leased queue) from the peer"
in_ns "$CTR" $DMT recv --listen "$NET.2.2" --port $PORT_RX --ifname nk-ctr --no-nic-config \
    --backend emulated --validate 7 --json >"$WORK/rx.json" &
RX=$!
for _ in $(seq 100); do in_ns "$CTR" ss -ltn | grep -q ":$PORT_RX " && break; sleep 0.1; done
send_pattern "$PEER" "$NET.2.2" $PORT_RX $((8 << 20))
if wait $RX && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); \
        sys.exit(0 if d['validated'] and d['bytes'] == 8 << 20 and d['frags'] > 0 \
        and d['non_page_aligned_frags'] > 0 else 1)" "$WORK/rx.json"; then
    ok "received $((8 << 20)) bytes into the dma-buf inside the container, validated: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('frags', d['frags'], 'non_page_aligned_frags', d['non_page_aligned_frags'], 'sizes', d['frag_sizes'])" "$WORK/rx.json")"
else
    bad "container RX: $(cat "$WORK/rx.json")"
fi

say "TX: inside $CTR, send from the dma-buf through nk-ctr and eth-phys to the peer"
recv_pattern "$PEER" "$NET.1.2" $PORT_TX >"$WORK/tx.out" &
TXR=$!
for _ in $(seq 100); do in_ns "$PEER" ss -ltn | grep -q ":$PORT_TX " && break; sleep 0.1; done
in_ns "$CTR" $DMT send "$NET.1.2" --port $PORT_TX --ifname nk-ctr --bytes 4M --validate 7 --backend emulated --json \
    >"$WORK/tx.json"
if wait $TXR && [[ $(cat "$WORK/tx.out") == $((4 << 20)) ]]; then
    ok "the peer received $((4 << 20)) bytes sent from the container's dma-buf, validated"
else
    bad "container TX: peer saw $(cat "$WORK/tx.out")"
fi

say "TX through a NONE device: host route to the peer via eth-none (netmem TX none)"
dmt emulate nic eth-none --netns "$HOST" --netmem-tx none
ip -n "$HOST" route add "$NET.1.2/32" dev eth-none
recv_pattern "$PEER" "$NET.1.2" $PORT_DROP >"$WORK/drop.out" &
DROPR=$!
for _ in $(seq 100); do in_ns "$PEER" ss -ltn | grep -q ":$PORT_DROP " && break; sleep 0.1; done
rc=0
in_ns "$CTR" $DMT send "$NET.1.2" --port $PORT_DROP --ifname nk-ctr --bytes 1M --validate 7 --backend emulated \
    >/dev/null 2>"$WORK/drop.err" || rc=$?
drops=$(dmt info --backend emulated --netns "$HOST" eth-none --json | python3 -c \
    "import json,sys; print(json.load(sys.stdin)['devices'][0]['tx_dropped'])")
if [[ $rc -ne 0 && $drops -gt 0 ]]; then
    ok "the send did not complete (exit $rc: $(grep -m1 error: "$WORK/drop.err")); eth-none tx_dropped $drops"
else
    bad "TX through NONE: exit $rc, tx_dropped $drops"
fi
kill $DROPR 2>/dev/null || true
ip -n "$HOST" route del "$NET.1.2/32" dev eth-none

say "undo: restore eth-phys (the lease and the NIC settings, from the undo journal), the netkit pair"
dmt restore eth-phys --netns "$HOST"
leases=$(dmt info --backend emulated --netns "$HOST" eth-phys --json | python3 -c \
    "import json,sys; print(sum(q['lease'] is not None for q in json.load(sys.stdin)['devices'][0]['queues']))")
[[ $leases -eq 0 ]] && ok "restore ended the lease: no lease left on eth-phys" || bad "$leases leases left on eth-phys"
guest_q=$(dmt info --backend emulated --netns "$CTR" nk-ctr --json | python3 -c \
    "import json,sys; print(sum(q['type'] == 'rx' for q in json.load(sys.stdin)['devices'][0]['queues']))")
[[ $guest_q -eq 1 ]] && ok "nk-ctr is back to 1 RX queue" || bad "nk-ctr has $guest_q RX queues"
dmt emulate netkit --netns "$HOST" --guest nk-ctr --guest-netns "$CTR" --delete >/dev/null
[[ -z $(ls "$DEVMEMTCP_JOURNAL_DIR" 2>/dev/null | grep "\.json$") ]] && ok "no undo journal left" || bad "journals left"

if [[ $FAILED -eq 0 ]]; then say "container.sh: every step passed"; else say "container.sh: FAILED"; fi
exit $FAILED
