#!/bin/sh
# One scenario of attack.py (docs/reliability.md): test-attack.sh SCENARIO
. "$(dirname "$0")/../lib.sh"
[ -x /usr/bin/python3 ] || skip "needs /usr/bin/python3"
export T
/usr/bin/python3 "$(dirname "$0")/attack.py" "$@"
