#!/bin/bash
# `cargo xtask bench e2e`: traffic from a consumer VM namespace through a node namespace to a
# backend VM namespace (both VMs in 10.0.0.0/24), three ways on the same veths, in turns:
#   plain  — the node routes 10.0.0.2 <-> 10.0.0.5 (host routes, proxy ARP), no translation;
#   nft    — nftables DNAT 10.0.0.100:port -> 10.0.0.5:port plus SNAT to 198.19.128.10,
#            with conntrack;
#   vpcep  — the vpcep TC program on tapc/tapb doing the same translation.
# Load generator on CPU 0, receiver/server on CPU 1. Every measurement is bounded in time;
# every namespace and process is removed on exit.
set -u
VPCEP_BIN=${1:?usage: bench-e2e.sh PATH-TO-vpcep PATH-TO-vpcep-load [RUNS] [SECS]}
LOAD=${2:?usage: bench-e2e.sh PATH-TO-vpcep PATH-TO-vpcep-load [RUNS] [SECS]}
RUNS=${3:-3}
SECS=${4:-3}
S=$$; N=vpcep-e2e-n-$S; C=vpcep-e2e-c-$S; B=vpcep-e2e-b-$S
TMP=$(mktemp -d /tmp/vpcep-e2e-$S.XXXX)
RES=$TMP/results
PIDS=()
RUNP=
cleanup() {
  [ -n "$RUNP" ] && kill -INT "$RUNP" 2>/dev/null && wait "$RUNP" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for n in $C $B $N; do ip netns del $n 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "topology: namespaces $N (node), $C (consumer 10.0.0.2), $B (backend 10.0.0.5)"
for n in $N $C $B; do ip netns add $n || exit 1; done
ip -n $N link add tapc type veth peer name eth0 netns $C
ip -n $N link add tapb type veth peer name eth0 netns $B
ip -n $C link set eth0 address 02:00:00:00:00:02
ip -n $B link set eth0 address 02:00:00:00:00:05
ip -n $C addr add 10.0.0.2/24 dev eth0
ip -n $B addr add 10.0.0.5/24 dev eth0
for n in $C $B; do ip -n $n link set eth0 up; ip -n $n link set lo up; done
for i in tapc tapb; do ip -n $N addr add 10.0.0.1/32 dev $i; ip -n $N link set $i up; done
ip -n $N link set lo up
ip -n $C route add default via 10.0.0.1
ip -n $B route add default via 10.0.0.1
ip -n $N route add 10.0.0.2/32 dev tapc
ip -n $N route add 10.0.0.5/32 dev tapb
ip -n $N route add 10.0.0.100/32 dev tapb
ip netns exec $N sysctl -qw net.ipv4.ip_forward=1
for i in tapc tapb; do ip netns exec $N sysctl -qw net.ipv4.conf.$i.proxy_arp=1; done
ip netns exec $C sysctl -qw net.ipv4.ip_local_port_range="10000 65000"

cat > $TMP/vpcep.toml <<EOF
[node]
snat_ip = "198.19.128.10"
port_range = [1024, 65535]
vmac = "02:fe:00:00:00:01"

[[nic]]
iface = "tapc"
vpc = 1
ip = "10.0.0.2"
mac = "02:00:00:00:00:02"
gateway = "10.0.0.1"

[[nic]]
iface = "tapb"
vpc = 2
ip = "10.0.0.5"
mac = "02:00:00:00:00:05"
gateway = "10.0.0.1"

[[service]]
id = 3
backend_ip = "10.0.0.5"
backend_vpc = 2
backend_iface = "tapb"
backend_mac = "02:00:00:00:00:05"
ports = [
  { client = 8080, server = 80, protocol = "TCP" },
  { client = 8081, server = 81, protocol = "TCP" },
  { client = 8082, server = 5201, protocol = "TCP" },
  { client = 5353, server = 53, protocol = "UDP" },
]

[[endpoint]]
id = 7
vpc = 1
ip = "10.0.0.100"
service = 3
accepted = true
EOF

cat > $TMP/nft.conf <<EOF
table ip vpcep_bench {
  chain pre {
    type nat hook prerouting priority dstnat;
    iifname "tapc" ip daddr 10.0.0.100 tcp dport 8080 dnat to 10.0.0.5:80
    iifname "tapc" ip daddr 10.0.0.100 tcp dport 8081 dnat to 10.0.0.5:81
    iifname "tapc" ip daddr 10.0.0.100 tcp dport 8082 dnat to 10.0.0.5:5201
    iifname "tapc" ip daddr 10.0.0.100 udp dport 5353 dnat to 10.0.0.5:53
  }
  chain post {
    type nat hook postrouting priority srcnat;
    oifname "tapb" ip saddr 10.0.0.2 snat to 198.19.128.10
  }
}
EOF

# Servers in the backend, on CPU 1, for the whole run (bounded).
TOTAL=$(( RUNS * 3 * (6 * SECS + 12) + 60 ))
[ $TOTAL -gt 3600 ] && TOTAL=3600
ip netns exec $B taskset -c 1 "$LOAD" tcp-server 10.0.0.5:80 $TOTAL > /dev/null & PIDS+=($!)
ip netns exec $B taskset -c 1 "$LOAD" tcp-server 10.0.0.5:81 $TOTAL > /dev/null & PIDS+=($!)
ip netns exec $B taskset -c 1 timeout $TOTAL iperf3 -s -B 10.0.0.5 -p 5201 > /dev/null 2>&1 & PIDS+=($!)
sleep 0.5

mode_on() {
  case $1 in
    nft) ip netns exec $N nft -f $TMP/nft.conf || exit 1
         ip -n $N neigh add proxy 10.0.0.100 dev tapc ;;
    vpcep) ip netns exec $N "$VPCEP_BIN" dataplane run --config $TMP/vpcep.toml --mode tc \
             > $TMP/run.log 2>&1 &
           RUNP=$!
           for _ in $(seq 1 80); do grep -q attached $TMP/run.log && break; sleep 0.25; done
           grep -q attached $TMP/run.log || { cat $TMP/run.log; exit 1; } ;;
  esac
  for n in $C $B; do ip -n $n neigh flush dev eth0; done
}
mode_off() {
  case $1 in
    nft) ip netns exec $N nft delete table ip vpcep_bench
         ip -n $N neigh del proxy 10.0.0.100 dev tapc ;;
    vpcep) kill -INT $RUNP; wait $RUNP 2>/dev/null; RUNP= ;;
  esac
}
target() { [ $1 = plain ] && echo "10.0.0.5 $2" || echo "10.0.0.100 $3"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

measure() {
  local m=$1 r=$2 ip port v
  read ip port <<< "$(target $m 53 5353)"
  ip netns exec $B taskset -c 1 "$LOAD" udp-sink 10.0.0.5:53 $((SECS + 3)) > $TMP/sink.json &
  local sink=$!
  sleep 0.3
  ip netns exec $C taskset -c 0 "$LOAD" udp-blast $ip:$port $SECS 18 > $TMP/blast.json
  wait $sink
  v=$(json 'd["pps"]' < $TMP/sink.json); echo "$m $r udp_pps $v" >> $RES
  read ip port <<< "$(target $m 80 8080)"
  v=$(ip netns exec $C taskset -c 0 "$LOAD" cps $ip:$port $SECS 2 | json 'd["cps"]')
  echo "$m $r cps $v" >> $RES
  read ip port <<< "$(target $m 5201 8082)"
  for p in 1 4; do
    v=$(ip netns exec $C taskset -c 0 iperf3 -c $ip -p $port -t $SECS -P $p -A 0 -J 2>/dev/null \
        | json '"%.3f" % (d["end"]["sum_received"]["bits_per_second"]/1e9)')
    echo "$m $r bulk$p ${v:-0}" >> $RES
  done
  read ip port <<< "$(target $m 81 8081)"
  ip netns exec $C taskset -c 0 "$LOAD" rr $ip:$port $SECS > $TMP/rr.json
  echo "$m $r rr_p50 $(json 'd["p50_us"]' < $TMP/rr.json)" >> $RES
  echo "$m $r rr_p99 $(json 'd["p99_us"]' < $TMP/rr.json)" >> $RES
}

for r in $(seq 1 $RUNS); do
  for m in plain nft vpcep; do
    echo "run $r/$RUNS: $m (UDP pps, connections/s, bulk 1 and 4 streams, RR latency; ${SECS} s each)"
    mode_on $m
    measure $m $r
    mode_off $m
  done
done

python3 - "$RES" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
val = {}
for m, r, k, v in rows:
    val.setdefault((m, k), []).append(float(v))
spec = [  # key, label, unit, higher is better, target ratio for vpcep
    ("udp_pps", "UDP 18-byte datagrams received", "pps", True, 0.97),
    ("cps", "TCP connections/s (1-byte req/resp)", "conn/s", True, 0.95),
    ("bulk1", "TCP bulk, 1 stream", "Gbit/s", True, 0.97),
    ("bulk4", "TCP bulk, 4 streams", "Gbit/s", True, 0.97),
    ("rr_p50", "1-byte RR latency p50", "us", False, None),
    ("rr_p99", "1-byte RR latency p99", "us", False, 1.03),
]
print()
print("| measure | plain | nftables | vpcep | nft / plain | vpcep / plain | target | met |")
print("|---|---:|---:|---:|---:|---:|---|---|")
for k, label, unit, up, tgt in spec:
    med = {m: statistics.median(val.get((m, k), [0])) for m in ("plain", "nft", "vpcep")}
    ratio = lambda m: med[m] / med["plain"] if med["plain"] else 0
    if tgt is None:
        t, met = "", ""
    elif up:
        t, met = f"≥ {tgt:.2f}×", "yes" if ratio("vpcep") >= tgt else "**no**"
    else:
        t, met = f"≤ {tgt:.2f}×", "yes" if ratio("vpcep") <= tgt else "**no**"
    fmt = (lambda x: f"{x:,.0f}") if unit in ("pps", "conn/s") else (lambda x: f"{x:.2f}")
    print(f"| {label} ({unit}) | {fmt(med['plain'])} | {fmt(med['nft'])} | {fmt(med['vpcep'])} "
          f"| {ratio('nft'):.3f} | {ratio('vpcep'):.3f} | {t} | {met} |")
print()
print("Every run (medians above):")
for k, *_ in spec:
    print(f"  {k:8}", "  ".join(f"{m}: " + " ".join(f"{x:g}" for x in val.get((m, k), []))
                            for m in ("plain", "nft", "vpcep")))
EOF
