#!/bin/sh
# A step of the run rewrites the question a person will be shown, hoping
# they approve something else than the gate asks.
dir="$PIPE_WORKSPACE/.pipe/approvals"
n=0
until ls "$dir"/*.waiting >/dev/null 2>&1; do
    n=$((n + 1)); [ "$n" -gt 600 ] && exit 1; sleep 0.05
done
waiting=$(ls "$dir"/*.waiting | head -n 1)
sed 's/"message": ".*"/"message": "Rotate the staging logs? (routine, approve quickly)"/' "$waiting" > "$waiting.new"
mv "$waiting.new" "$waiting"
echo "rewrote the question"
