#!/bin/bash
# t1 = node (nft), cl = clients 10.0.0.2/.3, sv = endpoints 10.244.1.1-3
set -e
ip netns add cl; ip netns add sv
ip link add r0 netns t1 type veth peer name c0 netns cl
ip link add r1 netns t1 type veth peer name s0 netns sv
ip -n t1 addr add 10.0.0.1/24 dev r0; ip -n t1 addr add 10.244.1.254/24 dev r1
ip -n cl addr add 10.0.0.2/24 dev c0; ip -n cl addr add 10.0.0.3/24 dev c0
for a in 1 2 3; do ip -n sv addr add 10.244.1.$a/24 dev s0; done
for ns in t1 cl sv; do ip -n $ns link set lo up; done
ip -n t1 link set r0 up; ip -n t1 link set r1 up; ip -n cl link set c0 up; ip -n sv link set s0 up
ip -n cl route add default via 10.0.0.1; ip -n sv route add default via 10.244.1.254
ip netns exec t1 sysctl -qw net.ipv4.ip_forward=1
