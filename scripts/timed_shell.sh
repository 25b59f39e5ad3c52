#!/usr/bin/env bash
# A SHELL for make that times each recipe line: `make test SHELL=scripts/timed_shell.sh` runs every
# line with /bin/sh, as make's default SHELL would, and appends "<seconds> s  <the line, cut short>"
# to $TIMED_SHELL_LOG. .ci/run uses it to end its log with where the time went (the CI service shows
# only the log's tail, and its machines have taken 1.4-2x this repository's local time, stage unknown).
start=$(date +%s)
/bin/sh "$@"
rc=$?
if [[ -n ${TIMED_SHELL_LOG:-} ]]; then
  line=${*: -1}
  line=${line:0:120}
  printf '%5d s  %s\n' "$(($(date +%s) - start))" "${line//[$'\n\t']/ }" >>"$TIMED_SHELL_LOG"
fi
exit $rc
