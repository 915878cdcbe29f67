#!/bin/bash
# gputest.sh FILTER: the real-model GPU tests named by FILTER.
cd /tmp/kb && bash extract.sh
export KESTREL_HOME=/tmp/kh KESTREL_BIN=/tmp/kb/kestrel KESTREL_TESTDATA=/tmp/kb/testdata KESTREL_REQUIRE_MODELS=1
cd $OLDPWD
/tmp/kb/reference "$@" --include-ignored --nocapture --test-threads=1 2>&1 | tee -a $OUT/gputest.txt | grep -v "^$" | tail -60
