#!/bin/bash
# `cargo xtask bench hooks`: bulk TCP through a node namespace with nothing, the vpcep TC
# program, or the vpcep XDP program on the consumer-facing veth (unmanaged NIC: parse,
# count, pass). iperf3, 5 s, 3 runs each; every namespace and process is removed on exit.
set -u
VPCEP_BIN=${1:?usage: bench-hooks.sh PATH-TO-vpcep}
S=$$; N=vpcep-hk-n-$S; C=vpcep-hk-c-$S; B=vpcep-hk-b-$S
for n in $N $C $B; do ip netns add $n; done
cleanup() { [ -n "${SRV:-}" ] && kill $SRV 2>/dev/null; [ -n "${RUNP:-}" ] && kill -INT $RUNP 2>/dev/null; sleep 0.5; for n in $C $B $N; do ip netns del $n 2>/dev/null; done; }
trap cleanup EXIT
ip -n $N link add vc type veth peer name eth0 netns $C
ip -n $N link add vb type veth peer name eth0 netns $B
ip -n $N addr add 10.1.0.1/24 dev vc; ip -n $N addr add 10.2.0.1/24 dev vb
ip -n $C addr add 10.1.0.2/24 dev eth0; ip -n $B addr add 10.2.0.2/24 dev eth0
for n in $C $B; do ip -n $n link set eth0 up; ip -n $n link set lo up; done
ip -n $N link set vc up; ip -n $N link set vb up
ip -n $C route add default via 10.1.0.1; ip -n $B route add default via 10.2.0.1
ip netns exec $N sysctl -qw net.ipv4.ip_forward=1
ip netns exec $B iperf3 -s -B 10.2.0.2 -D -I /tmp/hk-$S.pid
sleep 0.5; SRV=$(cat /tmp/hk-$S.pid)
measure() {
  for r in 1 2 3; do
    ip netns exec $C iperf3 -c 10.2.0.2 -t 5 -J 2>/dev/null | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
  done | tr '\n' ' '
}
echo "plain routing: $(measure) Gbit/s"
for mode in tc xdp; do
  ip netns exec $N "$VPCEP_BIN" dataplane run --iface vc --mode $mode --duration 40 > /tmp/hk-$S-run.log 2>&1 &
  RUNP=$!
  for t in $(seq 1 40); do grep -q attached /tmp/hk-$S-run.log && break; sleep 0.25; done
  echo "$mode program on vc: $(measure) Gbit/s"
  kill -INT $RUNP; wait $RUNP 2>/dev/null; RUNP=
done
rm -f /tmp/hk-$S.pid /tmp/hk-$S-run.log
