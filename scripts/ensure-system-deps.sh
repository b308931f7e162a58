#!/usr/bin/env bash
# mysqlclient (required by Airflow's MySQL provider) compiles against the MariaDB/MySQL client
# library. Install its headers when they are missing: Debian/Ubuntu via apt-get.
set -euo pipefail
if pkg-config --exists mariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; then
  exit 0
fi
packages="libmariadb-dev pkg-config build-essential"
if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != "0" ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: $packages" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "installing system packages for mysqlclient: $packages" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $packages >/dev/null
else
  echo "mysqlclient needs the MariaDB/MySQL client headers and pkg-config; install them with your package manager" >&2
  exit 1
fi
