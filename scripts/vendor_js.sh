#!/usr/bin/env bash
# Refresh the JavaScript the built book needs to render math and widgets without a network.
#
# The result, book/_vendor/, is COMMITTED (about 5.5 MB), so building and viewing the book never
# needs this script or the network. Run it only to change a version below; it fetches the
# packages with `npm pack` from the npm registry and copies the minimal set of files:
#   mathjax/      tex-chtml.js + the CommonHTML woff-v2 fonts it loads + LICENSE
#                 + the TeX extensions it autoloads on first use (\boldsymbol, \color, \cancel...)
#   requirejs/    require.js (MIT; its header carries the licence) + package.json
#   html-manager/ embed-amd.js (self-contained ipywidgets 8 renderer) + the three Font Awesome
#                 woff2 files its CSS loads + package.json + embed.js.LICENSE.txt + LICENSE (the
#                 ipywidgets monorepo's BSD-3-Clause text, taken from @jupyter-widgets/base)
#                 + require-paths.js (written here, see below)
# _config.yml points Sphinx at them (html_static_path, mathjax_path, nb_ipywidgets_js).
# They must not live in a root _static/ folder: Jupyter Book 1 would inject every .js found there
# into every page (see ../shared/guides/toolchain.md section 7).
set -euo pipefail

MATHJAX_VERSION=3.2.2
REQUIREJS_VERSION=2.3.8
HTML_MANAGER_VERSION=1.0.15   # @jupyter-widgets/html-manager 1.x renders ipywidgets 8 state
WIDGETS_BASE_VERSION=6.0.11   # only for its LICENSE: html-manager 1.0.15's tarball has none

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/book/_vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "vendor_js.sh: npm is needed (apt-get install -y npm)" >&2; exit 1; }

cd "$work"
npm pack --silent "mathjax@$MATHJAX_VERSION" "requirejs@$REQUIREJS_VERSION" \
    "@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION" \
    "@jupyter-widgets/base@$WIDGETS_BASE_VERSION" >/dev/null
for tgz in *.tgz; do mkdir "${tgz%.tgz}"; tar -xzf "$tgz" -C "${tgz%.tgz}"; done
mj="$work/mathjax-$MATHJAX_VERSION/package"
rq="$work/requirejs-$REQUIREJS_VERSION/package"
hm="$work/jupyter-widgets-html-manager-$HTML_MANAGER_VERSION/package"
wb="$work/jupyter-widgets-base-$WIDGETS_BASE_VERSION/package"

rm -rf "$dest"
mkdir -p "$dest/mathjax/output/chtml/fonts/woff-v2" "$dest/requirejs" "$dest/html-manager"

cp "$mj/es5/tex-chtml.js" "$mj/LICENSE" "$dest/mathjax/"
cp "$mj"/es5/output/chtml/fonts/woff-v2/*.woff "$dest/mathjax/output/chtml/fonts/woff-v2/"
mkdir -p "$dest/mathjax/input/tex/extensions"
cp "$mj"/es5/input/tex/extensions/*.js "$dest/mathjax/input/tex/extensions/"
rm "$dest/mathjax/input/tex/extensions/all-packages.js"   # 215 kB bundle of the others

cp "$rq/require.js" "$rq/package.json" "$dest/requirejs/"

cp "$hm/dist/embed-amd.js" "$hm/dist/embed.js.LICENSE.txt" "$hm/package.json" "$dest/html-manager/"
# The ipywidgets monorepo's BSD-3-Clause licence, as shipped in @jupyter-widgets/base.
cp "$wb/LICENSE" "$dest/html-manager/LICENSE"
# Fonts referenced by embed-amd.js's CSS (Font Awesome, used for widget icons); woff2 is enough
# for every browser that can run MathJax 3.
grep -o '[0-9a-f]\{20\}\.woff2' "$hm/dist/embed-amd.js" | sort -u | while read -r font; do
    cp "$hm/dist/$font" "$dest/html-manager/"
done

# Our own three lines (not from npm): embed-amd.js computes its asset URL (webpack publicPath)
# from require.js's URL for its module "@jupyter-widgets/html-manager/dist/libembed-amd", which by
# default is <page folder>/@jupyter-widgets/html-manager/dist/ and 404s. Map it to this folder.
cat > "$dest/html-manager/require-paths.js" <<'JS'
/* Written by scripts/vendor_js.sh: load after require.js, before embed-amd.js (see _config.yml). */
(function () {
  var src = document.currentScript.src.split("?")[0];
  var dir = src.slice(0, src.lastIndexOf("/"));
  require.config({ paths: { "@jupyter-widgets/html-manager/dist": dir } });
})();
JS

{
    echo "Vendored by scripts/vendor_js.sh from the npm registry (npm pack). Do not edit by hand."
    echo "mathjax@$MATHJAX_VERSION $(npm view "mathjax@$MATHJAX_VERSION" dist.integrity)"
    echo "requirejs@$REQUIREJS_VERSION $(npm view "requirejs@$REQUIREJS_VERSION" dist.integrity)"
    echo "@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION" \
        "$(npm view "@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION" dist.integrity)"
} > "$dest/VENDORED.txt"

echo "vendor_js.sh: wrote $(du -sh "$dest" | cut -f1) to ${dest#"$root"/}"
