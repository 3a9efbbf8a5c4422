# shellcheck shell=bash disable=SC2154
# Shared by the launch scripts (sourced, not run): errors, quoting, --dry-run, argument checks,
# running a command with a log that outlives Ctrl-C.
# The script that sources it sets `dry_run` (0 or 1) before calling `run`.

die() {  # prints "<script>: <message>" to stderr and exits 2
  echo "$(basename "$0"): $*" >&2
  exit 2
}

quote() {  # one word for a POSIX shell: bare if safe, else "double" or 'single' quoted
  local word=$1 squote="'" unsafe='*[^A-Za-z0-9_@%+=:,./-]*' special='*[\"$`\\!]*'
  if [[ $word =~ ^(--?[A-Za-z0-9_.-]+=)(.+)$ ]]; then  # --option=value: quote the value only
    printf '%s' "${BASH_REMATCH[1]}"
    word=${BASH_REMATCH[2]}
  fi
  # shellcheck disable=SC2053  # $unsafe and $special are patterns
  if [[ -n $word && $word != $unsafe ]]; then
    printf '%s' "$word"
  elif [[ $word != $special ]]; then
    printf '"%s"' "$word"
  else
    printf "'%s'" "${word//$squote/$squote\\$squote$squote}"
  fi
}

quote_words() {  # the words joined by spaces, each quoted
  local word sep=""
  for word in "$@"; do
    printf '%s%s' "$sep" "$(quote "$word")"
    sep=" "
  done
}

run() {  # runs a command, or with --dry-run prints it (quoted, one line) and runs nothing
  if ((dry_run)); then
    quote_words "$@"
    echo
  else
    echo "+ $(quote_words "$@")" >&2
    "$@"
  fi
}

run_instead() {  # like run, but COMMAND replaces this shell (exec): every signal sent to the
  # script (Ctrl-C, a SIGTERM from kill or a scheduler) reaches COMMAND itself
  if ((dry_run)); then
    run "$@"
  else
    echo "+ $(quote_words "$@")" >&2
    exec "$@"
  fi
}

run_logged() {  # run_logged LOG COMMAND...: like run, its output shown and appended to LOG by a
  # tee that Ctrl-C does not stop, so LOG keeps what COMMAND prints while it stops
  local log=$1
  shift
  if ((dry_run)); then
    echo "$(quote_words "$@") 2>&1 | tee -a $(quote "$log")"
  else
    echo "+ $(quote_words "$@") 2>&1 | tee -a $(quote "$log")" >&2
    "$@" 2>&1 | append_to "$log"
  fi
}

run_logged_instead() {  # run_logged_instead LOG COMMAND...: like run_logged, but COMMAND
  # replaces this shell (exec), as in run_instead
  local log=$1
  shift
  if ((dry_run)); then
    run_logged "$log" "$@"
  else
    exec > >(append_to "$log") 2>&1
    echo "+ $(quote_words "$@") 2>&1 | tee -a $(quote "$log")" >&2
    exec "$@"
  fi
}

append_to() {  # append_to LOG: copies stdin to stdout and appends it to LOG until stdin ends,
  # ignoring Ctrl-C and SIGTERM (what writes to stdin is stopped by them, and has more to say)
  trap '' INT TERM
  exec tee -a "$1"
}

note() {  # a comment line: part of the dry-run output, on stderr in a real run
  if ((dry_run)); then echo "# $*"; else echo "# $*" >&2; fi
}

need_value() {  # need_value OPTION VALUE [any]: fails unless VALUE is given (and, without
  # "any", does not look like the next option: --name --zone z)
  [[ -n $2 && ($2 != --* || ${3-} == any) ]] || die "$1 needs a value (see --help)"
}

need_tool() {  # need_tool TOOL WHY: fails early unless TOOL is on PATH or this is a --dry-run
  ((dry_run)) || require_tool "$@"
}

require_tool() {  # require_tool TOOL WHY: fails early unless TOOL is on PATH, even in a --dry-run
  command -v "$1" > /dev/null || die "$1 not found on PATH: $2"
}

need_jaxaug() {  # fails early unless `python` is on PATH and imports jaxaug, unless --dry-run
  need_tool python "activate the environment where jaxaug is installed"
  local check='import importlib.util, sys; sys.exit(not importlib.util.find_spec("jaxaug"))'
  ((dry_run)) || python -c "$check" ||
    die "python cannot import jaxaug: activate the environment where it is installed"
}

check_run_args() {  # check_run_args CONFIG WORKDIR: both given, CONFIG a file
  [[ -n ${1-} && -n ${2-} ]] || die "give CONFIG and WORKDIR after the options (see --help)"
  [[ -f $1 ]] || die "config file $1 not found"
}
