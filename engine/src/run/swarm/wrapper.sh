# pipe's wrapper around a shipped step (PID 1 of the task's container).
# Run as `sh -c THIS pipe-step COMMAND...`; @NONCE@ is replaced by pipe.
"$@"; rc=$?
# Nothing of the step may write after this point: every other process of the
# container goes (SIGKILL, kill(-1) from PID 1), and the block below is printed
# only once none is left alive (a zombie has closed its files). Whatever the
# step printed before, fake markers included, then precedes the block.
kill -9 -1 2>/dev/null
n=0
while :; do
    live=
    for s in /proc/[0-9]*/stat; do
        [ "$s" = "/proc/$$/stat" ] && continue
        read -r l 2>/dev/null <"$s" || continue
        case ${l##*) } in Z*|X*|x*) ;; *) live=$s ;; esac
    done
    [ -z "$live" ] && break
    n=$((n + 1))
    [ "$n" -lt 50 ] || { echo "pipe: a process of the step outlived SIGKILL ($live): its changes are not given back" >&2; exit "$rc"; }
    kill -9 -1 2>/dev/null
    sleep 0.1 2>/dev/null || sleep 1
done
cd / || exit "$rc"
printf '\n::pipe-ship:@NONCE@:begin\n'
find workspace pipe/outputs \( -name .git -o -name .pipe \) -prune -o -newer pipe/shipped -type f -exec sh -c '
for f; do
    case "$f" in *"
"*) continue ;; esac
    m=644; [ -x "$f" ] && m=755
    echo "::pipe-ship:@NONCE@:file $m $f"
    base64 "$f" || exit 1
done' sh {} + || { echo "pipe: the step's changes could not be read back" >&2; exit "$rc"; }
echo "::pipe-ship:@NONCE@:end"
exit "$rc"
