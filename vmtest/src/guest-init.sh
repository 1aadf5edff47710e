#!/bin/sh
# PID 1 of the vm-test guest (busybox). Mounts what the tracer and its tests need, runs a smoke
# start of the tracer, then the privileged test binaries, and streams a line-marked report to the
# second serial port (/dev/ttyS1, a file on the host) as it goes, so a hang still leaves the
# output up to that point. Then powers off. Every step is bounded with `timeout`; the host also
# bounds the whole boot.
#
# Kernel command line: tracer_vm.mode=tests|smoke (default tests), tracer_vm.filter=A,B (libtest
# name filters), tracer_vm.skip=A,B (libtest --skip), tracer_vm.limit=SECONDS (per test).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# No tmpfs over /tmp or /run: the initramfs root is already in memory and writable, and the
# binaries sit at their host paths, which may be under /tmp (a CI checkout) and must stay seen.
mkdir -p /tmp /run/netns /var/run
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
NOTRACEFS=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^tracer_vm\.notracefs=//p')
# With tracer_vm.notracefs=1 tracefs is left unmounted: the tracer must mount it itself.
[ "$NOTRACEFS" = 1 ] || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
hostname tracer-vm
chmod 1777 /tmp

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^tracer_vm\.$1=//p" | tail -1; }
MODE=$(arg mode); MODE=${MODE:-tests}
LIMIT=$(arg limit); LIMIT=${LIMIT:-900}
FILTERS=$(arg filter | tr ',' ' ')
SKIPS=""; for s in $(arg skip | tr ',' ' '); do SKIPS="$SKIPS --skip $s"; done

stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3>/dev/ttyS1
say() { echo "$*" >&3; }
fact() { say "@@FACT $1 $2"; }

say "@@BEGIN"
say "@@KERNEL $(uname -r)"
fact lockdown "$(cat /sys/kernel/security/lockdown 2>/dev/null || echo absent)"
fact btf "$([ -r /sys/kernel/btf/vmlinux ] && echo yes || echo no)"
for tp in sock/inet_sock_set_state tcp/tcp_send_reset tcp/tcp_receive_reset sock/inet_sk_error_report sock/sock_recv_length; do
  fact "tracepoint:$tp" "$([ -d /sys/kernel/tracing/events/$tp ] && echo yes || echo no)"
done
fact cmdline "$(cat /proc/cmdline)"
# Netlink sock_diag for TCP (the tracer's owner lookups), from this kernel's own package.
for m in /vm/modules/*; do
  [ -e "$m" ] || continue
  case "$m" in *.xz) unxz -c "$m" > /tmp/module.ko; ko=/tmp/module.ko ;; *) ko=$m ;; esac
  err=$(insmod "$ko" 2>&1) || fact "insmod:$(basename "$m")" "failed: $err"
done
rm -f /tmp/module.ko
fact tcp_diag "$(grep -qw tcp_diag /proc/modules && echo yes || echo no)"

# With tracer_vm.harden=1 the JIT hardens every program (constant blinding): it must still load.
[ "$(arg harden)" = 1 ] && echo 2 > /proc/sys/net/core/bpf_jit_harden
fact bpf_jit_harden "$(cat /proc/sys/net/core/bpf_jit_harden 2>/dev/null)"
fact tracefs_mounted "$(grep -q ' /sys/kernel/tracing tracefs' /proc/mounts && echo yes || echo no)"
TRACER=$(cat /vm/tracer)
# The tests run this (release) tracer, not their unoptimized one: see tests/support.
export TRACER_TEST_BINARY="$TRACER"
say "@@SMOKE-BEGIN"
timeout 60 "$TRACER" --json --duration 2s -v -p 47001 > /tmp/smoke.out 2> /tmp/smoke.err
rc=$?
sed 's/^/stderr: /' /tmp/smoke.err >&3
head -1 /tmp/smoke.out | sed 's/^/stdout: /' >&3
tail -1 /tmp/smoke.out | sed 's/^/stdout: /' >&3
say "@@SMOKE-END $rc"

if [ "$MODE" = tests ]; then
  cd /tmp
  for bin in $(cat /vm/tests); do
    say "@@BINARY $bin"
    # One test per run: a failed test's own output reaches the report as soon as it ends, even
    # when a later test hangs and the host kills the boot. @@TIME gives each one's seconds.
    # shellcheck disable=SC2086
    "$bin" --ignored --list $SKIPS $FILTERS 2>/dev/null | sed -n 's/: test$//p' > /tmp/tests.list
    worst=0
    while read -r name; do
      start=$(date +%s)
      RUST_BACKTRACE=1 timeout "$LIMIT" "$bin" --ignored --exact --test-threads=1 "$name" < /dev/null >&3 2>&1
      rc=$?
      say "@@TIME $name $(( $(date +%s) - start ))"
      [ "$rc" -ne 0 ] && worst=$rc
    done < /tmp/tests.list
    say "@@EXIT $bin $worst"
  done
fi
say "@@END"
exec 3>&-
sync
poweroff -f
sleep 5
echo o > /proc/sysrq-trigger
