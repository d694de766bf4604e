#!/bin/bash
# `cargo xtask bench overlay`: a consumer VM on node 1, the backend VM on node 2, the nodes
# joined by an underlay veth (192.168.50.0/24, MTU 1500; VM MTU 1450 as on any VXLAN cloud
# network), two ways on the same namespaces, in turns:
#   vxlan  — plain kernel VXLAN (VNI 200, UDP 4790) routing 10.0.0.2 <-> 10.0.0.5, no
#            translation;
#   vpcep  — endpoint 10.0.0.100 on node 1 whose service's backend is on node 2: translation
#            and SNAT on node 1, the overlay device (external mode, UDP 4789) both ways.
# Load generator on CPU 0, receiver/server on CPU 1. Bounded in time; everything removed on
# exit.
set -u
VPCEP_BIN=${1:?usage: bench-overlay.sh PATH-TO-vpcep PATH-TO-vpcep-load [RUNS] [SECS]}
LOAD=${2:?usage: bench-overlay.sh PATH-TO-vpcep PATH-TO-vpcep-load [RUNS] [SECS]}
RUNS=${3:-3}
SECS=${4:-3}
S=$$; N1=vpcep-ov-n1-$S; N2=vpcep-ov-n2-$S; C=vpcep-ov-c-$S; B=vpcep-ov-b-$S
TMP=$(mktemp -d /tmp/vpcep-ov-$S.XXXX)
RES=$TMP/results
PIDS=()
RUNP=()
cleanup() {
  for p in "${RUNP[@]}"; do kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for n in $C $B $N1 $N2; do ip netns del $n 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "topology: nodes $N1 (consumer 10.0.0.2) and $N2 (backend 10.0.0.5) on an underlay veth"
for n in $N1 $N2 $C $B; do ip netns add $n || exit 1; done
ip -n $N1 link add ul0 type veth peer name ul0 netns $N2
ip -n $N1 addr add 192.168.50.1/24 dev ul0
ip -n $N2 addr add 192.168.50.2/24 dev ul0
ip -n $N1 link add tapc type veth peer name eth0 netns $C
ip -n $N2 link add tapb type veth peer name eth0 netns $B
ip -n $C link set eth0 address 02:00:00:00:00:02
ip -n $B link set eth0 address 02:00:00:00:00:05
ip -n $C addr add 10.0.0.2/24 dev eth0
ip -n $B addr add 10.0.0.5/24 dev eth0
for n in $C $B; do ip -n $n link set eth0 mtu 1450 up; ip -n $n link set lo up; done
ip -n $C route add default via 10.0.0.1
ip -n $B route add default via 10.0.0.1
i=1
for n in $N1 $N2; do
  ip -n $n link set lo up
  ip -n $n link set ul0 up
  ip -n $n link add vx0 type vxlan dstport 4789 external
  ip -n $n link add vxp type vxlan id 200 dstport 4790 remote 192.168.50.$((3 - i)) dev ul0
  ip -n $n addr add 10.9.0.$i/24 dev vxp
  ip -n $n link set vx0 up
  ip -n $n link set vxp up
  ip netns exec $n sysctl -qw net.ipv4.ip_forward=1
  i=$((i + 1))
done
ip -n $N1 addr add 10.0.0.1/32 dev tapc; ip -n $N1 link set tapc up
ip -n $N2 addr add 10.0.0.1/32 dev tapb; ip -n $N2 link set tapb up
ip netns exec $N1 sysctl -qw net.ipv4.conf.tapc.proxy_arp=1
ip netns exec $N2 sysctl -qw net.ipv4.conf.tapb.proxy_arp=1
ip -n $N1 route add 10.0.0.2/32 dev tapc
ip -n $N1 route add 10.0.0.5/32 via 10.9.0.2 dev vxp
ip -n $N2 route add 10.0.0.5/32 dev tapb
ip -n $N2 route add 10.0.0.2/32 via 10.9.0.1 dev vxp
ip netns exec $C sysctl -qw net.ipv4.ip_local_port_range="10000 65000"

cat > $TMP/n1.toml <<EOF
[node]
snat_ip = "198.19.128.10"
port_range = [1024, 65535]
vmac = "02:fe:00:00:00:01"

[overlay]
device = "vx0"
inner_mtu = 1450

[[snat_owner]]
snat_ip = "198.19.128.10"
underlay_ip = "192.168.50.1"

[[snat_owner]]
snat_ip = "198.19.128.11"
underlay_ip = "192.168.50.2"

[[nic]]
iface = "tapc"
vpc = 101
ip = "10.0.0.2"
mac = "02:00:00:00:00:02"
gateway = "10.0.0.1"

[[service]]
id = 3
backend_ip = "10.0.0.5"
backend_vpc = 200
remote_node = "192.168.50.2"
backend_mac = "02:00:00:00:00:05"
ports = [
  { client = 8080, server = 80, protocol = "TCP" },
  { client = 8082, server = 5201, protocol = "TCP" },
  { client = 5353, server = 53, protocol = "UDP" },
]

[[endpoint]]
id = 7
vpc = 101
ip = "10.0.0.100"
service = 3
accepted = true
EOF
cat > $TMP/n2.toml <<EOF
[node]
snat_ip = "198.19.128.11"
port_range = [1024, 65535]
vmac = "02:fe:00:00:00:01"

[overlay]
device = "vx0"
inner_mtu = 1450

[[snat_owner]]
snat_ip = "198.19.128.10"
underlay_ip = "192.168.50.1"

[[snat_owner]]
snat_ip = "198.19.128.11"
underlay_ip = "192.168.50.2"

[[nic]]
iface = "tapb"
vpc = 200
ip = "10.0.0.5"
mac = "02:00:00:00:00:05"
gateway = "10.0.0.1"
EOF

TOTAL=$(( RUNS * 2 * (4 * SECS + 12) + 60 ))
[ $TOTAL -gt 3600 ] && TOTAL=3600
ip netns exec $B taskset -c 1 "$LOAD" tcp-server 10.0.0.5:80 $TOTAL > /dev/null & PIDS+=($!)
ip netns exec $B taskset -c 1 timeout $TOTAL iperf3 -s -B 10.0.0.5 -p 5201 > /dev/null 2>&1 & PIDS+=($!)
sleep 0.5

mode_on() {
  if [ $1 = vpcep ]; then
    RUNP=()
    for n in 1 2; do
      ns=vpcep-ov-n$n-$S
      ip netns exec $ns "$VPCEP_BIN" dataplane run --config $TMP/n$n.toml --mode tc \
        > $TMP/run$n.log 2>&1 &
      RUNP+=($!)
      for _ in $(seq 1 80); do grep -q attached $TMP/run$n.log && break; sleep 0.25; done
      grep -q attached $TMP/run$n.log || { cat $TMP/run$n.log; exit 1; }
    done
  fi
  for n in $C $B; do ip -n $n neigh flush dev eth0; done
}
mode_off() {
  for p in "${RUNP[@]}"; do kill -INT $p; wait $p 2>/dev/null; done
  RUNP=()
}
target() { [ $1 = vxlan ] && echo "10.0.0.5 $2" || echo "10.0.0.100 $3"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

measure() {
  local m=$1 r=$2 ip port v
  read ip port <<< "$(target $m 53 5353)"
  ip netns exec $B taskset -c 1 "$LOAD" udp-sink 10.0.0.5:53 $((SECS + 3)) > $TMP/sink.json &
  local sink=$!
  sleep 0.3
  ip netns exec $C taskset -c 0 "$LOAD" udp-blast $ip:$port $SECS 18 > /dev/null
  wait $sink
  echo "$m $r udp_pps $(json 'd["pps"]' < $TMP/sink.json)" >> $RES
  read ip port <<< "$(target $m 80 8080)"
  v=$(ip netns exec $C taskset -c 0 "$LOAD" cps $ip:$port $SECS 2 | json 'd["cps"]')
  echo "$m $r cps $v" >> $RES
  read ip port <<< "$(target $m 5201 8082)"
  v=$(ip netns exec $C taskset -c 0 iperf3 -c $ip -p $port -t $SECS -A 0 -J 2>/dev/null \
      | json '"%.3f" % (d["end"]["sum_received"]["bits_per_second"]/1e9)')
  echo "$m $r bulk1 ${v:-0}" >> $RES
}

# VPCEP_BENCH_MODES="vpcep" (or "vxlan") runs one side only, e.g. under a profiler.
for r in $(seq 1 $RUNS); do
  for m in ${VPCEP_BENCH_MODES:-vxlan vpcep}; do
    echo "run $r/$RUNS: $m (UDP pps, connections/s, bulk; ${SECS} s each)"
    mode_on $m
    measure $m $r
    mode_off $m
  done
done

python3 - "$RES" <<'EOF'
import statistics, sys
val = {}
for m, r, k, v in (l.split() for l in open(sys.argv[1]) if l.strip()):
    val.setdefault((m, k), []).append(float(v))
spec = [("udp_pps", "UDP 18-byte datagrams received", "pps"),
        ("cps", "TCP connections/s (1-byte req/resp)", "conn/s"),
        ("bulk1", "TCP bulk, 1 stream", "Gbit/s")]
print()
print("| measure (remote backend) | plain VXLAN routing | vpcep through the overlay | vpcep / plain |")
print("|---|---:|---:|---:|")
for k, label, unit in spec:
    med = {m: statistics.median(val.get((m, k), [0])) for m in ("vxlan", "vpcep")}
    fmt = (lambda x: f"{x:,.0f}") if unit != "Gbit/s" else (lambda x: f"{x:.2f}")
    ratio = med["vpcep"] / med["vxlan"] if med["vxlan"] else 0
    print(f"| {label} ({unit}) | {fmt(med['vxlan'])} | {fmt(med['vpcep'])} | {ratio:.3f} |")
print()
print("Every run (medians above):")
for k, *_ in spec:
    print(f"  {k:8}", "  ".join(f"{m}: " + " ".join(f"{x:g}" for x in val.get((m, k), []))
                            for m in ("vxlan", "vpcep")))
EOF
