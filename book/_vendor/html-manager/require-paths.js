/* Written by scripts/vendor_js.sh: load after require.js, before embed-amd.js (see _config.yml). */
(function () {
  var src = document.currentScript.src.split("?")[0];
  var dir = src.slice(0, src.lastIndexOf("/"));
  require.config({ paths: { "@jupyter-widgets/html-manager/dist": dir } });
})();
