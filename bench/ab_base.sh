#!/bin/sh
# ab_base.sh REV — run HERE: writes the sources of commit REV (what `make lib cli` needs) into
# build/ab-base, for bench/ab.sh to build and time beside the working tree on the GPU machine
# (variant "name|||build/ab-base"; carry build/ab-base).
set -eu
rev=${1:?usage: sh bench/ab_base.sh <commit>}
rm -rf build/ab-base
mkdir -p build/ab-base
git archive "$rev" Makefile include src tools | tar -x -C build/ab-base
echo "build/ab-base: $(git rev-parse --short "$rev") ($(du -sh build/ab-base | cut -f1))"
