#!/usr/bin/env bash
# Every issue-13 measurement, medians of 3 interleaved runs, each appending its row(s) to
# benchmarks/RESULTS.md of the tree measured. Run on a quiet machine:
#
#   bash benchmarks/run_all.sh [REPO]        # REPO defaults to this checkout
#
# Estimated duration on this 2-core VM when idle: ~22 min, of which ~3 min generate the inputs
# the first time (cached under $DATA afterwards). The user-plan sort at 20M records (2 GB) is the
# longest step (~7 min). Output: the console log in /tmp/smallpond-bench-<time>.log (or $LOG).
set -euo pipefail
REPO=${1:-$(cd "$(dirname "$0")/.." && pwd)}
DATA=${DATA:-$REPO/bench-data}
cd "$REPO"
export PYTHONPATH=$REPO
export SP_PROGRESS=0
LOG=${LOG:-/tmp/smallpond-bench-$(date +%Y%m%d-%H%M%S).log}
echo "measuring $(git -C "$REPO" rev-parse --short HEAD) in $REPO; log: $LOG"
# The kernel's caches, fresh before each step. On this VM's ext4 (mounted without a journal),
# creating a file or folder cost 10-30 us after a cache drop and 250-850 us (system CPU) once the
# block device's page cache held many buffers of churned inode tables (perf: find_inode_bit ->
# recently_deleted -> find_get_block_common), which benchmark runs that create and delete tens of
# thousands of files cause within minutes: the tiny-task figures then measured the kernel. As root,
# each step starts from written-back, dropped caches with its inputs read back (both sides warm).
fresh_caches() {
  if [ -w /proc/sys/vm/drop_caches ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches
    find "$DATA" -path "$DATA/jobs" -prune -o -type f -name '*.parquet' -print0 | xargs -0 -r cat >/dev/null
    # and the libraries both sides load (else the first timed run reads them from disk)
    python -c "import duckdb, pyarrow.parquet, pandas, smallpond.execution.worker, smallpond.execution.job" >/dev/null
  else
    echo "   (not root: the kernel's caches are not dropped before the step)" | tee -a "$LOG"
  fi
}
step() {
  echo "== $*" | tee -a "$LOG"
  fresh_caches
  local t0=$SECONDS
  "$@" --repeat 3 --append-results --data-dir "$DATA" 2>&1 | tee -a "$LOG"
  echo "   (step took $((SECONDS - t0)) s)" | tee -a "$LOG"
}
uptime | tee -a "$LOG"
# 1. sorts: the user plan at 2 GB within a 1 GB per-task memory limit (peak RSS of the process tree
#    is reported beside each time), at 5M records, and the tuned GraySort plan at 5M records
step python -m benchmarks.gray_sort --records 20M --partitions 16 --plan user --memory-limit 1GB
step python -m benchmarks.gray_sort --records 5M --partitions 16 --plan user
step python -m benchmarks.gray_sort --records 5M --partitions 16
step python -m benchmarks.gray_sort --records 5M --partitions 16 --sort-engine duckdb
# 2. hash partitioning: the user plan, 7.5M rows into 16
step python -m benchmarks.hash_partition --rows 7.5M --partitions 16 --plan user
# 3. start-up and small jobs: the README quick start on 1M rows (whole process), tiny SQL tasks
#    (same statements in DuckDB; also import to first result), tiny Python tasks (tasks/s only)
step python -m benchmarks.quickstart --rows 1M
step python -m benchmarks.overhead --tasks 2000 --kind sql
step python -m benchmarks.overhead --tasks 2000 --kind python --skip-startup
# 3b. a lone task gets the idle CPUs (elastic threads, on by default where its bytes cannot change):
#     a one-partition read_parquet().map().write_parquet(), default vs elastic_threads=False
step python -m benchmarks.lone_task --rows 4M
step python -m benchmarks.lone_task --rows 4M --row-groups default
# 4. scale on paper: 10k / 30k / 100k tasks through the real planner and scheduler, with the task
#    cache on (as a job runs by default; ~2.5 min) and off
step python -m benchmarks.scale --tasks 10k,30k,100k
step python -m benchmarks.scale --tasks 10k,30k,100k --task-cache off
uptime | tee -a "$LOG"
echo "done in $SECONDS s; rows appended to $REPO/benchmarks/RESULTS.md" | tee -a "$LOG"
