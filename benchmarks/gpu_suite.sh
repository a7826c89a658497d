#!/usr/bin/env bash
# The GPU benchmark set in one go, within a deadline, ending with a summary table.
#
#   bash benchmarks/gpu_suite.sh                      # one GPU (sized for an 80 GB H100), bf16
#   TINY=1 DEADLINE=300 bash benchmarks/gpu_suite.sh  # CPU smoke test: tiny models, float32
#
# Runs forward, reward_step, generate and ppo_iteration at GPT-2-small and at a TinyLlama-1.1B-
# shaped model (TINY=1: tiny-gpt2 and tiny-llama), then dpo_step at GPT-2-small (last, so that it
# takes only the time the others leave), ours against the PyTorch / TRL peer on the same
# device and dtype. Every run gets the time that is left of DEADLINE (seconds, default 480) and is
# killed when it runs out; a run is skipped when less than MIN_LEFT seconds (default 20) remain.
# The last line of each script (`name: ratio=... device=... dtype=...`) feeds the table.
# Environment: PYTHON (default: python3 if it imports jax and torch, else .venv/bin/python),
# DEVICE (gpu; TINY=1: cpu), ATTENTION (ours' kernel in forward/reward_step/ppo_iteration,
# default xla; cudnn on a GPU), LOGDIR (each run's full output; default a fresh /tmp folder).
# When trl is not importable and .whl/ holds wheels (the device image lacks trl, datasets,
# tensorflow-datasets and grain), they are installed into WHEEL_SITE (default /tmp/site).
set -u
cd "$(dirname "$0")/.."

DEADLINE=${DEADLINE:-480}
MIN_LEFT=${MIN_LEFT:-20}
TINY=${TINY:-0}
ATTN=${ATTENTION:-xla}
LOGDIR=${LOGDIR:-$(mktemp -d /tmp/gpu_suite.XXXXXX)}
mkdir -p "$LOGDIR"

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif python3 -c "import jax, torch" >/dev/null 2>&1; then
  PY=python3
