#!/usr/bin/env bash
# The main job, as an operator would run it: start both services on one model
# root, train a two-tower model on MovieLens 100K remotely, wait until the
# recommender serves it, print the top 10 for user 42 and for a visitor's
# session, stop the services.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${VENV:-.venv}/bin"
WORK="${DEMO_DIR:-runs/demo}"
TRAINER_PORT="${TRAINER_PORT:-50051}"
RECOMMENDER_PORT="${RECOMMENDER_PORT:-50052}"
MODEL="${MODEL:-two_tower}"
export MOVIEREC_TRAINER="127.0.0.1:${TRAINER_PORT}"
export MOVIEREC_RECOMMENDER="127.0.0.1:${RECOMMENDER_PORT}"

mkdir -p "$WORK"
"$BIN/movierec-trainer" --port "$TRAINER_PORT" --model-root "$WORK/models" >"$WORK/trainer.log" 2>&1 &
trainer=$!
"$BIN/movierec-recommender" --port "$RECOMMENDER_PORT" --model-root "$WORK/models" >"$WORK/recommender.log" 2>&1 &
recommender=$!
trap 'kill -TERM $trainer $recommender 2>/dev/null; wait $trainer $recommender 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  "$BIN/movierec" jobs >/dev/null 2>&1 && break
  kill -0 $trainer 2>/dev/null || { echo "the trainer did not start; see $WORK/trainer.log" >&2; exit 1; }
  sleep 0.5
done

echo "== training $MODEL on MovieLens 100K (logs in $WORK/) =="
"$BIN/movierec" train --model "$MODEL" --holdout ua --watch
version=$("$BIN/movierec" --json jobs --limit 1 | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)[0]["model_version"])')

echo "== waiting for the recommender to serve version $version =="
for _ in $(seq 1 120); do
  served=$("$BIN/movierec" --json status 2>/dev/null | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin).get("served_version") or 0)' 2>/dev/null || echo 0)
  [ "$served" = "$version" ] && break
  sleep 0.5
done

echo "== top 10 for user 42 =="
"$BIN/movierec" recommend 42 -k 10

echo "== top 10 for a visitor who just watched Star Wars, Return of the Jedi and The Empire Strikes Back =="
"$BIN/movierec" recommend visitor -k 10 --recent 50,181,172
