#!/usr/bin/env bash
# A small-scale version of SimCLR's loss comparison (Section 5.1, Tables 2 and 4): trains the
# built-in default run for the same budget with each loss x {cosine, dot} and each similarity
# with NT-Xent (the learned ones also with --normalize), then writes a table of final kNN top-1
# accuracy into README.md (between the "compare_objectives" markers) and prints it. Every run
# shares the seed, the data and every other setting, temperature and margin included (no
# per-loss tuning, unlike the paper).
#
# Usage: scripts/compare_objectives.sh [extra simclr train flags]   (default budget: --epochs 8,
# about 100 s a run on 2 CPU cores; later flags override, e.g. --epochs 15 for the full default)
# Runs land in runs/compare-objectives/<loss>-<similarity>/ (replaced on every invocation).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet

out=runs/compare-objectives
rm -rf "$out"
mkdir -p "$out"
budget=(--epochs 8 --knn-every 0)
# "loss similarity [flags]"
runs=(
  "nt-xent cosine" "nt-xent dot"
  "nt-logistic cosine" "nt-logistic dot"
  "margin-triplet cosine" "margin-triplet dot"
  "nt-xent bilinear" "nt-xent bilinear --normalize"
  "nt-xent concat" "nt-xent concat --normalize"
)
for run in "${runs[@]}"; do
  read -r loss similarity flags <<<"$run"
  dir="$out/$loss-$similarity${flags:+-normalized}"
  echo "== $run" >&2
  # A run that fails (e.g. a loss that diverges) is recorded as such, not fatal.
  # shellcheck disable=SC2086 # $flags: zero or one word
  if target/release/simclr train --out "$dir" --loss "$loss" --similarity "$similarity" $flags \
      "${budget[@]}" --json "$@" >"$dir.json" 2>"$dir.log"; then
    tail -n 1 "$dir.log" >&2
  else
    echo "failed: $(grep '^error' "$dir.log" | tail -n 1)" | tee "$dir.failed" >&2
  fi
done

# The table, from each run's summary line and metrics.jsonl, into README.md.
python3 - "$out" "$*" "${runs[@]}" <<'EOF'
import datetime, json, pathlib, re, sys

out, extra = pathlib.Path(sys.argv[1]), sys.argv[2]
rows, before, config = [], None, None
for run in sys.argv[3:]:
    loss, similarity, *flags = run.split()
    name = f"{loss}-{similarity}" + ("-normalized" if flags else "")
    similarity += ", normalised" if flags else ""
    summary_file, failed = out / f"{name}.json", out / f"{name}.failed"
    if failed.exists():
        reason = failed.read_text().strip().removeprefix("failed: error: ")
        reason = re.sub(r"loss became (\S+) at step (\d+).*", r"diverged (loss \1 at step \2)", reason)
        rows.append(f"| {loss} | {similarity} | {reason} | | |")
        continue
    s = json.loads(summary_file.read_text().strip().splitlines()[-1])
    before = s["knn_top1_before"]
    config = json.loads((out / name / "config.json").read_text())
    steps = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in steps if "train/contrast_acc" in r][-1]
    rows.append(
        f"| {loss} | {similarity} | **{100 * s['knn_top1']:.1f}%** | {s['final_loss']:.4g} "
        f"| {100 * last['train/contrast_acc']:.1f}% |"
    )
run = config["run"] if config else {}
objective = config["objective"] if config else {}
table = "\n".join(
    [
        f"Measured {datetime.date.today().isoformat()} with"
        f" `{' '.join(['scripts/compare_objectives.sh', *extra.split()])}`"
        f" on this project's 2-core CPU machine: the default run (width-1/8 ResNet-18, synthetic"
        f" data, batch {run.get('batch_size')}, LARS) for {run.get('epochs')} epochs each, seed"
        f" {run.get('seed')}, τ = {objective.get('temperature')}, m = {objective.get('margin')}."
        f" kNN top-1 of the random encoder before training:"
        f" {100 * before:.1f}%." if before is not None else "No run succeeded.",
        "",
        "| loss | similarity | kNN top-1 | final loss | contrastive acc. (last step) |",
        "|---|---|---|---|---|",
        *rows,
    ]
)
print(table)
readme = pathlib.Path("README.md")
text = readme.read_text()
begin, end = "<!-- compare_objectives: begin -->", "<!-- compare_objectives: end -->"
if begin not in text or end not in text:
    sys.exit("README.md lacks the compare_objectives markers")
pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
readme.write_text(pattern.sub(lambda _: f"{begin}\n{table}\n{end}", text))
print("README.md updated", file=sys.stderr)
EOF
