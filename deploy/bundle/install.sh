#!/bin/sh
# Install or upgrade sovereign from this offline bundle. Run it only AFTER checking the tarball with
# tools the site already has (openssl over the signed SHA256SUMS, then sha256sum -c; docs/airgap.md):
# this file came out of the bundle, so it cannot vouch for the bundle. It then checks again: the manifest
# signature against the release public key the site holds (--public-key) and every file's SHA-256 before
# anything is written, then installs into a fresh virtual environment with pip --no-index --require-hashes.
#   sudo ./install.sh --public-key /etc/sovereign/release.pub.pem [--prefix /opt/sovereign]
#        [--config-dir /etc/sovereign] [--data-dir /var/lib/sovereign] [--openbao-config-dir /etc/openbao]
#        [--openbao-data-dir /var/lib/openbao] [--openbao-log-dir /var/log/openbao]
#        [--user sovereign] [--openbao-user openbao] [--verify-only]
# It creates the two service users if missing (useradd --system), sets ownership, and renders the systemd
# units for these folders and users into PREFIX/current/systemd/ (docs/airgap.md).
# Needs: Python 3.11 matching the bundle (python3, or set SOVEREIGN_PYTHON) and OpenSSL >= 3.0.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${SOVEREIGN_PYTHON:-python3}
command -v "$py" >/dev/null 2>&1 || { echo "error: $py not found (set SOVEREIGN_PYTHON)" >&2; exit 2; }
# -I: ignore PYTHON* variables and the user's site-packages while the bundle is checked.
exec "$py" -I "$here/install.py" --bundle "$here" "$@"
