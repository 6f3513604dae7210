#!/bin/bash
# sled-healthcheck: container health probes for the SLED image (installed as
# /usr/local/bin/sled-healthcheck). The slim runtime image has no curl or wget;
# bash's /dev/tcp speaks just enough NATS and HTTP.
#
#   sled-healthcheck nats [PORT]          a NATS server's INFO greeting on 127.0.0.1:PORT (default 4222)
#   sled-healthcheck http PORT [PATH]     HTTP 200 from http://127.0.0.1:PORT/PATH (default /readyz)
#
# Exit status 0 when healthy, 1 when not, 2 on a usage error.
set -u
host=127.0.0.1

probe() {
	case "${1:-}" in
	nats)
		exec 3<>"/dev/tcp/$host/${2:-4222}" || return 1
		IFS= read -r -t 5 line <&3 || return 1
		[[ $line == INFO* ]]
		;;
	http)
		[[ -n ${2:-} ]] || { echo "usage: sled-healthcheck http PORT [PATH]" >&2; return 2; }
		exec 3<>"/dev/tcp/$host/$2" || return 1
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "${3:-/readyz}" "$host" >&3 || return 1
		IFS= read -r -t 5 status <&3 || return 1
		[[ $status == HTTP/1.[01]\ 200* ]]
		;;
	*)
		echo "usage: sled-healthcheck nats [PORT] | http PORT [PATH]" >&2
		return 2
		;;
	esac
}

probe "$@"
