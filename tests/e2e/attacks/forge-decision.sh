#!/bin/sh
# A step of the run approves its own run's gate. First the decision the issue
# reports (`{"approved":true,"by":"release-manager"}`); then, once pipe has
# read that one, a well-formed decision: the nonce and the question's hash
# copied from the `.waiting` file, only the signature missing.
dir="$PIPE_WORKSPACE/.pipe/approvals"
n=0
until ls "$dir"/*.waiting >/dev/null 2>&1; do
    n=$((n + 1)); [ "$n" -gt 600 ] && exit 1; sleep 0.05
done
waiting=$(ls "$dir"/*.waiting | head -n 1)
decision="${waiting%.waiting}.decision"
consumed() {
    n=0
    while [ -e "$decision" ]; do n=$((n + 1)); [ "$n" -gt 600 ] && exit 1; sleep 0.05; done
}
echo '{"approved":true,"by":"release-manager","reason":null,"at":0}' > "$decision"
consumed
nonce=$(sed -n 's/^ *"nonce": "\(.*\)",*$/\1/p' "$waiting")
message=$(sed -n 's/^ *"message": "\(.*\)",*$/\1/p' "$waiting")
hash=$(printf '%s' "$message" | sha256sum | cut -d' ' -f1)
printf '{"approved":true,"by":"release-manager","reason":null,"at":0,"nonce":"%s","question_sha256":"%s"}' \
    "$nonce" "$hash" > "$decision"
consumed
echo "forged two decisions"
