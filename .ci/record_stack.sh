#!/usr/bin/env bash
# Print the installed versions of a Python environment as pip constraints: the tested stack.
# Usage: bash .ci/record_stack.sh [PYTHON]   (default: python)
# The project itself (editable) is left out; torch's local build label (+cpu) is dropped so that
# `pip install -c` accepts the file on any machine (install the CPU build first, as the README says).
set -euo pipefail
python=${1:-python}
echo "# Known-good versions: the last green CI run (.ci/run) used exactly these, on $("$python" -c 'import platform; print(platform.python_version())') / CPU."
echo "# Install the tested stack with: pip install -c .ci/tested-stack.txt -e \".[dev]\""
"$python" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^lit-idpo' | sed -E 's/^(torch==[^+]+)\+[a-z0-9.]+$/\1/' | LC_ALL=C sort -f
