#!/usr/bin/env bash
# Installs the Debian peers the tests drive (swaks, Postfix's smtp-source/smtp-sink and a
# private Postfix, Dovecot LMTP/POP3/IMAP, redis-server, rbldnsd, dnsmasq, openssl, ucspi-tcp's
# tcpserver, HAProxy, oidentd, rspamd, spamd, clamd, chromium, systemd-analyze) when they are missing. Runs as `npm test`'s
# pretest step, so a fresh Debian 12 machine needs nothing else. Quick when all is there already.
#
# Exim 4.96 (a sending MTA for test/exim.peers.test.ts) is not installed: exim4-daemon-light
# and Postfix are both mail-transport-agents, so apt would remove Postfix. Its package is only
# downloaded and unpacked into $MXGUARD_EXIM_ROOT (default /opt/mxguard-test-peers/exim; the
# binary is usr/sbin/exim4 there, without its setuid bit), with the shared libraries it needs
# and the system user Debian-exim that the binary looks up when it starts. test/harness/exim.ts
# runs it with a private configuration (-C).
set -euo pipefail

EXIM_ROOT=${MXGUARD_EXIM_ROOT:-/opt/mxguard-test-peers/exim}
EXIM_BIN=$EXIM_ROOT/usr/sbin/exim4

exim_ready() {
  [ -x "$EXIM_BIN" ] && getent passwd Debian-exim >/dev/null && ! ldd "$EXIM_BIN" 2>/dev/null | grep -q 'not found'
}

need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl)
{ [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/postfix ]; } || need+=(postfix)
{ [ -x /usr/sbin/dovecot ] && [ -e /usr/lib/dovecot/lmtp ] && [ -e /usr/lib/dovecot/pop3-login ] && [ -e /usr/lib/dovecot/imap-login ]; } || need+=(dovecot-core dovecot-lmtpd dovecot-pop3d dovecot-imapd)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
{ [ -x /usr/sbin/rbldnsd ] && [ -x /usr/sbin/dnsmasq ]; } || need+=(rbldnsd dnsmasq-base)
{ command -v tcpserver >/dev/null 2>&1 && command -v tcprules >/dev/null 2>&1; } || need+=(ucspi-tcp)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/sbin/oidentd ] || need+=(oidentd)
# rspamd 3.4 (a content filter): the tests start their own instance, never the packaged service.
command -v rspamd >/dev/null 2>&1 || need+=(rspamd)
# SpamAssassin's spamd (bookworm splits it out of spamassassin) and clamd, content filters too:
# the same holds for them; freshclam never runs (no internet: the tests' clamd reads a database
# holding only an EICAR signature).
{ [ -x /usr/sbin/spamd ] && [ -x /usr/sbin/clamd ]; } || need+=(spamd clamav-daemon)
# systemd-analyze checks the units in docs/systemd (test/systemd.test.ts); containers may lack systemd.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# Chromium, the real browser test/dashboard.browser.test.ts drives (through playwright-core).
[ -x /usr/bin/chromium ] || need+=(chromium)

need_exim=0
exim_ready || need_exim=1

if [ ${#need[@]} -eq 0 ] && [ $need_exim -eq 0 ]; then
  exit 0
fi

what="${need[*]}"
[ $need_exim -eq 0 ] || what="${what:+$what, }exim4 (unpacked into $EXIM_ROOT)"
echo "install-peers: installing $what"
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null 2>&1 || { echo "install-peers: need root (or sudo) to install $what" >&2; exit 1; }
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
# freshclam updates only when asked ("manual"): no freshclam daemon, no cron job.
echo "clamav-freshclam clamav-freshclam/autoupdate_freshclam select manual" | $SUDO debconf-set-selections
$SUDO apt-get update -q
if [ ${#need[@]} -gt 0 ]; then
  # Daemons the tests start themselves (rspamd, spamd, clamd) must not be started by their
  # package: without a policy-rc.d (Docker images have one) invoke-rc.d would start them on their
  # standard ports.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${need[@]}" || { [ $own_policy -eq 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ $own_policy -eq 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d
  # Nor enabled at boot (works offline, without a running systemd).
  if [[ " ${need[*]} " == *" rspamd "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable -q rspamd.service >/dev/null 2>&1 || true
  fi
  if [[ " ${need[*]} " == *" clamav-daemon "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable -q spamd.service clamav-daemon.service clamav-daemon.socket clamav-freshclam.service >/dev/null 2>&1 || true
  fi
fi

if [ $need_exim -eq 1 ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt's download sandbox (user _apt) must be able to write here, or apt warns.
  if [ "$(id -u)" -eq 0 ] && getent passwd _apt >/dev/null; then chown _apt "$work"; fi
  (cd "$work" && apt-get download -q exim4-daemon-light)
  deb=$(ls "$work"/exim4-daemon-light_*.deb)
  # The libraries it links against (libidn12 is not on every machine); libraries never conflict
  # with Postfix. The first alternative of each dependency, without its version.
  libs=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' | grep '^lib' || true)
  if [ -n "$libs" ]; then
    # shellcheck disable=SC2086 # one package per word
    $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends --no-upgrade $libs
  fi
  dpkg-deb -x "$deb" "$work/root"
  chmod u-s,g-s "$work/root/usr/sbin/exim4"
  $SUDO mkdir -p "$(dirname "$EXIM_ROOT")"
  $SUDO rm -rf "$EXIM_ROOT.new"
  $SUDO cp -a "$work/root" "$EXIM_ROOT.new"
  $SUDO chown -R root:root "$EXIM_ROOT.new"
  $SUDO rm -rf "$EXIM_ROOT"
  $SUDO mv "$EXIM_ROOT.new" "$EXIM_ROOT"
  # The binary looks this user up (EXIM_USER=ref:Debian-exim) before it reads any configuration.
  if ! getent passwd Debian-exim >/dev/null; then
    if getent group Debian-exim >/dev/null; then group=(-g Debian-exim); else group=(--user-group); fi
    $SUDO useradd --system "${group[@]}" --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim
  fi
  exim_ready || { echo "install-peers: $EXIM_BIN is still not usable:" >&2; ldd "$EXIM_BIN" >&2 || true; exit 1; }
  echo "install-peers: $("$EXIM_BIN" -bV 2>/dev/null | head -1 || true) in $EXIM_ROOT"
fi
