#!/usr/bin/env bash
# The Remarketing page test drives a real headless Chromium through Playwright. It uses the
# system's browser (Debian's `chromium`, /usr/bin/chromium, or $REMARKETING_CHROMIUM), never a
# downloaded one. Install it when it is missing: Debian/Ubuntu via apt-get, as root or with sudo.
# Off CI a machine that cannot install it only skips that test (the test says why); under CI=true
# it is an error.
set -euo pipefail
if [ -n "${REMARKETING_CHROMIUM:-}" ] && [ -x "$REMARKETING_CHROMIUM" ]; then exit 0; fi
if command -v chromium >/dev/null 2>&1; then exit 0; fi
fail() {
  if [ "${CI:-}" = "true" ]; then echo "$1" >&2; exit 1; fi
  echo "warning: $1; the browser test will be skipped" >&2; exit 0
}
command -v apt-get >/dev/null 2>&1 || fail "Chromium is missing and there is no apt-get to install it (set REMARKETING_CHROMIUM)"
sudo=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || fail "Chromium is missing; need root or sudo to install it"
  sudo="sudo"
fi
echo "installing Debian's chromium for the browser test" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
