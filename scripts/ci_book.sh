#!/usr/bin/env bash
# What CI needs for the book, run by .ci/run with the CI venv first on PATH:
#   1. headless Chromium for tests/test_browser.py (Debian's `chromium`; installed if missing);
#   2. a check that the committed JavaScript in book/_vendor is complete (MathJax, require.js,
#      the ipywidgets html-manager: math and widgets render offline). Nothing is downloaded:
#      scripts/vendor_js.sh is only for changing their versions;
#   3. the strict book build into _build/html (execution is off: about 3 s).
# The tests (tests/test_book_build.py, tests/test_browser.py) build their own copy in a
# temporary folder; this build is the one to publish or to look at.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# 1. Chromium.
if ! command -v chromium >/dev/null 2>&1; then
    echo "[book] installing chromium (apt)"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "[book] FAIL: chromium is missing and this user cannot apt-get install it" >&2
            exit 1
        }
        sudo="sudo -n"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
fi
echo "[book] $(chromium --version 2>/dev/null | head -1)"

# 2. Vendored JavaScript (committed).
for f in mathjax/tex-chtml.js mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff \
         requirejs/require.js html-manager/require-paths.js html-manager/embed-amd.js; do
    [ -s "book/_vendor/$f" ] || {
        echo "[book] FAIL: book/_vendor/$f is missing; run scripts/vendor_js.sh and commit" >&2
        exit 1
    }
done

# 3. Strict build.
start=$(date +%s)
jupyter-book build -W -n --keep-going .
echo "[book] built _build/html in $(( $(date +%s) - start )) s"