else
  PY=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ] && ! "$PY" -c "import trl" >/dev/null 2>&1; then
  SITE=${WHEEL_SITE:-/tmp/site}
  echo "trl is not importable: installing the carried wheels (.whl/) into $SITE"
  if ! "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl; then
    for wheel in .whl/*.whl; do  # one by one: a wheel built for another Python is skipped
      "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$wheel" >/dev/null 2>&1 \
        || echo "  skipped $wheel (not installable here)"
    done
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
  "$PY" -c "import trl" >/dev/null 2>&1 || echo "trl is still not importable: TRL rows will fail"
fi

if [ "$TINY" = 1 ]; then
  DEVICE=${DEVICE:-cpu}; DTYPE=float32; SMALL=tiny-gpt2; LARGE=tiny-llama
  FWD="--batch 2 --length 16 --repeats 1"; FWD_L=$FWD
  RWD="--pairs 2 --length 16 --repeats 1"; RWD_L="$RWD --remat full"
  DPO="--pairs 2 --length 16 --repeats 1"
  GEN="--batch 2 --prompt 8 --new 4 --repeats 1"; GEN_L=$GEN
  RL="--prompts 2 --samples 2 --new-tokens 4 --iterations 2"; RL_L="$RL --no-ppo"
else
  DEVICE=${DEVICE:-gpu}; DTYPE=bfloat16; SMALL=gpt2-small; LARGE=llama-1.1b
  FWD="--batch 8 --length 512 --repeats 10"; FWD_L=$FWD
  RWD="--pairs 16 --length 512 --repeats 5"
  RWD_L="--pairs 16 --length 512 --repeats 3 --remat full"
  DPO="--pairs 16 --length 512 --repeats 5"
  GEN="--batch 64 --repeats 2"; GEN_L="--batch 32 --repeats 2"
  RL="--prompts 16 --samples 4 --new-tokens 64 --iterations 5"
  RL_L="--prompts 8 --samples 4 --new-tokens 64 --iterations 3 --no-ppo"
fi
COMMON="--device $DEVICE --dtype $DTYPE"

# label | script | arguments
RUNS=(
  "forward $SMALL|forward.py|--model $SMALL $FWD --attention $ATTN"
  "reward_step $SMALL|reward_step.py|--model $SMALL $RWD --attention $ATTN"
  "generate $SMALL|generate.py|--model $SMALL $GEN"
  "ppo_iteration $SMALL|ppo_iteration.py|--model $SMALL $RL --attention $ATTN"
  "forward $LARGE|forward.py|--model $LARGE $FWD_L --attention $ATTN"
  "reward_step $LARGE|reward_step.py|--model $LARGE $RWD_L --attention $ATTN"
  "generate $LARGE|generate.py|--model $LARGE $GEN_L"
  "ppo_iteration $LARGE|ppo_iteration.py|--model $LARGE $RL_L --attention $ATTN"
  "dpo_step $SMALL|dpo_step.py|--model $SMALL $DPO --attention $ATTN"
)

echo "gpu_suite: $PY, $COMMON, deadline ${DEADLINE}s, logs in $LOGDIR"
START=$SECONDS
LABELS=(); STATUS=(); LINES=(); FAILED=0
for entry in "${RUNS[@]}"; do
  IFS='|' read -r label script args <<<"$entry"
  left=$((DEADLINE - (SECONDS - START)))
  LABELS+=("$label")
  if [ "$left" -lt "$MIN_LEFT" ]; then
    STATUS+=("skipped (${left}s left)"); LINES+=(""); continue
  fi
  log="$LOGDIR/${label// /_}.log"
  echo; echo "=== $label: benchmarks/$script $args $COMMON (${left}s left)"
  t0=$SECONDS
  # shellcheck disable=SC2086  # the arguments are meant to split
  limit=$((left > 10 ? left - 5 : left))
  timeout --kill-after=5 "$limit" "$PY" "benchmarks/$script" $args $COMMON >"$log" 2>&1
  rc=$?
  took=$((SECONDS - t0))
  last=$(grep -E '^[a-z_]+: ratio=' "$log" | tail -n 1)
  grep -E '^(config|ours|peer|matmul|memory)' "$log" | cut -c1-300
  if [ "$rc" -eq 0 ] && [ -n "$last" ]; then
    STATUS+=("ok ${took}s"); echo "$last"
  else
    FAILED=1
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then STATUS+=("timed out ${took}s")
    else STATUS+=("failed rc=$rc ${took}s"); fi
    echo "--- ${STATUS[-1]}; the log's last lines:"; tail -n 5 "$log" | cut -c1-300
  fi
  LINES+=("$last")
done

field() {  # field KEY LINE: the value of KEY=... in a report line, or "-"
  local v
  v=$(tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -n 1)
  echo "${v:--}"
}

echo
echo "## Summary ($DEVICE, $DTYPE; $((SECONDS - START))s of ${DEADLINE}s)"
echo
echo "| run | status | ratio (peer s / ours s) | ours | peer | MFU ours / peer | devices |"
echo "|---|---|---|---|---|---|---|"
for i in "${!LABELS[@]}"; do
  line=${LINES[$i]}
  if [ -z "$line" ]; then
    echo "| ${LABELS[$i]} | ${STATUS[$i]} | - | - | - | - | - |"; continue
  fi
  case ${LABELS[$i]} in
    forward*) ours="$(field ours_tok_s "$line") tok/s"; peer="$(field peer_tok_s "$line") tok/s";;
    reward_step*) ours="$(field ours_pairs_s "$line") pairs/s"
                  peer="$(field peer_pairs_s "$line") pairs/s";;
    generate*) ours="$(field ours_tok_s "$line") new tok/s, $(field bound_frac "$line") of bound"
               peer="$(field peer_tok_s "$line") new tok/s";;
    ppo_iteration*) ours="RLOO $(field ours_rloo_s "$line") s, PPO $(field ours_ppo_s "$line") s"
                    peer="$(field peer_s "$line") s";;
    dpo_step*) ours="$(field ours_pairs_s "$line") pairs/s, cached"
               ours="$ours $(field ours_cached_pairs_s "$line")"
               ours="$ours (ratio $(field cached_ratio "$line"))"
               peer="$(field peer_pairs_s "$line") pairs/s, precomputed"
               peer="$peer $(field peer_cached_pairs_s "$line")";;
  esac
  echo "| ${LABELS[$i]} | ${STATUS[$i]} | $(field ratio "$line") | $ours | $peer |" \
       "$(field ours_mfu "$line") / $(field peer_mfu "$line") |" \
       "$(field device "$line") / $(field peer_device "$line") |"
done
exit "$FAILED"
