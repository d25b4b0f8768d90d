#!/bin/sh
# The Quick start's first step, .ci/install-deps, as root without sudo (a
# fresh Debian container), as a user with sudo, and as a user without sudo
# (a clear message). Fake id, sudo and apt-get record what would have run.
set -u
src="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
mkdir -p "$tmp/bin"
cat >"$tmp/bin/apt-get" <<'X'
#!/bin/sh
echo "apt-get $1 uid=$FAKE_UID" >>"$LOG"
X
cat >"$tmp/bin/sudo" <<'X'
#!/bin/sh
echo "sudo" >>"$LOG"
FAKE_UID=0 exec "$@"
X
cat >"$tmp/bin/id" <<'X'
#!/bin/sh
echo "$FAKE_UID"
X
chmod +x "$tmp/bin/"*

run() { # run UID PATH -> exit code; the log in $LOG
    LOG="$tmp/log" FAKE_UID="$1" PATH="$2" sh "$src/.ci/install-deps" >"$tmp/out" 2>&1
}
# /bin holds sh, env, grep; hide the real sudo by putting only our bin first
# and testing the no-sudo case with a PATH lacking it.
export LOG="$tmp/log"
: >"$tmp/log"
if ! run 0 "$tmp/bin:/usr/bin:/bin"; then echo "as root: failed"; cat "$tmp/out"; fail=1; fi
if grep -q sudo "$tmp/log"; then echo "as root: used sudo"; fail=1; fi
grep -q "apt-get install uid=0" "$tmp/log" || { echo "as root: no apt-get install"; fail=1; }

: >"$tmp/log"
if ! run 1000 "$tmp/bin:/usr/bin:/bin"; then echo "with sudo: failed"; cat "$tmp/out"; fail=1; fi
grep -q sudo "$tmp/log" || { echo "as a user: sudo not used"; fail=1; }
grep -q "apt-get install uid=0" "$tmp/log" || { echo "as a user: apt-get not run as root"; fail=1; }

mkdir -p "$tmp/nosudo"
for t in apt-get id; do cp "$tmp/bin/$t" "$tmp/nosudo/"; done
for t in sh env grep dirname cat node npm; do
    p=$(command -v $t) && ln -sf "$p" "$tmp/nosudo/$t"
done
: >"$tmp/log"
if run 1000 "$tmp/nosudo"; then echo "without sudo: succeeded as a user"; fail=1; fi
grep -q "run this as root, or install sudo" "$tmp/out" || { echo "without sudo: no clear message"; cat "$tmp/out"; fail=1; }

[ $fail -eq 0 ] && echo "install_deps_test: ok"
exit $fail
