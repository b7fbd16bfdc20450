#!/usr/bin/env bash
# One idempotent setup for a fresh machine or a fresh clone:
#   - a project virtualenv in .venv with the pinned requirements (uv, reusing its cache) and the
#     C WAT readers of native/watread (gunzip with the vendored libdeflate, the IMG link reader),
#   - the Delta / hadoop-aws jars resolved from Maven Central into a cache outside the checkout,
#   - the Debian chromium and docker-compose the tests use, when missing.
# A stamp keyed on everything that shapes the result lets a second run return at once.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${ALTLAKE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/altlake}"
JAR_DIR="$CACHE_DIR/jars"
PY="${PYTHON:-python3}"
STAMP=.venv/.altlake-setup
KEY=$(cat requirements.txt pyproject.toml infra/spark/jars-pom.xml infra/spark/logstore/*.java scripts/setup.sh native/watread/{pyproject.toml,setup.py} \
  $(find native/watread -name '*.[ch]' -not -path '*/build/*' | LC_ALL=C sort) | sha256sum | cut -c1-16)

# The jar cache records the pom it was resolved from: a changed pom (a new driver, a new version)
# resolves again, from an emptied folder so no superseded jar stays on the class path.
JAR_KEY=$(sha256sum infra/spark/jars-pom.xml | cut -c1-16)
jars_current() { [ "$(cat "$JAR_DIR/.complete" 2>/dev/null)" = "$JAR_KEY" ]; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && jars_current; then
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
# Bytecode for every installed module, once. uv installs none, and where PYTHONDONTWRITEBYTECODE is set
# (as in many CI images) Python never caches what it compiles: every process then compiled its imports
# from source, `import great_expectations` alone 4.4 s of a Spark job's 8. Up-to-date files are skipped.
# (torch's py312_intrinsics is Python 3.12 syntax, never imported on 3.11.)
.venv/bin/python -m compileall -q -j 0 -x 'py312_intrinsics' .venv/lib/python3*/site-packages >/dev/null \
  || echo "   (some installed modules did not compile to bytecode; they compile on import instead)"
# pyspark is published as an sdist only, and uv keeps a fresh build of it (about 1 GB) on every install into a
# new venv; pruning drops the builds no environment uses any more, so repeated setups (CI clones) do not
# fill the disk.
"$UV" cache prune --quiet

if ! jars_current; then
  echo "==> resolving Spark jars from Maven Central into $JAR_DIR"
  mkdir -p "$JAR_DIR"
  rm -f "$JAR_DIR"/*.jar "$JAR_DIR/.complete"
  mvn -q -f infra/spark/jars-pom.xml dependency:copy-dependencies \
      -DincludeScope=runtime -DexcludeArtifactIds=scala-library,antlr4-runtime \
      -DoutputDirectory="$JAR_DIR"
  echo "$JAR_KEY" > "$JAR_DIR/.complete"
fi

# Our Delta log store for several writers on S3 (infra/spark/logstore), compiled against the cached jars
# and pyspark's Hadoop; the source hash in the jar's name replaces a stale build.
LOGSTORE_JAR="$JAR_DIR/altlake-logstore-$(cat infra/spark/logstore/*.java | sha256sum | cut -c1-12).jar"
if [ ! -f "$LOGSTORE_JAR" ]; then
  echo "==> compiling the DynamoDB log store into $LOGSTORE_JAR"
  SPARK_JARS="$(.venv/bin/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"
  BUILD=$(mktemp -d)
  javac --release 17 -nowarn -d "$BUILD" -cp "$SPARK_JARS/*:$JAR_DIR/*" infra/spark/logstore/*.java
  rm -f "$JAR_DIR"/altlake-logstore-*.jar
  jar cf "$LOGSTORE_JAR.part" -C "$BUILD" . && mv "$LOGSTORE_JAR.part" "$LOGSTORE_JAR"
  rm -rf "$BUILD"
fi

# Debian tools the tests use: chromium (the browser tests) and docker-compose (`config` validates
# infra/compose.yaml; no Docker engine needed).
MISSING=""
command -v chromium >/dev/null 2>&1 || MISSING="$MISSING chromium"
command -v docker-compose >/dev/null 2>&1 || MISSING="$MISSING docker-compose"
if [ -n "$MISSING" ]; then
  echo "==> installing Debian$MISSING for the tests"
  if [ "$(id -u)" = 0 ]; then APT=apt-get; else APT="sudo apt-get"; fi
  # shellcheck disable=SC2086
  $APT update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $APT install -y -qq $MISSING >/dev/null \
    || echo "   (not installed:$MISSING; the browser test fails with a clear message, the compose check runs on the schema alone)"
fi

echo "$KEY" > "$STAMP"
echo "==> setup done"
