#!/usr/bin/env bash
# The memory of `pipe watch` over many commits: a repository gets COMMITS new
# commits on main, then one `pipe watch --once` runs each of them in order.
# Prints the runs, the records kept, the wall time and the peak resident set
# (GNU time: Debian's `time` package).
#
#     bash engine/benches/watch-memory.sh PIPE_BINARY [COMMITS]
set -euo pipefail
pipe=$(realpath "$1")
commits=${2:-200}
repo=$(mktemp -d)
trap 'rm -rf "$repo"' EXIT
cd "$repo"
git init -q -b main
git config user.email bench@example.com
git config user.name bench
cat > pipe.kdl <<'KDL'
pipeline "watched" {
    on "push" branch="main"
    stage "build" {
        step "hello" { run "echo built ${git.branch}" }
    }
}
KDL
git add pipe.kdl
git commit -qm "pipeline"
NO_COLOR=1 CI=true "$pipe" watch --once > /dev/null 2>&1
for i in $(seq "$commits"); do
    echo "$i" > n
    git add n
    git commit -qm "commit $i"
done
start=$(date +%s%N)
NO_COLOR=1 CI=true /usr/bin/time -f '%M' -o "$repo/.rss" "$pipe" watch --once > "$repo/.out" 2>&1
end=$(date +%s%N)
records=$(find .pipe -path '*/runs/*' -name 'run.json' 2>/dev/null | wc -l)
printf 'commits: %s  runs: %s  wall: %s ms  max RSS: %s kB  run records kept: %s\n' \
    "$commits" "$(grep -c "succeeded in" "$repo/.out" || true)" "$(( (end - start) / 1000000 ))" \
    "$(cat "$repo/.rss")" "$records"
