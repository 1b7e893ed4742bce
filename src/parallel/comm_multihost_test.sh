#!/usr/bin/env bash
# Two hosts for real: a multi-node job's path is TCP between hosts, not shared memory. Makes two
# network namespaces joined by a veth pair, starts mpirun inside the first with two ranks in
# each (an rsh agent that enters the namespace of the address it is given, instead of ssh),
# OpenMPI restricted to the tcp BTL on that link, and runs the MpiComm tests across them,
# the hierarchical all-reduce (two nodes of two ranks) among them.
#
#   comm_multihost_test.sh TEST_BINARY
#
# Exits 77 (CTest: skipped) with the reason when namespaces cannot be made or entered here (not
# root, no iproute2, no mpirun, the kernel refuses, or a chroot); the namespaces are removed on
# every exit path.
set -euo pipefail

binary=${1:?usage: comm_multihost_test.sh TEST_BINARY}
skip() { echo "SKIPPED: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
command -v mpirun >/dev/null || skip "mpirun (openmpi-bin) is not installed"

tag="strata-mh-$$"
ns_a="$tag-a"
ns_b="$tag-b"
net="10.250.$(( $$ % 250 ))"
addr_a="$net.1"
addr_b="$net.2"
if_a="sta$$"  # interface names have at most 15 characters
if_b="stb$$"
work=$(mktemp -d)

cleanup() {
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns_a" 2>/dev/null || skip "the kernel refused 'ip netns add' here"
ip netns add "$ns_b" 2>/dev/null || skip "the kernel refused a second network namespace"
# Entering a namespace remounts /sys inside a new mount namespace, which fails where / is not
# a mount point (inside a chroot, as scripts/fresh_machine_check.sh runs the tests).
if ! probe=$(ip netns exec "$ns_a" true 2>&1); then
  skip "'ip netns exec' cannot enter a namespace here: $probe"
fi
ip link add "$if_a" netns "$ns_a" type veth peer name "$if_b" netns "$ns_b" 2>/dev/null ||
  skip "the kernel refused a veth pair between the namespaces"
ip -n "$ns_a" addr add "$addr_a/24" dev "$if_a"
ip -n "$ns_b" addr add "$addr_b/24" dev "$if_b"
for ns in "$ns_a" "$ns_b"; do
  ip -n "$ns" link set lo up
done
ip -n "$ns_a" link set "$if_a" up
ip -n "$ns_b" link set "$if_b" up

# Each host also gets a hostname of its own (a UTS namespace) and a temporary directory of its
# own: OpenMPI names its session files after the hostname, and two "hosts" on one machine that
# share both would share those files (and crash).
mkdir -p "$work/$ns_a" "$work/$ns_b"
# The rsh agent: `agent HOST COMMAND...` runs COMMAND on the host (namespace) owning HOST.
cat >"$work/agent" <<EOF
#!/bin/sh
host=\$1
shift
case "\$host" in
  $addr_a) ns=$ns_a ;;
  $addr_b) ns=$ns_b ;;
  *) echo "multihost agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts env TMPDIR="$work/\$ns" /bin/sh -c "hostname \$ns && \$*"
EOF
chmod +x "$work/agent"

echo "multihost: $ns_a ($addr_a) <-> $ns_b ($addr_b), 2 ranks in each, tcp only"
command -v unshare >/dev/null || skip "unshare (util-linux) is not installed"
launch="mpirun --allow-run-as-root --oversubscribe --host $addr_a:2,$addr_b:2 -n 4 \
  --mca plm_rsh_agent $work/agent --mca pml ob1 --mca btl tcp,self \
  --mca btl_tcp_if_include $net.0/24 --mca oob_tcp_if_include $net.0/24 \
  -x STRATA_EXPECT_NODES=2 $binary"
timeout -k 10 300 ip netns exec "$ns_a" unshare --uts env TMPDIR="$work/$ns_a" \
  /bin/sh -c "hostname $ns_a && exec $launch"
