#!/usr/bin/env bash
# Installs Debian's headless Chromium for the MLflow UI test when it is missing and we may install it.
set -u
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found and cannot be installed here: the browser test will say so and fail" >&2
  exit 0
fi
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
  || echo "installing chromium failed: the browser test will say so and fail" >&2
exit 0
