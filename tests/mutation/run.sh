#!/usr/bin/env bash
# Mutation testing of the modules where a one-line slip is a security or data bug; not part
# of CI. Usage, results and the triage of what survives: docs/mutation-testing.md.
#
#   tests/mutation/run.sh                       # every module in tests/mutation/mutmut_config.py
#   tests/mutation/run.sh web/realtime/cursor.py  # one (or a few) of them
#
# mutmut 2 rewrites the file it mutates, so it runs on a snapshot of the working tree in
# mutants/ (tracked and untracked files, as they are now), never on the tree itself.
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
WORK=$ROOT/mutants
MUTMUT=${MUTMUT:-mutmut}
export MUTATION_PYTHON=${MUTATION_PYTHON:-$ROOT/.venv/bin/python}
# Its own database and Redis db: every mutant's pytest drops and migrates <name>_test.
export DATABASE_URL=${MUTATION_DATABASE_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/omx_mutation}
export TEST_REDIS_DB=${MUTATION_REDIS_DB:-14}

cd "$ROOT"
modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
    mapfile -t modules < <(cd tests/mutation && "$MUTATION_PYTHON" -c \
        'import mutmut_config; print("\n".join(mutmut_config.TARGETS))')
fi

mkdir -p "$WORK"
git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$WORK"
cp tests/mutation/mutmut_config.py "$WORK/mutmut_config.py"

cd "$WORK"
rm -f .mutmut-cache  # results and the baseline's time are this run's (the time sets timeouts)
runner=$("$MUTATION_PYTHON" -c \
    'import sys, mutmut_config; print(mutmut_config.test_command(sys.argv[1:]))' "${modules[@]}")
status=0
"$MUTMUT" run --paths-to-mutate "$(IFS=,; echo "${modules[*]}")" --runner "$runner" \
    --tests-dir tests/ --simple-output --no-progress || status=$?
"$MUTMUT" results
exit $((status & 1))  # mutmut's exit status has bits for survivors (2, 4, 8); 1 is an error
