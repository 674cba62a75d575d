#!/usr/bin/env bash
# Installs the Debian peers the tests drive (swaks, Postfix's smtp-source/smtp-sink and a
# private Postfix, Dovecot LMTP/POP3/IMAP, redis-server, rbldnsd, dnsmasq, openssl, ucspi-tcp's
# tcpserver, HAProxy, oidentd) when they are missing. Runs as `npm test`'s pretest
# step, so a fresh Debian 12 machine needs nothing else. Quick when all is there already.
set -euo pipefail

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

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "install-peers: installing ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null 2>&1 || { echo "install-peers: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -q
$SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${need[@]}"
