#!/usr/bin/env bash
# One idempotent setup for a fresh machine or a fresh clone:
#   - a project virtualenv in .venv with the pinned requirements (uv, reusing its cache) and the
#     C WAT readers of native/watread (gunzip with the vendored libdeflate, the IMG link reader),
#   - the Delta / hadoop-aws jars resolved from Maven Central into a cache outside the checkout,
#   - the Debian chromium used by the browser tests, when missing.
# A stamp keyed on everything that shapes the result lets a second run return at once.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${ALTLAKE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/altlake}"
JAR_DIR="$CACHE_DIR/jars"
PY="${PYTHON:-python3}"
STAMP=.venv/.altlake-setup
KEY=$(cat requirements.txt pyproject.toml infra/spark/jars-pom.xml scripts/setup.sh native/watread/{pyproject.toml,setup.py} \
  $(find native/watread -name '*.[ch]' -not -path '*/build/*' | LC_ALL=C sort) | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -f "$JAR_DIR/.complete" ]; then
  exit 0
fi

echo "==> altlake setup (cache: $CACHE_DIR)"
# uv is a pinned package of the venv itself and is always called as .venv/bin/uv: nothing here or
# later (tests, benchmarks, the demo) relies on a PATH that only this script had.
UV=.venv/bin/uv
UV_PIN=$(grep -E '^uv==' requirements.txt)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ ! -x "$UV" ] || [ "uv==$("$UV" --version | cut -d' ' -f2)" != "$UV_PIN" ]; then
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip --upgrade >/dev/null
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$UV_PIN"
fi
VIRTUAL_ENV="$PWD/.venv" "$UV" pip install --quiet -r requirements.txt
VIRTUAL_ENV="$PWD/.venv" "$UV" pip install --quiet --no-deps -e .
# The extraction's C readers, compiled here (needs a C compiler, as the other native packages' sdists would).
VIRTUAL_ENV="$PWD/.venv" "$UV" pip install --quiet ./native/watread

if [ ! -f "$JAR_DIR/.complete" ]; then
  echo "==> resolving Spark jars from Maven Central into $JAR_DIR"
  mkdir -p "$JAR_DIR"
  mvn -q -f infra/spark/jars-pom.xml dependency:copy-dependencies \
      -DincludeScope=runtime -DexcludeArtifactIds=scala-library,antlr4-runtime \
      -DoutputDirectory="$JAR_DIR"
  touch "$JAR_DIR/.complete"
fi

if ! command -v chromium >/dev/null 2>&1; then
  echo "==> installing Debian chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then APT=apt-get; else APT="sudo apt-get"; fi
  $APT update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $APT install -y -qq chromium >/dev/null \
    || echo "   (chromium not installed: the browser test will fail with a clear message)"
fi

echo "$KEY" > "$STAMP"
echo "==> setup done"
